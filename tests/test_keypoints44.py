"""Keypoint R-CNN judged whole (stop 44; verify/detect/keypoints.py): its keypoint head is calibrated to spread each
detection's keypoints inside its box with unsaturated scores, each matched detection's keypoints, keypoint scores and
heatmap logits are judged on floors measured the same way, a one-channel error in the keypoint head of an exported file
fails with the keypoints named, a keypoint whose argmax rounding moved to a nearly equal maximum is named and judged on
its head alone, and its folder proves itself (goldens hold the keypoints and the heatmap logits). One Keypoint R-CNN
registered at 64 px (a two-layer keypoint head on 7 x 7 RoIs, 20 detections) exported once for the module, run on the
320 px calibration image (its transform scales it down 5x: keypoints judged in the detector's own frame); the 320 px
exports are measured in the README."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads

from exporter.detector_manifest import load_detector_manifest
from exporter.errors import UsageError
from exporter.families.detectors import (
    DETECTORS,
    KEYPOINT_LOGIT_STD,
    MIN_DETECTIONS,
    Detector,
    build_detector,
    calibration_image,
    detect,
)
from exporter.manifest import GOLDENS_NAME, MANIFEST_NAME
from tests.helpers import DETECTOR_ONNX as ONNX
from tests.helpers import DETECTOR_SCRIPTED as SCRIPTED
from tests.helpers import (
    TINY_DETECTOR,
    edit_goldens,
    edit_manifest,
    judged_detector,
    judged_with_onnx_channel_off,
    linked_copy,
    small_roi_pool,
    tiny_rcnn_options,
)
from verify.detect.export import DEFAULT_FORMATS, FILE_NAMES
from verify.detect.folder import GOLDENS_RUNTIME
from verify.detect.keypoints import derived_keypoints, keypoint_names
from verify.detect.match import DetectionFloor, Detections, Rules, compare_detections
from verify.detect.report import KEYPOINT_FIELDS, DetectorReport
from verify.detect.verdict import EAGER, ORACLE, RUNTIMES
from verify.folder.validate import validate
from verify.judge.compare import AUTO_FACTOR
from verify.render.detections import KEYPOINT_HEADER, MASK_HEADER, table_header, table_rows

TINY = TINY_DETECTOR
HEAD_CONV = "roi_heads.keypoint_head.0.weight"
"""The keypoint head's first 3 x 3 convolution (its output channels on axis 0)."""


def _tiny() -> Detector:
    """torchvision's Keypoint R-CNN at TINY px, no synthetic body, a two-layer keypoint head (64 then the predictor's
    512 channels) on 7 x 7 RoIs and MIN_DETECTIONS detections: the keypoint head's cost is per detection."""
    return Detector("keypointrcnn_tiny", "keypointrcnn", None, ("batch", "frozen"),
                    tiny_rcnn_options(keypoint_roi_pool=small_roi_pool(),
                                      keypoint_head=KeypointRCNNHeads(256, (64, 512))),
                    builder="keypointrcnn_resnet50_fpn")


TINY_KEYPOINTS = _tiny()


@pytest.fixture(scope="module")
def tiny_keypoints(tmp_path_factory):
    """The tiny Keypoint R-CNN built, exported (TorchScript and legacy ONNX) and judged, its folder written."""
    yield from judged_detector(TINY_KEYPOINTS, tmp_path_factory.mktemp("keypointrcnn"), calibration_image(0))


def test_the_keypoint_head_is_calibrated_to_keypoints_spread_inside_each_box(tiny_keypoints):
    built, images, _, _, _ = tiny_keypoints
    found = detect(built.model, images[0])
    assert len(found["scores"]) >= MIN_DETECTIONS
    boxes, points = found["boxes"].numpy()[:, None], found["keypoints"].numpy()
    where = (points[..., :2] - boxes[..., :2]) / (boxes[..., 2:] - boxes[..., :2])
    assert ((where >= 0) & (where <= 1)).all()
    for one in where:  # each detection's keypoints on both halves of its box, never piled in one cell
        assert (one < 0.5).any() and (one > 0.5).any() and len(np.unique(one.round(3), axis=0)) > 1
    scores = found["keypoints_scores"].numpy()
    assert 0 < scores.std() < KEYPOINT_LOGIT_STD * 3 and np.abs(scores).max() < 10 * KEYPOINT_LOGIT_STD


def test_a_correct_export_agrees_with_every_matched_keypoint_judged(tiny_keypoints):
    _, _, _, report, _ = tiny_keypoints
    assert report.exit_code == 0, report.summary()
    floor = report.floor
    assert None not in (floor.keypoints, floor.keypoint_scores, floor.keypoint_head)
    pairs = {(pair.a, pair.b): pair for pair in report.detections}
    runtimes = {(RUNTIMES[fmt], ref) for fmt in DEFAULT_FORMATS for ref in (EAGER, ORACLE)}
    assert set(pairs) == {(EAGER, ORACLE), *runtimes}
    for pair in pairs.values():
        judged = pair.keypoint_judgement
        assert pair.keypoints_judged and min(pair.matched_per_image) >= MIN_DETECTIONS
        assert max(judged.worst_keypoint_ratio, judged.worst_keypoint_score_ratio,
                   judged.worst_keypoint_head_ratio) <= AUTO_FACTOR
        assert "keypoint head" in pair.verdict()
    rows = [row for row in json.loads(json.dumps(report.to_dict(), allow_nan=False))["rows"]
            if row["level"] == "after NMS"]
    assert rows and all(set(KEYPOINT_FIELDS) - {"worst_keypoint"} <= set(row) for row in rows)
    assert {row.get("worst_keypoint") for row in rows} - {None} <= set(keypoint_names(17))
    header, cells = table_header(report), table_rows(report)
    assert set(KEYPOINT_HEADER) <= set(header) and not set(MASK_HEADER) & set(header)
    assert cells and all(len(row) == len(header) for row in cells)
    column = header.index(KEYPOINT_HEADER[-1])  # the table shows each pair's worst keypoint-head ratio
    assert all(row[column] != "-" for row in cells), cells


def test_goldens_keypoints_are_what_their_logits_give(tiny_keypoints):
    """torchvision's own derivation, from the recorded logits and the boxes in the detector's frame, gives the
    keypoints and scores the float64 oracle returned (its keypoints in float32, as torchvision returns them)."""
    _, images, _, report, _ = tiny_keypoints
    found = report.references[ORACLE].detections[0]
    scale = images[0].shape[-1] / TINY
    points, scores = derived_keypoints(found.keypoint_logits, found.boxes / scale, np.float64)
    assert np.allclose(points[..., :2] * scale, found.keypoints[..., :2], atol=report.floor.keypoints)
    assert np.array_equal(scores, found.keypoint_scores)


def _seeded(report: DetectorReport, built, images, name: str, channel: int, tmp_path):
    return judged_with_onnx_channel_off(built, images, report, name, channel, tmp_path)


def test_a_one_channel_error_in_the_keypoint_head_of_the_onnx_file_fails_with_the_keypoints_named(
        tiny_keypoints, tmp_path):
    built, images, _, report, _ = tiny_keypoints
    weight = numpy_helper.to_array(next(i for i in onnx.load(report.files[ONNX]).graph.initializer
                                        if i.name == HEAD_CONV))
    channel = int(np.abs(weight).reshape(len(weight), -1).sum(axis=1).argmax())
    judged = _seeded(report, built, images, HEAD_CONV, channel, tmp_path)
    assert judged.exit_code == 1
    failed = [pair for pair in judged.detections if not pair.passed]
    assert failed and all(pair.a == RUNTIMES[ONNX] for pair in failed)
    for pair in failed:
        assert pair.keypoint_judgement.worst_keypoint_head_ratio > AUTO_FACTOR and pair.worst_box_ratio <= AUTO_FACTOR
        assert "keypoint head logits" in pair.verdict() and pair.keypoint_judgement.worst_keypoint in pair.verdict()


def _one(box, logits, dtype=np.float64) -> Detections:
    """One detection as torchvision derives it from these heatmap logits (K x M x M) and box."""
    found = Detections(np.array([box], dtype=np.float64), np.array([0.9]), np.array([1]))
    found.keypoint_logits = logits[None].astype(dtype)
    found.keypoints, found.keypoint_scores = derived_keypoints(found.keypoint_logits, found.boxes, dtype)
    return found


BOX = [8.0, 8.0, 36.0, 36.0]
"""A 28 x 28 box: its map the predictor's 28 x 28 heatmap itself (the bicubic resize to one's own size copies it)."""
PEAKS = ((3, 3), (10, 10))
"""Keypoint 0's two equal maxima of its 14 x 14 logits (zero elsewhere), far apart."""
TIE = 1e-4
"""How much one maximum is raised above the other: the reference's the first, the run's the second."""


@pytest.mark.parametrize("score_floor, explained", [(TIE, True), (1e-9, False)])
def test_a_keypoint_moved_to_a_nearly_equal_maximum_is_named_and_judged_on_its_head(score_floor, explained):
    """Two nearly equal maxima of one heatmap: the run's tiny logit change moves the argmax to the other, a keypoint
    many floors away. Where the keypoint-score floor covers the two maxima's gap it is named and judged on its head
    alone; where it does not, x, y are judged (and fail)."""
    logits = np.random.default_rng(0).normal(0.0, 1.0, (17, 14, 14))
    logits[0] = 0.0
    sides = []
    for raised in PEAKS:
        one = logits.copy()
        for peak in PEAKS:
            one[(0, *peak)] = 10.0 + (TIE if peak == raised else 0.0)
        sides.append(_one(BOX, one))
    ref, run = sides
    assert np.abs(run.keypoints[0, 0, :2] - ref.keypoints[0, 0, :2]).max() > 1, "one argmax: nothing to explain"
    floor = DetectionFloor(boxes=1e-5, scores=1e-7, matched=1, keypoints=1e-5, keypoint_scores=score_floor,
                           keypoint_head=TIE)
    pair = compare_detections("run", [run], "ref", [ref], floor, Rules(0.05, 0.5, 10))
    judged = pair.keypoint_judgement
    assert pair.passed is explained, pair.verdict()
    assert bool(judged.argmax_borderline) is explained and bool(judged.argmax_unexplained) is not explained
    if explained:
        assert "nearly equal maximum" in pair.verdict() and judged.worst_keypoint_ratio <= AUTO_FACTOR
    else:
        assert judged.worst_keypoint_ratio > AUTO_FACTOR and "nose" in pair.verdict()


def test_a_run_without_keypoints_fails_never_judged_on_its_boxes_alone(tiny_keypoints):
    _, _, _, report, _ = tiny_keypoints
    runtime = RUNTIMES[ONNX]
    bare = [Detections(found.boxes, found.scores, found.labels) for found in report.boxes[runtime]]
    pair = compare_detections(runtime, bare, ORACLE, report.boxes[ORACLE], report.floor, report.judging.rules)
    assert not pair.passed and f"{runtime} gives no keypoints" in pair.verdict()


def test_its_folder_proves_itself_and_edited_keypoints_never_pass(tiny_keypoints, tmp_path):
    """The goldens hold each detection's keypoints and heatmap logits, the manifest the keypoint floors: a fresh folder
    passes; a golden heatmap logit moved, a keypoint floor dropped or the logits removed, each rehashed, fails the
    check that re-derives it, with no file run."""
    _, _, _, report, exported = tiny_keypoints
    manifest = load_detector_manifest(exported / MANIFEST_NAME)
    assert manifest.detection_floor.keypoint_head == report.floor.keypoint_head
    copy = linked_copy(exported, tmp_path)
    (copy / FILE_NAMES[SCRIPTED]).unlink()
    edit_manifest(copy, lambda data: data["files"].pop(FILE_NAMES[SCRIPTED]))
    checked = validate(copy)
    assert checked.passed, [c.message for c in checked.checks if not c.passed]
    after = [c for c in checked.checks if c.name.startswith("after NMS")]
    assert {c.runtime for c in after} == {GOLDENS_RUNTIME, RUNTIMES[ONNX]}
    assert all("keypoint head" in c.message for c in after)

    def moved(arrays):
        arrays["float32.0.keypoint_logits"][0, 0, 0, 0] += 1.0

    edits = [("noise floors", lambda folder: edit_goldens(folder, moved)),
             ("noise floors", lambda folder: edit_manifest(folder,
                                                           lambda d: d["detection_floor"].pop("keypoint_head"))),
             (f"{GOLDENS_NAME}: content", lambda folder: edit_goldens(folder,
                                                                      lambda a: a.pop("float64.0.keypoint_logits")))]
    for i, (named, edit) in enumerate(edits):
        (tmp_path / str(i)).mkdir()
        folder = linked_copy(copy, tmp_path / str(i))
        edit(folder)
        checked = validate(folder)
        failed = [c for c in checked.checks if not c.passed and not c.skipped]
        assert not checked.passed and failed[0].name == named, [(c.name, c.message) for c in failed]
        assert "keypoint" in failed[0].message, failed[0].message
        assert not any(c.name.startswith(("after NMS", "before NMS")) and c.passed for c in checked.checks)


def test_a_keypoint_rcnn_model_is_pointed_at_its_registered_detector():
    from torchvision.models.detection import KeypointRCNN

    from exporter.user_model import _refuse_detector

    class Fine(KeypointRCNN):
        pass

    with pytest.raises(UsageError) as caught:
        _refuse_detector(Fine.__new__(Fine), "det.py:make")
    names = [name for name in DETECTORS.names() if DETECTORS.get(name).kind == TINY_KEYPOINTS.kind]
    assert names and "--weights det.pt" in str(caught.value) and all(name in str(caught.value) for name in names)
    assert "not verified" not in str(caught.value)


def test_a_head_registered_built_is_drawn_from_the_seed_and_never_shared():
    """A registration whose keypoint head was built when it was made (its weights drawn from torch's global RNG then,
    which torch seeds anew in every process): two such registrations made under other global states give the same
    weights for one seed, and a second build neither shares a tensor with the first nor changes it."""
    import torch

    torch.manual_seed(1)
    first = replace(_tiny(), name="keypointrcnn_tiny_first")  # the module fixture may hold TINY's own name here
    torch.manual_seed(2)
    second = replace(_tiny(), name="keypointrcnn_tiny_other")
    with DETECTORS.adding(first.name, first), DETECTORS.adding(second.name, second):
        built = build_detector(first.name).model
        before = {k: v.clone() for k, v in built.state_dict().items()}
        again, other = build_detector(first.name).model, build_detector(second.name).model
    head = "roi_heads.keypoint_head"
    for model in (again, other):
        state = model.state_dict()
        assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in before)
    assert all(torch.equal(v, before[k]) for k, v in built.state_dict().items())
    assert not {p.data_ptr() for p in built.get_submodule(head).parameters()} & {
        p.data_ptr() for p in again.get_submodule(head).parameters()}
