"""A whole detector's export folder proves itself (verify/detect/folder.py, verify/detect/preflight.py): a fresh
folder passes `verify artifact` and preflight says GO; a tampered folder never passes, with the reason named;
an ONNX file with a seeded one-channel error, rehashed into the manifest, fails on the goldens; and a TorchScript
file in an unsigned folder is never loaded. One export (the smallest Faster R-CNN, 1x3x320x320) for the module;
each test works on a copy whose unchanged files are hard links to it (an edited file is replaced, never written
in place)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from exporter.detector_manifest import load_detector_manifest
from exporter.manifest import GOLDENS_NAME, MANIFEST_NAME
from tests.helpers import (
    checks,
    edit_goldens,
    edit_manifest,
    invoke,
    linked_copy,
    one_channel_error,
    rehash,
    rewrite,
    strip_signature,
)
from verify.detect.export import FILE_NAMES
from verify.folder.integrity import INTEGRITY, UNSIGNED_CODE_OPTION
from verify.judge.compare import AUTO_FACTOR

ONNX, SCRIPTED = FILE_NAMES["onnx"], FILE_NAMES["torchscript"]


@pytest.fixture
def keys(detector_keys):
    """The keys the suite's detector export is signed with (tests/conftest.py detector_keys)."""
    return detector_keys


@pytest.fixture
def signed(detector_export, tmp_path):
    """A hard-linked copy of the suite's `verify export -b NAME --sign-key` (tests/conftest.py detector_export), signed
    by the export: checked without --verify-key, a signed folder counts as unverified."""
    _, exported, result, _ = detector_export
    assert result.exit_code == 0, result.output
    return linked_copy(exported, tmp_path)


@pytest.fixture
def folder(signed):
    """The same export as published unsigned: no signature file, none declared."""
    return strip_signature(signed)


def test_a_fresh_detector_folder_passes_artifact_and_preflight_says_go(signed, keys, tmp_path):
    """Its signature verified, the TorchScript file is loaded too, with no --trust-unsigned-code."""
    manifest = load_detector_manifest(signed / MANIFEST_NAME)
    assert manifest.kind == "detector" and manifest.passed and set(manifest.files) == {ONNX, SCRIPTED, GOLDENS_NAME}
    assert manifest.detector.weights_sha256 and manifest.postprocess.rpn is not None and manifest.signature
    result = invoke("artifact", signed, "--verify-key", keys[1], "--json", tmp_path / "a.json", "--junit",
                    tmp_path / "a.xml")
    assert result.exit_code == 0, result.output
    found = checks(tmp_path / "a.json")
    assert all(c["passed"] for c in found)
    judged = {(c["runtime"], c["name"].split(":")[0]) for c in found}
    assert {("onnxruntime", "before NMS"), ("onnxruntime", "proposals"), ("onnxruntime", "after NMS"),
            ("torchscript", "after NMS")} <= judged
    assert "testcase" in (tmp_path / "a.xml").read_text()
    result = invoke("preflight", signed, "--runs", 1, "--warmup", 0)
    assert result.exit_code == 0, result.output
    go = result.stdout.strip().splitlines()[-1]
    assert go.startswith("GO: detector.onnx") and "p90" in go and "match at both levels" in go


def test_an_unsigned_folder_never_loads_its_torchscript_file(folder, tmp_path):
    """The folder without its ONNX file (removed from the manifest too): the TorchScript file is all there is to
    run, and unsigned, without --trust-unsigned-code, it is not loaded; the report says why and how."""
    (folder / ONNX).unlink()
    edit_manifest(folder, lambda d: d["files"].pop(ONNX))
    result = invoke("artifact", folder, "--json", tmp_path / "a.json")
    assert result.exit_code == 1
    found = checks(tmp_path / "a.json")
    assert all(c["passed"] for c in found if c["runtime"] == INTEGRITY)
    failed = [c for c in found if not c["passed"]]
    assert [(c["runtime"], c["name"]) for c in failed] == [("torchscript", f"{SCRIPTED}: load")]
    assert "can run code" in failed[0]["message"] and UNSIGNED_CODE_OPTION in failed[0]["message"]
    assert [c for c in found if c["runtime"] != INTEGRITY] == failed, "nothing else ran"


def edit_golden(folder, key: str, scale: float) -> None:
    with np.load(folder / GOLDENS_NAME) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[key] = arrays[key] * scale
    (folder / GOLDENS_NAME).unlink()
    with open(folder / GOLDENS_NAME, "wb") as handle:
        np.savez(handle, **arrays)


def golden_edited(folder):
    edit_golden(folder, "float32.0.dense.rpn.head.cls_logits#0", 1.001)


def golden_edited_and_rehashed(folder):
    edit_golden(folder, "float64.0.dense.rpn.head.bbox_pred#0", 1.001)
    rehash(folder, GOLDENS_NAME)


def folded_dropped(folder):
    """Eager's second float32 rounding taken out: the channel floors re-derived without it are not the recorded."""
    edit_goldens(folder, lambda arrays: [arrays.pop(k) for k in [k for k in arrays if k.startswith("folded.")]])


def folded_scaled(folder):
    """A folded tensor off by 10 %: its rounding would lift its channels' floors far past the recorded."""
    def change(arrays):
        key = next(k for k in arrays if k.startswith("folded.") and "bbox_pred" in k)
        arrays[key] = arrays[key] * np.float32(1.1)
    edit_goldens(folder, change)


def folded_cropped(folder):
    def change(arrays):
        key = next(k for k in arrays if k.startswith("folded."))
        arrays[key] = arrays[key][:, :1]
    edit_goldens(folder, change)


def weight_edited(folder):
    data = bytearray((folder / ONNX).read_bytes())
    data[len(data) // 2] ^= 1
    rewrite(folder / ONNX, bytes(data))


def extra_file(folder):
    (folder / "notes.txt").write_text("added after the export")


def floor_raised(folder):
    edit_manifest(folder, lambda d: d["noise_floor"].update({"proposals": d["noise_floor"]["proposals"] * 10}))


def detection_floor_raised(folder):
    edit_manifest(folder, lambda d: d["detection_floor"].update(boxes=d["detection_floor"]["boxes"] * 10))


def factor_raised(folder):
    edit_manifest(folder, lambda d: d["tolerance"].update(factor=AUTO_FACTOR * 2))


def nms_lowered(folder):
    edit_manifest(folder, lambda d: d["postprocess"].update(nms_thresh=0.3))


def rpn_cap_lowered(folder):
    edit_manifest(folder, lambda d: d["postprocess"]["rpn"].update(post_nms_top_n=d["postprocess"]["rpn"]
                                                                   ["post_nms_top_n"] - 1))


def head_left_out(folder):
    edit_manifest(folder, lambda d: d.update(dense_outputs=[n for n in d["dense_outputs"]
                                                            if not n.startswith("rpn.head.bbox_pred#")]))


def unknown_field(folder):
    edit_manifest(folder, lambda d: d.update(trusted=True))


@pytest.mark.parametrize("tamper, check, named", [
    (golden_edited, GOLDENS_NAME, "modified"),
    (golden_edited_and_rehashed, "noise floors", "never taken on trust"),
    (folded_dropped, "noise floors", "never taken on trust"),
    (folded_scaled, "noise floors", "never taken on trust"),
    (folded_cropped, f"{GOLDENS_NAME}: content", "as float32."),
    (extra_file, "folder contents", "notes.txt"),
    (floor_raised, "noise floors", "noise_floor['proposals']"),
    (detection_floor_raised, "noise floors", "detection_floor.boxes"),
    (factor_raised, "tolerance", "never loosen"),
    (nms_lowered, "postprocess", "nms_thresh 0.3"),
    (rpn_cap_lowered, "postprocess", "not this model's RPN"),
    (head_left_out, "judged tensors", "leaves out rpn.head.bbox_pred"),
    (unknown_field, MANIFEST_NAME, "trusted"),
])
def test_a_tampered_detector_folder_never_passes_and_loads_nothing(folder, tmp_path, tamper, check, named):
    tamper(folder)
    result = invoke("artifact", folder, "--trust-unsigned-code", "--json", tmp_path / "a.json")
    assert result.exit_code == 1, result.output
    found = checks(tmp_path / "a.json")
    failed = {c["name"]: c["message"] for c in found if not c["passed"] and c["runtime"] == INTEGRITY}
    assert check in failed and named in failed[check], failed
    assert not any(c["passed"] for c in found if c["runtime"] != INTEGRITY), "nothing is run from a tampered folder"


def test_an_edited_model_file_is_not_loaded_and_preflight_says_no_go(folder, tmp_path):
    """A changed weight: that file fails its sha256 and is never run."""
    weight_edited(folder)
    result = invoke("artifact", folder, "--json", tmp_path / "a.json")
    assert result.exit_code == 1, result.output
    found = {(c["runtime"], c["name"]): c for c in checks(tmp_path / "a.json")}
    assert "modified" in found[(INTEGRITY, ONNX)]["message"] and not found[(INTEGRITY, ONNX)]["passed"]
    assert found[("onnxruntime", f"{ONNX}: load")]["message"] == "not loaded: it failed its integrity check"
    assert not any(c["passed"] for (runtime, _), c in found.items() if runtime == "onnxruntime")
    result = invoke("preflight", folder, "--runs", 1, "--warmup", 0)
    assert result.exit_code == 1 and result.stdout.strip().splitlines()[-1].startswith("NO-GO")


def test_a_one_channel_error_in_the_box_head_fails_on_the_goldens(folder, tmp_path):
    """The ONNX file of a buggy export, its hash recorded: integrity passes, the goldens judgement does not."""
    model = onnx.load(str(folder / ONNX))
    one_channel_error(model)  # a 0.1 % error in one row of roi_heads.box_head.fc7, as tests/test_detectors.py seeds
    rewrite(folder / ONNX, model.SerializeToString())
    rehash(folder, ONNX)
    result = invoke("artifact", folder, "--json", tmp_path / "a.json")
    assert result.exit_code == 1
    found = checks(tmp_path / "a.json")
    assert all(c["passed"] for c in found if c["runtime"] == INTEGRITY)
    failed = [c for c in found if not c["passed"] and c["runtime"] == "onnxruntime"]
    assert any(c["name"].startswith("before NMS") and "floor" in c["message"] for c in failed), failed



def test_a_change_since_signing_fails_the_signature_and_loads_nothing(signed, keys, tmp_path):
    floor_raised(signed)
    result = invoke("artifact", signed, "--verify-key", keys[1], "--json", tmp_path / "a.json")
    assert result.exit_code == 1
    found = {c["name"]: c for c in checks(tmp_path / "a.json")}
    assert not found["signature"]["passed"] and MANIFEST_NAME in found["signature"]["message"]
    assert not any(c["passed"] for c in found.values() if c["runtime"] != INTEGRITY)


def test_the_determinism_guard_repeats_every_image_not_only_the_first():
    """verify/detect/check.py `_guarded`: a runtime whose second image comes out one ulp off when repeated is
    caught (the guard once repeated the first image only, so this passed)."""
    import torch

    from verify.detect.eager_runs import GUARD_DEVICE, _guarded
    from verify.detect.match import Detections
    from verify.detect.report import Run
    from verify.judge.trust import repeat_problems

    images = [torch.zeros(3, 8, 8), torch.ones(3, 8, 8)]
    seen = []

    def drifting(batch):
        found = []
        for image in batch:
            seen.append(image)
            score = np.float32(0.5) + image.sum().item()
            if len(seen) == 2 * len(images):  # the repeat of the last image
                score = np.nextafter(score, np.float32(2))
            found.append(Detections.of({"boxes": np.zeros((1, 4)), "scores": [score], "labels": [1]}))
        return Run(found)

    guards = []
    kept = _guarded("drifting", drifting, images, guards)
    assert len(seen) == 2 * len(images) and len(kept.detections) == len(images)
    assert guards[0].differences["scores"] > 0
    problems = repeat_problems(guards, GUARD_DEVICE, {})
    assert len(problems) == 1 and problems[0].startswith("drifting is not deterministic")
