"""Hunt 18b: whole detectors on cases the suite never held.
- A TorchScript file was judged after NMS only, so a seeded bug that the judged images never reach in their
  detections agreed; its own pieces are now judged before NMS (verify/detect/check.py `_run_torchscript`,
  `_script_piece_problems`).
- A detection in one run only passed as a `detections cap` (or `NMS`) borderline whatever its box: it must now be one of
  the float64 model's final-NMS candidates (verify/detect/match.py `_unproposed`)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from exporter.errors import ExportError
from exporter.families.detectors import build_detector, calibration_image
from tests.helpers import NAME
from verify.detect.match import DetectionFloor, Detections, Rules, compare_detections
from verify.detect.scripted_runs import _run_torchscript, _script_pieces
from verify.detect.verdict import EAGER, ORACLE, RUNTIMES, candidate_scales, judge_detector
from verify.judge.compare import AUTO_FACTOR

SCRIPT = RUNTIMES["torchscript"]


@pytest.fixture(scope="module")
def built():
    return build_detector(NAME)


def tampered_script(detector_export, tmp_path, edit):
    """A copy of the suite's TorchScript file with `edit(module)` applied to it."""
    _, out, _, _ = detector_export
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated: a warning on every load
        model = torch.jit.load(str(out / "detector.torchscript.pt"))
        with torch.no_grad():
            edit(model)
        path = tmp_path / "tampered.torchscript.pt"
        torch.jit.save(model, str(path))
    return path


def test_a_box_regression_row_of_a_class_no_image_detects_fails(detector_export, built, tmp_path):
    report, _, _, _ = detector_export
    seen = {int(label) for found in report.boxes[ORACLE] for label in found.labels}
    absent = next(c for c in range(1, 91) if c not in seen)

    def edit(model):  # the four box deltas of one class, 10 % off: that class's boxes move, no other
        rows = model.roi_heads.box_predictor.bbox_pred
        rows.weight[4 * absent:4 * absent + 4] *= 1.1
        rows.bias[4 * absent:4 * absent + 4] += 0.5

    judged = judge_detector(built, [calibration_image(0)], {"torchscript": tampered_script(detector_export, tmp_path,
                                                                                             edit)})
    assert all(pair.passed for pair in judged.detections), "after NMS alone cannot see it: no detection of that class"
    assert judged.exit_code == 1
    assert judged.problems and all("roi_heads.box_predictor.bbox_pred" in p and "\n" not in p
                                   for p in judged.problems), judged.problems
    assert {p.split(": ")[1] for p in judged.problems} == {f"{SCRIPT} vs {ORACLE}", f"{SCRIPT} vs {EAGER}"}


def test_a_forward_that_is_not_its_own_pieces_is_refused_in_one_line(detector_export, built, monkeypatch):
    _, out, _, _ = detector_export
    real = _script_pieces

    def other(*args):  # what the pieces compose to, one score one ulp off what the forward returned
        tensors, proposals, composed = real(*args)
        composed = {**composed, "scores": composed["scores"].clone()}
        composed["scores"][0] = torch.nextafter(composed["scores"][0], torch.tensor(2.0))
        return tensors, proposals, composed

    monkeypatch.setattr("verify.detect.scripted_runs._script_pieces", other)
    with pytest.raises(ExportError, match="computes something else") as caught:
        _run_torchscript(out / "detector.torchscript.pt", [calibration_image(0)], ["rpn.head.cls_logits#0"])
    assert "\n" not in str(caught.value)


def test_the_pieces_show_every_dense_tensor_eager_shows(detector_export):
    report, out, _, _ = detector_export
    eager = report.references[EAGER]
    run = _run_torchscript(out / "detector.torchscript.pt", [calibration_image(0)], list(eager.dense))
    assert set(run.dense) == set(eager.dense)
    assert all(run.dense[name].shape == value.shape for name, value in eager.dense.items())
    assert len(run.proposals) == 1 and run.proposals[0].shape == eager.proposals[0].shape


# A detection that only rounding kept or dropped at the cap (or at an NMS decision) is one the model proposed: a float64
# candidate of the final NMS with its class, box and score. Before, any box at the lowest kept score passed.

def _moved_lowest(found, shift):
    lowest = int(np.argmin(found.scores))
    boxes = found.boxes.copy()
    boxes[lowest] += np.array([shift, 0.0, shift, 0.0])
    return Detections(boxes, found.scores.copy(), found.labels.copy())


def test_the_lowest_kept_box_moved_is_no_cap_borderline(detector_export):
    report, _, _, _ = detector_export
    oracle = report.references[ORACLE]
    rules = report.judging.rules
    assert all(len(found) == rules.detections_per_img for found in oracle.detections), "the cap must be reached"
    scales = candidate_scales(NAME, report.images)
    assert scales == [(1.0, 1.0)] * len(report.images)
    moved = [_moved_lowest(found, 40.0) for found in oracle.detections]
    pair = compare_detections(SCRIPT, moved, ORACLE, oracle.detections, report.floor, rules, oracle.candidates,
                              scales=scales)
    assert not pair.passed
    assert "no float64 candidate" in pair.unexplained[0].reason and pair.unexplained[0].side == "run"
    same = compare_detections(SCRIPT, oracle.detections, ORACLE, oracle.detections, report.floor, rules,
                              oracle.candidates, scales=scales)
    assert same.passed and not same.borderline


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_a_cap_swap_between_two_proposed_boxes_still_passes(scale):
    floor = DetectionFloor(boxes=1e-4, scores=1e-6, matched=2)
    rules = Rules(score_thresh=0.05, nms_thresh=0.5, detections_per_img=2)
    first, kept, swapped = [10.0, 10.0, 50.0, 50.0], [100.0, 100.0, 140.0, 150.0], [200.0, 20.0, 260.0, 90.0]
    reference = Detections(np.array([first, kept]), np.array([0.9, 0.3]), np.array([3, 3]))
    candidates = Detections(np.array([first, kept, swapped]) / scale, np.array([0.9, 0.3, 0.3 - 1e-7]),
                            np.array([3, 3, 3]))

    def judged(box):
        run = Detections(np.array([first, box]), np.array([0.9, 0.3 - 1e-7]), np.array([3, 3]))
        return compare_detections("run", [run], ORACLE, [reference], floor, rules, [candidates], AUTO_FACTOR,
                                  [(scale, scale)])

    pair = judged(swapped)
    assert pair.passed and {b.reason for b in pair.borderline} == {"detections cap"}, pair.verdict()
    made_up = judged([200.0, 60.0, 260.0, 130.0])
    assert not made_up.passed and "no float64 candidate" in made_up.unexplained[0].reason


def test_a_matrix_shard_whose_run_moved_its_lowest_kept_box_does_not_merge(detector_export):
    """The matrix case of the test above: a shard whose ONNX Runtime detections had their lowest kept box moved 40 px
    merged as `agree` (two `detections cap` borderlines); `verify matrix merge` now asks the float64 candidates too."""
    import copy

    from verify.judge.compare import Tolerance
    from verify.matrix.detector_cell import detector_numbers
    from verify.matrix.detector_judging import judge_detector_cell
    from verify.matrix.result import AGREE, DISAGREE, CellResult

    def judged(numbers):
        cell = CellResult("c1", NAME, "frozen", "detector", AGREE, detector=copy.deepcopy(numbers), problems=[])
        return judge_detector_cell(cell, Tolerance(), ("torchscript", "onnx"), 1)

    numbers = detector_numbers(detector_export[0])
    assert judged(numbers).verdict == AGREE
    found = numbers["runs"][RUNTIMES["onnx"]][0]
    lowest = int(np.argmin(found["scores"]))
    x1, y1, x2, y2 = found["boxes"][lowest]
    shift = -40.0 if x1 >= 40.0 else 40.0
    found["boxes"][lowest] = [x1 + shift, y1, x2 + shift, y2]
    result = judged(numbers)
    assert result.verdict == DISAGREE and any("no float64 candidate" in p for p in result.problems), result.problems
