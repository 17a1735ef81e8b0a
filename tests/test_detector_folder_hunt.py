"""A detector folder attacked as a user and an attacker would (verify/detect/folder.py, goldens.py, preflight.py):
goldens a detector cannot output (a label far past its classes, which widened every NMS rounding band; boxes off
the image or of negative size; scores above 1; counts that disagree; a tensor of two shapes) fail their content
check with nothing run; a compressed or duplicated goldens member is refused unread (a 5.8 MB zip bomb took 73 s
and 14.7 GB before); an ONNX file with malformed outputs is a failed check, not a crash that stops the other
folders; a model file relisted as external data is refused, not left unchecked; TorchScript on CUDA without CUDA
is exit 2, as ONNX Runtime's is. One export for the module."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.families.detectors import IMAGE_SIZE
from exporter.manifest import GOLDENS_NAME, MANIFEST_NAME
from tests.conftest import cuda_available
from tests.helpers import checks, edit_goldens, edit_manifest, invoke, linked_copy, rehash, rewrite, strip_signature
from verify.detect.export import FILE_NAMES
from verify.detect.folder import detector_integrity
from verify.detect.goldens import BOX_SLACK, CLASSES, RPN_LEVEL_HEAD, SCORE_RANGE
from verify.folder.checks import CheckReport
from verify.folder.integrity import INTEGRITY, UNSIGNED_CODE_OPTION

ONNX = FILE_NAMES["onnx"]
CONTENT = f"{GOLDENS_NAME}: content"


@pytest.fixture
def exported(detector_export, tmp_path_factory):
    """The suite's `verify export -b NAME` (tests/conftest.py detector_export; its reports are written outside the
    folder) as published unsigned, in a folder of its own: read only."""
    _, signed, result, _ = detector_export
    assert result.exit_code == 0, result.output
    return strip_signature(linked_copy(signed, tmp_path_factory.mktemp("unsigned")))


@pytest.fixture
def folder(exported, tmp_path):
    """A copy whose files are hard links to the unsigned export: an edited file is replaced, never written."""
    return linked_copy(exported, tmp_path)


def arrays_of(folder) -> dict[str, np.ndarray]:
    with np.load(folder / GOLDENS_NAME) as data:
        return {key: data[key] for key in data.files}


def bound(arrays) -> float:
    """The largest coordinate a box of image 0 may have (verify/detect/goldens.py)."""
    return max(*arrays["image.0"].shape[1:], IMAGE_SIZE) + BOX_SLACK


def append_candidate(arrays, box, score, label) -> None:
    """One more recorded final-NMS input of image 0; the lowest score, so the cap still cuts it (replay holds)."""
    key = "float64.0.candidates"
    arrays[f"{key}.boxes"] = np.vstack([arrays[f"{key}.boxes"], [box]])
    arrays[f"{key}.scores"] = np.append(arrays[f"{key}.scores"], score)
    arrays[f"{key}.labels"] = np.append(arrays[f"{key}.labels"], label)


def lowest_score(arrays) -> float:
    """Above the threshold, below every detection: what an extra candidate the cap drops would score."""
    return float(arrays["float64.0.scores"].min()) * 0.5


def label_past_the_classes(arrays):
    append_candidate(arrays, [0, 0, 10, 10], lowest_score(arrays), CLASSES)


def candidate_off_the_image(arrays):
    append_candidate(arrays, [0, 0, 10, bound(arrays) + 1], lowest_score(arrays), 1)


def box_of_negative_size(arrays):
    for group in ("float32", "float64"):
        arrays[f"{group}.0.boxes"][0, [0, 2]] = arrays[f"{group}.0.boxes"][0, [2, 0]]


def score_above_one(arrays):
    arrays["float64.0.candidates.scores"][0] = SCORE_RANGE[1] * 2


def counts_disagree(arrays):
    arrays["float32.0.labels"] = arrays["float32.0.labels"][:-1]


def rpn_level_past_the_levels(arrays):
    arrays["float64.0.rpn_candidates.labels"][0] = 10 ** 6


def dense_of_two_shapes(arrays):
    key = next(k for k in arrays if k.startswith("float32.0.dense."))
    arrays[key] = np.concatenate([arrays[key], arrays[key]])


@pytest.mark.parametrize("tamper, named", [
    (label_past_the_classes, f"labels are 0 to {CLASSES - 1}"),
    (candidate_off_the_image, "within the image"),
    (box_of_negative_size, "negative size"),
    (score_above_one, "probabilities"),
    (counts_disagree, "one of each per detection"),
    (rpn_level_past_the_levels, "labels reach"),
    (dense_of_two_shapes, "one shape in both precisions"),
])
def test_goldens_a_detector_cannot_output_fail_their_content_check_and_run_nothing(folder, tmp_path, tamper, named):
    """Each edit is rehashed: only the content check can catch it. Before, the label past the classes passed every
    integrity check and widened every NMS band of image 0 (torchvision's class offset scales with the largest
    label): with a candidate of label 10**12, an ONNX file whose final NMS was seeded at 0.3 had 9 of its 12
    unexplained detections become `NMS` borderlines."""
    edit_goldens(folder, tamper)
    result = invoke("artifact", folder, UNSIGNED_CODE_OPTION, "--json", tmp_path / "a.json")
    assert result.exit_code == 1, result.output
    found = checks(tmp_path / "a.json")
    failed = {c["name"]: c["message"] for c in found if not c["passed"] and c["runtime"] == INTEGRITY}
    assert CONTENT in failed and named in failed[CONTENT], failed
    assert not any(c["passed"] for c in found if c["runtime"] != INTEGRITY), "nothing is run"


def test_the_fresh_folder_passes_every_integrity_check_the_hunt_added(folder):
    """The same bounds hold for what the export really wrote: labels, levels, boxes, scores of every array."""
    arrays = arrays_of(folder)
    dense = json.loads((folder / MANIFEST_NAME).read_text())["dense_outputs"]
    levels = sum(name.startswith(RPN_LEVEL_HEAD) for name in dense)
    assert max(a.max() for k, a in arrays.items() if k.endswith("candidates.labels") and "rpn" not in k) < CLASSES
    assert 0 < arrays["float64.0.rpn_candidates.labels"].max() < levels
    report = CheckReport("artifact")
    art = detector_integrity(folder, report)
    assert art is not None and art.sound, [c.message for c in report.checks if not c.passed]


def stored_twice(handle, **arrays) -> None:
    """An npz holding one key twice, zeros first and the export's array last: numpy reads the last copy, another
    reader the first (before, it passed: only the last was ever judged)."""
    first = next(iter(arrays))
    with zipfile.ZipFile(handle, "w") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        for key, array in [(first, np.zeros_like(arrays[first])), *arrays.items()]:
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{key}.npy", buffer.getvalue())


@pytest.mark.parametrize("save, named", [
    (np.savez_compressed, "is compressed"),
    (stored_twice, "more than once"),
])
def test_a_compressed_or_duplicated_goldens_member_is_refused_unread(folder, tmp_path, save, named):
    """A stored member is no larger than the file; a compressed one can expand a few MB to gigabytes first
    (measured before: a 5.8 MB goldens.npz with 4.8 GB of zeros in one tensor: 73 s and 14.7 GB; now 4 s)."""
    edit_goldens(folder, lambda arrays: None, save)
    result = invoke("artifact", folder, "--json", tmp_path / "a.json")
    assert result.exit_code == 1, result.output
    failed = {c["name"]: c["message"] for c in checks(tmp_path / "a.json") if not c["passed"]}
    assert named in failed[CONTENT], failed


def malformed_onnx(opset: int) -> bytes:
    """A valid ONNX file named detector.onnx whose `boxes` are six numbers: not N x 4."""
    six = numpy_helper.from_array(np.zeros(6, np.float32), "six")
    nodes = [helper.make_node("Identity", ["six"], ["boxes"]),
             helper.make_node("ReduceMean", ["image"], ["scores"], keepdims=0),
             helper.make_node("Cast", ["scores"], ["labels"], to=TensorProto.INT64)]
    graph = helper.make_graph(nodes, "malformed", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                  [3, "h", "w"])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [6]),
                               helper.make_tensor_value_info("labels", TensorProto.INT64, []),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [])], initializer=[six])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_an_onnx_file_with_malformed_outputs_fails_its_check_and_the_other_folders_are_checked(folder, exported,
                                                                                              tmp_path):
    """ONNX is data, run unsigned: before, its ValueError ended `verify artifact` with exit 2 ("unexpected
    ValueError ... please report it"), no report written and the folders after it never checked."""
    opset = onnx.load(str(folder / ONNX), load_external_data=False).opset_import[0].version
    rewrite(folder / ONNX, malformed_onnx(opset))
    rehash(folder, ONNX)
    other = tmp_path / "other"
    shutil.copytree(exported, other, copy_function=os.link)
    edit_manifest(other, lambda d: d["tolerance"].update(factor=d["tolerance"]["factor"] * 2))  # fails fast
    result = invoke("artifact", folder, other, "--json", tmp_path / "a.json")
    assert result.exit_code == 1, result.output
    found = checks(tmp_path / "a.json")
    mine = {c["name"]: c for c in found if c["artifact"] == str(folder)}
    assert all(c["passed"] for c in mine.values() if c["runtime"] == INTEGRITY)
    assert not mine[f"{ONNX}: load and run"]["passed"] and "reshape" in mine[f"{ONNX}: load and run"]["message"]
    assert any(c["name"] == "tolerance" and not c["passed"] for c in found if c["artifact"] == str(other))


def test_a_model_file_relisted_as_external_data_is_refused_not_left_unchecked(folder, tmp_path):
    """detector.onnx replaced by any bytes and listed as external data of the TorchScript file: before, it was
    never checked or run, and `verify artifact --trust-unsigned-code` passed all 15 checks (exit 0)."""
    def relist(data):
        entry = data["files"][ONNX]
        entry.update(format="external-data", of=FILE_NAMES["torchscript"])
        for key in ("exporter", "opset"):
            entry.pop(key)
    edit_manifest(folder, relist)
    rewrite(folder / ONNX, b"not a model")
    rehash(folder, ONNX)
    result = invoke("artifact", folder, UNSIGNED_CODE_OPTION, "--json", tmp_path / "a.json")
    assert result.exit_code == 1, result.output
    found = checks(tmp_path / "a.json")
    failed = {c["name"]: c["message"] for c in found if not c["passed"] and c["runtime"] == INTEGRITY}
    assert "external data" in failed[ONNX], failed
    assert not any(c["passed"] for c in found if c["runtime"] != INTEGRITY), "nothing is run"


@pytest.mark.skipif(cuda_available(), reason="CUDA is here: TorchScript on cuda is a real run")
def test_preflight_of_torchscript_on_cuda_without_cuda_is_an_environment_error(folder):
    """As ONNX Runtime's is (exit 2, one line); before, the TorchScript file's load failed: a NO-GO of a sound
    file (exit 1) for what the machine lacks."""
    result = invoke("preflight", folder, "--provider", "cuda", "--runtime", "torchscript", UNSIGNED_CODE_OPTION,
                    "--runs", 1, "--warmup", 0)
    assert result.exit_code == 2, result.output
    assert "CUDA is not available" in result.output and "Traceback" not in result.output


def consistent_floors(folder) -> None:
    """Every floor the manifest records re-derived from the (edited) goldens, as `verify artifact` derives them:
    the folder is consistent again, and only a signature or `--rebuild` can tell."""
    from verify.detect.verdict import EAGER, ORACLE, derive_floors
    from verify.judge.oracle import channel_floors_sha256

    art = detector_integrity(folder, CheckReport("artifact"))
    floors, detection = derive_floors(art.judging, art.images, art.references[EAGER], art.references[ORACLE],
                                      art.manifest.tolerance.factor)
    edit_manifest(folder, lambda m: m.update(
        noise_floor={k: f.value for k, f in floors.items()}, channel_floors_sha256=channel_floors_sha256(floors),
        detection_floor={"boxes": detection.boxes, "scores": detection.scores}))


def test_rebuild_names_a_consistently_edited_float64_golden(folder, tmp_path):
    """A dense float64 golden moved (10 x REFERENCE_RTOL of its scale), goldens rehashed and floors re-derived:
    integrity passes, `--rebuild` (verify/detect/rebuild.py) names the array and loads nothing."""
    from verify.folder.rebuild import REBUILD_CHECK, REFERENCE_RTOL

    fresh = {c["name"]: c for c in checks_of(folder, tmp_path, "--rebuild")}
    assert fresh[REBUILD_CHECK]["passed"] and fresh["after NMS: onnxruntime vs eager fp64"]["passed"], fresh

    def shift(arrays):
        key = sorted(k for k in arrays if k.startswith("float64.0.dense."))[0]
        arrays[key].flat[0] += 10 * REFERENCE_RTOL * np.abs(arrays[key]).max()
        shift.key = key
    edit_goldens(folder, shift)
    consistent_floors(folder)
    plain = {c["name"]: c for c in checks_of(folder, tmp_path)}
    assert plain["noise floors"]["passed"] and plain["postprocess"]["passed"], plain
    rebuilt = {c["name"]: c for c in checks_of(folder, tmp_path, "--rebuild")}
    assert not rebuilt[REBUILD_CHECK]["passed"] and shift.key in rebuilt[REBUILD_CHECK]["message"]
    assert not any(c["passed"] for c in rebuilt.values() if c["runtime"] not in (INTEGRITY, "rebuild"))


def checks_of(folder, tmp_path, *extra) -> list[dict]:
    report = tmp_path / f"r{len(list(tmp_path.glob('r*.json')))}.json"
    invoke("artifact", folder, "--json", report, *extra)
    return checks(report)
