"""Keypoint R-CNN in `verify matrix` (verify/matrix/keypoint_numbers.py, detector_cell.py, detector_judging.py): a cell
stores each run's keypoints, keypoint scores and heatmap logits exactly, the matrix and its merge judge them again with
the export's functions (verify/detect/keypoints.py) and bind the stored pairs to the recomputed ones, and a shard whose
keypoint numbers were edited (moved, rescored, its logits and keypoints edited together, dropped, reshaped, a floor or
ratio rewritten) never merges into exit 0. One Keypoint R-CNN registered at 64 px (as in tests/test_keypoints44.py),
one in-process matrix run for the module; the 320 px runs are measured in the report."""

from __future__ import annotations

import base64
import copy
import json
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads
from typer.testing import CliRunner

from exporter.families.detectors import DETECTORS, KEYPOINT_LOGITS, Detector
from tests.helpers import DETECTOR_ONNX as ONNX
from tests.helpers import (
    ONE_CHANNEL_ERROR,
    TINY_DETECTOR,
    forged_detector_merge_fails,
    scaled_onnx_weight,
    small_roi_pool,
    tiny_rcnn_options,
)
from verify.cli import app
from verify.detect.export import FILE_NAMES
from verify.detect.keypoints import derived_keypoints
from verify.detect.report import DetectorReport, Judging
from verify.detect.verdict import EAGER, ORACLE, RUNTIMES, judge_runs, size_scales
from verify.judge.compare import AUTO_FACTOR, Tolerance
from verify.matrix import AGREE, DISAGREE, load_result, merge_results
from verify.matrix.detector_cell import detector_numbers
from verify.matrix.detector_judging import judge_detector_cell
from verify.matrix.detectors import CELL_KINDS, DETECTOR_VIEW, DetectorSpec
from verify.matrix.judging import RUN_FOUND
from verify.matrix.keypoint_numbers import (
    KEYS,
    LOGITS_KEY,
    POINTS_DTYPE,
    POINTS_KEY,
    SCORES_KEY,
    XOR_KEY,
    head_shape,
    logits_record,
    read_logits,
)
from verify.matrix.mask_numbers import pack, run_dtype, unpack
from verify.matrix.proposal_judging import registered_detector
from verify.matrix.result import CellResult

TINY = TINY_DETECTOR
TINY_KEYPOINTS = Detector("keypointrcnn_tiny_matrix", "keypointrcnn", None, ("batch", "frozen"),
                          tiny_rcnn_options(keypoint_roi_pool=small_roi_pool(),
                                            keypoint_head=KeypointRCNNHeads(256, (64, 512))),
                          builder="keypointrcnn_resnet50_fpn")
"""torchvision's Keypoint R-CNN at TINY px, a two-layer keypoint head on 7 x 7 RoIs (tests/test_keypoints44.py's)."""
PREDICTOR_OUTPUTS = 1
"""The keypoint predictor is a ConvTranspose2d: its weight's axis 1 holds its output channels (one a keypoint); axis 0,
once seeded here, held one of 512 input channels, whose error the head's weights showed or hid (2.6x to 40.8x)."""
SPEC = f"{TINY_KEYPOINTS.name}:{TINY_KEYPOINTS.default_norm}:{DETECTOR_VIEW}"


@pytest.fixture(scope="module")
def keypoint_matrix(module_tmp):
    """`verify matrix -b <the tiny Keypoint R-CNN> --format onnx` as shard 1/1, in-process; verify_detector spied on,
    and the cell's ONNX file copied with a 0.1 % error in one keypoint's channel of the predictor before its folder
    goes."""
    from verify.detect import check

    where = module_tmp("keypoint-matrix")
    made = []

    def spy(*args, _real=check.verify_detector, **kwargs):
        report = _real(*args, **kwargs)
        scaled_onnx_weight(report.files[ONNX], where / FILE_NAMES[ONNX], f"{KEYPOINT_LOGITS}.weight", 0,
                           ONE_CHANNEL_ERROR, axis=PREDICTOR_OUTPUTS)
        made.append(report)
        return report

    with DETECTORS.adding(TINY_KEYPOINTS.name, TINY_KEYPOINTS), pytest.MonkeyPatch.context() as patch:
        patch.setattr(check, "verify_detector", spy)
        result = CliRunner().invoke(app, ["matrix", "-b", TINY_KEYPOINTS.name, "--norm",
                                          TINY_KEYPOINTS.default_norm, "--detector-shape", f"1x3x{TINY}x{TINY}",
                                          "--format", ONNX, "--no-cache", "--shard", "1/1",
                                          "--json", str(where / "m.json")])
        assert (where / "m.json").exists(), result.output
        report = load_result(where / "m.json")
        yield SimpleNamespace(result=result, calls=made, path=where / "m.json", report=report, seeded=where /
                              FILE_NAMES[ONNX], cell=next(c for c in report.cells if c.view == DETECTOR_VIEW))


def test_a_keypoint_rcnn_cell_stores_its_keypoints_and_agrees_judged_again(keypoint_matrix):
    """The cell's after-NMS pairs, keypoints included, recomputed from its stored numbers, are the export report's own,
    number for number; every run stores its keypoints, scores and logits bit for bit; the rows read the ratios."""
    assert keypoint_matrix.result.exit_code == 0, keypoint_matrix.result.output
    (report,) = keypoint_matrix.calls
    numbers = keypoint_matrix.cell.detector
    assert keypoint_matrix.cell.verdict == AGREE and report.passed
    assert numbers["after_nms"] == json.loads(json.dumps([d.to_dict() for d in report.detections]))
    assert all(p["floor"]["keypoints"] == report.floor.keypoints and p["matched"] > 0 for p in numbers["after_nms"])
    eager = report.boxes[EAGER][0].keypoint_logits
    for label, images in numbers["runs"].items():
        found = report.boxes[label][0]
        for key, own in ((POINTS_KEY, found.keypoints), (SCORES_KEY, found.keypoint_scores)):
            stored = unpack(images[0][key], POINTS_DTYPE, label)
            assert stored.dtype == own.dtype and np.array_equal(stored, own), (label, key)
        stored = read_logits(images[0][LOGITS_KEY], run_dtype(label), eager, label)  # the others' against eager's
        assert stored.dtype == found.keypoint_logits.dtype and np.array_equal(stored, found.keypoint_logits), label
        assert (XOR_KEY in images[0][LOGITS_KEY]) is (label != EAGER)
    rows = [row.detail for row in keypoint_matrix.cell.rows() if row.kind == "after NMS"]
    assert rows and all(", keypoints " in text and "keypoint head" in text for text in rows), rows
    assert f"ok   {SPEC}  after NMS {RUNTIMES[ONNX]} vs {ORACLE}" in keypoint_matrix.result.output


def test_the_merge_judges_the_keypoints_again_and_agrees(keypoint_matrix):
    merged = merge_results([load_result(keypoint_matrix.path)], ["shard"])
    assert merged.exit_code == 0, merged.summary()
    cell = next(c for c in merged.cells if c.view == DETECTOR_VIEW)
    assert cell.detector["after_nms"] == keypoint_matrix.cell.detector["after_nms"]


def _cell(data: dict) -> dict:
    return next(c for c in data["cells"] if c["view"] == DETECTOR_VIEW)["detector"]


def _runtime(data: dict) -> dict:
    return _cell(data)["runs"][RUNTIMES[ONNX]][0]


def _floor(data: dict, key: str) -> float:
    return _cell(data)["after_nms"][0]["floor"][key]


def _edit(data: dict, key: str, dtype: str, change) -> None:
    stored = _runtime(data)
    values = unpack(stored[key], dtype, "").copy()
    change(values)
    stored[key] = pack(values, dtype)


def _eager_logits(data: dict) -> np.ndarray:
    return read_logits(_cell(data)["runs"][EAGER][0][LOGITS_KEY], run_dtype(EAGER), None, "")


def _keypoint_moved(data: dict) -> None:
    """One ONNX Runtime keypoint's x moved by a thousand keypoint floors (its logits and the stored figures kept)."""
    _edit(data, POINTS_KEY, POINTS_DTYPE, lambda v: v.__setitem__((0, 0, 0), v[0, 0, 0] + 1e3 * _floor(data,
                                                                                                      "keypoints")))


def _score_edited(data: dict) -> None:
    _edit(data, SCORES_KEY, POINTS_DTYPE, lambda v: v.__setitem__((0, 0), v[0, 0] + 1e3 * _floor(data,
                                                                                              "keypoint_scores")))


def _logits_edited_with_their_keypoints(data: dict) -> None:
    """One detection's heatmap logits scaled up 1 %, its keypoints and scores re-derived from them as torchvision
    derives them: a run consistent with itself, whose head is off."""
    stored = _runtime(data)
    dtype = run_dtype(RUNTIMES[ONNX])
    logits = read_logits(stored[LOGITS_KEY], dtype, _eager_logits(data), "").copy()
    logits[0] *= 1.01
    boxes = np.asarray(stored["boxes"], dtype=np.float64)
    ((sx, sy),) = size_scales(TINY_KEYPOINTS.name, [tuple(_cell(data)["shape"][2:])])
    points, scores = derived_keypoints(logits, boxes / np.array([sx, sy, sx, sy]), np.float32)
    points[..., :2] *= np.array([sx, sy], dtype=np.float32)
    stored[LOGITS_KEY], stored[POINTS_KEY], stored[SCORES_KEY] = (
        logits_record(logits, dtype, _eager_logits(data)), pack(points, POINTS_DTYPE), pack(scores, POINTS_DTYPE))


def _runtime_keypoints_dropped(data: dict) -> None:
    for key in KEYS:
        _runtime(data).pop(key)


def _oracle_logits_dropped(data: dict) -> None:
    _cell(data)["runs"][ORACLE][0].pop(LOGITS_KEY)


def _shape_edited(data: dict) -> None:
    """The logits' stored shape doubled in M, stored whole with bytes to match (bounded by the registered head's)."""
    stored = _runtime(data)
    n, k, m, _ = stored[LOGITS_KEY]["shape"]
    stored[LOGITS_KEY] = pack(np.zeros((n, k, 2 * m, 2 * m)), run_dtype(RUNTIMES[ONNX]))


def _residual_inflated(data: dict) -> None:
    """The logits' residual replaced by one that inflates to a hundred times their bytes (read no further)."""
    stored = _runtime(data)[LOGITS_KEY]
    size = int(np.prod(stored["shape"])) * np.dtype(run_dtype(RUNTIMES[ONNX])).itemsize
    stored[XOR_KEY] = base64.b64encode(zlib.compress(bytes(100 * size))).decode("ascii")


def _bytes_cut(data: dict) -> None:
    stored = _runtime(data)[POINTS_KEY]
    stored["base64"] = stored["base64"][:-8]


def _eager_outside_its_box(data: dict) -> None:
    """Eager's keypoint moved far outside its box (eager measures the floors)."""
    stored = _cell(data)["runs"][EAGER][0]
    values = unpack(stored[POINTS_KEY], POINTS_DTYPE, "").copy()
    values[0, 0, 0] += 1e4
    stored[POINTS_KEY] = pack(values, POINTS_DTYPE)


def _floor_raised(data: dict) -> None:
    pair = next(p for p in _cell(data)["after_nms"] if p["a"] == RUNTIMES[ONNX])
    pair["floor"]["keypoint_head"] *= 10


def _ratio_lowered(data: dict) -> None:
    pair = next(p for p in _cell(data)["after_nms"] if p["a"] == RUNTIMES[ONNX])
    pair["worst_keypoint_head_ratio"] = pair["worst_keypoint_head_ratio"] / 2 + 0.01


@pytest.mark.parametrize("forge, named", [
    (_keypoint_moved, "keypoints"), (_score_edited, "keypoint scores"),
    (_logits_edited_with_their_keypoints, "keypoint head logits"), (_runtime_keypoints_dropped, "gives no keypoints"),
    (_oracle_logits_dropped, "no keypoints"), (_shape_edited, "not [1"), (_bytes_cut, "bytes for a shape"),
    (_residual_inflated, "a residual of other than"),
    (_eager_outside_its_box, "outside their detection's box"), (_floor_raised, "floor of keypoint_head"),
    (_ratio_lowered, "worst_keypoint_head_ratio")])
def test_edited_keypoint_numbers_never_merge_into_exit_0(keypoint_matrix, forge, named, tmp_path):
    """The shard still says agree; the merge judges its numbers again and fails it (exit 1), saying why."""
    forged_detector_merge_fails(keypoint_matrix.path, forge, named, tmp_path)


def test_a_seeded_keypoint_head_error_in_the_cells_onnx_file_fails_the_cell(keypoint_matrix):
    """The cell's own ONNX file with one channel of the keypoint predictor 0.1 % off, run and judged as the cell
    judges, its numbers stored and judged again: a disagreement naming the keypoint head."""
    (report,) = keypoint_matrix.calls
    judged = DetectorReport(report.name, report.norm, report.weights, report.shape, (ONNX,), AUTO_FACTOR,
                            images=report.images)
    judged.classes = report.classes
    images = [torch.from_numpy(i) for i in report.images]
    judge_runs(judged, Judging.of(registered_detector(TINY_KEYPOINTS.name)), images, report.references[EAGER],
               report.references[ORACLE], {ONNX: keypoint_matrix.seeded}, Tolerance())
    cell = CellResult("c", TINY_KEYPOINTS.name, report.norm, DETECTOR_VIEW, AGREE, detector=detector_numbers(judged),
                      input={"shape": list(report.shape)})
    judged_cell = judge_detector_cell(cell, Tolerance(), (ONNX,), 1)
    assert judged_cell.verdict == DISAGREE
    assert any("keypoint head logits" in p for p in judged_cell.problems), judged_cell.problems


def test_a_keypoint_rcnn_is_a_cell_kind_whose_shapes_come_from_its_registration(keypoint_matrix):
    """Every registered Keypoint R-CNN is taken (no refusal); the K and M a stored array must have are those of the
    heatmap logits the registered head gives."""
    assert "keypointrcnn" in CELL_KINDS
    for name in DETECTORS.names():
        DetectorSpec(name, DETECTORS.get(name).default_norm, (1, 3, TINY, TINY)).validate()
    (report,) = keypoint_matrix.calls
    assert head_shape(registered_detector(TINY_KEYPOINTS.name)) == report.boxes[EAGER][0].keypoint_logits.shape[1:3]


def test_a_disagreement_its_numbers_do_not_show_keeps_its_reason_through_the_merge(keypoint_matrix, tmp_path):
    """The export's own judgement failed one pair (judged here at a factor of one tenth) where the cell's stored
    numbers, judged again, pass: the cell disagrees and says which pair failed, and its merge keeps both (it had read
    "disagree" with no problem listed, and the merge, which reads no stored verdict, judged it into exit 0)."""
    from verify.detect import check

    (report,) = keypoint_matrix.calls
    failing = copy.deepcopy(report)
    failing.detections[-1].factor = AUTO_FACTOR / 50
    assert not failing.passed and not failing.problems
    path = tmp_path / "shard.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(check, "verify_detector", lambda *args, **kwargs: failing)
        result = CliRunner().invoke(app, ["matrix", "-b", TINY_KEYPOINTS.name, "--norm", report.norm,
                                          "--detector-shape", f"1x3x{TINY}x{TINY}", "--format", ONNX, "--no-cache",
                                          "--shard", "1/1", "--json", str(path)])
    assert result.exit_code == 1, result.output
    for cell in (next(c for c in load_result(path).cells if c.view == DETECTOR_VIEW),
                 next(c for c in merge_results([load_result(path)], [path]).cells if c.view == DETECTOR_VIEW)):
        assert cell.verdict == DISAGREE
        assert any(p.startswith(RUN_FOUND) and f"after NMS {failing.detections[-1].a} vs" in p
                   for p in cell.problems), cell.problems
    merged = CliRunner().invoke(app, ["matrix", "merge", str(path)])
    assert merged.exit_code == 1 and RUN_FOUND in merged.output, merged.output
