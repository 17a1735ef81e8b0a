"""Hunt 19d: a `score threshold` borderline asked for its float64 candidate on every path that judges a detector.
Hunt 19a recorded the final NMS's float64 inputs under a lower score threshold (`Run.below_threshold`) for `verify
export`; a detector folder's goldens and a matrix cell's stored numbers did not keep them, so there a detection in one
run only at the threshold passed whatever its box (one moved 40 px passed). They are now stored (goldens.npz
`float64.<i>.below_threshold.*`, a cell's `below_threshold`), re-checked like the other NMS inputs (finite, in the
image, every score above the lower threshold, exactly the recorded candidates above the model's own; re-derived by
`--rebuild`) and asked; a folder or a cell without them is refused (export again / rerun the cell), never judged
without them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from exporter.manifest import GOLDENS_NAME
from tests.helpers import edit_goldens, linked_copy, strip_signature
from verify.detect.export import FILE_NAMES
from verify.detect.folder import detector_integrity
from verify.detect.goldens import BELOW
from verify.detect.match import Detections
from verify.detect.report import DetectorReport, Run
from verify.detect.runners import _RUNNERS
from verify.detect.verdict import EAGER, ORACLE, RUNTIMES, judge_runs
from verify.folder.checks import CheckReport
from verify.judge.compare import AUTO_FACTOR, Tolerance
from verify.matrix.detector_cell import detector_numbers
from verify.matrix.detector_judging import judge_detector_cell, registered_rules
from verify.matrix.result import AGREE, DISAGREE, CellResult

CONTENT = f"{GOLDENS_NAME}: content"
SHIFT = 40.0
"""Pixels the borderline detection is moved: far past any rounding band."""


@pytest.fixture(scope="module")
def exported(detector_export, tmp_path_factory):
    """The suite's detector export (tests/conftest.py) as published unsigned, in a folder of its own: read only."""
    _, signed, result, _ = detector_export
    assert result.exit_code == 0, result.output
    return strip_signature(linked_copy(signed, tmp_path_factory.mktemp("unsigned19d")))


@pytest.fixture
def folder(exported, tmp_path):
    return linked_copy(exported, tmp_path)


def integrity(folder):
    report = CheckReport("artifact")
    art = detector_integrity(folder, report)
    return art, {c.name: c for c in report.checks}


def _below_keys(arrays) -> list[str]:
    return sorted(k for k in arrays if k.startswith(f"float64.0.{BELOW}."))


# A detector folder ------------------------------------------------------------------------------------------------

def test_a_folders_goldens_hold_the_below_threshold_inputs_and_its_judgement_asks_them(detector_export, folder):
    report = detector_export[0]
    art, found = integrity(folder)
    assert art.sound and found["postprocess"].passed, found["postprocess"].message
    stored, exported = art.references[ORACLE].below_threshold, report.references[ORACLE].below_threshold
    assert len(stored) == len(exported) == 1
    for key in ("boxes", "scores", "labels"):
        assert np.array_equal(getattr(stored[0], key), getattr(exported[0], key))
    assert float(stored[0].scores.min()) < art.judging.rules.score_thresh  # more than the candidates


def _borderline_case(art):
    """The folder's goldens as the export would have judged them with the score threshold raised to the float64 score
    of a detection whose float32 twin rounds above it: float64 drops it, float32 keeps it (a `score threshold`
    borderline of a runtime that returns float32's detections). Filtered from the goldens, nothing run."""
    eager, oracle = art.references[EAGER], art.references[ORACLE]
    ref, run = oracle.detections[0], eager.detections[0]
    twins = [int(np.argmin(np.abs(run.boxes - box).max(axis=1))) for box in ref.boxes]
    kept = [j for j, i in enumerate(twins) if np.float32(run.scores[i]) > np.float32(ref.scores[j])
            and ref.labels[j] == run.labels[i]]
    assert kept, "no detection whose float32 score rounds above its float64 one"
    threshold = float(ref.scores[kept[len(kept) // 2]])

    def above(found: Detections) -> Detections:
        return found.take(np.flatnonzero(found.scores > threshold))

    judging = replace(art.judging, rules=replace(art.judging.rules, score_thresh=threshold))
    low = Run([above(run)], eager.dense, per_image=eager.per_image, proposals=eager.proposals, samples=eager.samples)
    high = Run([above(ref)], oracle.dense, [above(oracle.candidates[0])], oracle.per_image, oracle.proposals,
               oracle.rpn_candidates, below_threshold=oracle.below_threshold)
    return judging, low, high, threshold


def _judged(art, judging, eager, oracle, detections, files, monkeypatch):
    """judge_runs on the folder's images with an ONNX run that returns `detections` (its dense tensors eager's)."""
    monkeypatch.setitem(_RUNNERS, "onnx", lambda path, images, dense, device: Run(
        detections * (len(images) // len(detections)), eager.dense, per_image=eager.per_image * 2,
        proposals=eager.proposals * 2))
    manifest = art.manifest
    judged = DetectorReport(manifest.detector.name, manifest.detector.norm, manifest.detector.weights,
                            (len(art.images), *art.images[0].shape), ("onnx",), AUTO_FACTOR,
                            images=[i.numpy() for i in art.images])
    judge_runs(judged, judging, art.images, eager, oracle, files, Tolerance())
    return next(p for p in judged.detections if p.a == RUNTIMES["onnx"] and p.b == ORACLE)


def test_a_folders_score_threshold_borderline_moved_40_px_fails(folder, monkeypatch):
    """Judged against the folder's goldens (verify/detect/folder.py `golden_judgement` hands them to judge_runs): a
    runtime whose borderline detection sits where the float64 model had it passes; moved 40 px, it fails. Before,
    the goldens held no below-threshold inputs and the moved one passed."""
    art, _ = integrity(folder)
    judging, eager, oracle, threshold = _borderline_case(art)
    files = {"onnx": folder / FILE_NAMES["onnx"]}
    found = eager.detections[0]
    lone = int(np.argmin(np.abs(found.scores - threshold)))

    same = _judged(art, judging, eager, oracle, [found], files, monkeypatch)
    assert same.passed and "score threshold" in [b.reason for b in same.borderline], same.verdict()
    boxes = found.boxes.copy()
    boxes[lone] += np.array([SHIFT, 0.0, SHIFT, 0.0])
    moved = _judged(art, judging, eager, oracle, [Detections(boxes, found.scores, found.labels)], files, monkeypatch)
    assert not moved.passed and len(moved.unexplained) == 1, moved.verdict()
    why = moved.unexplained[0].reason
    assert why.startswith("score threshold would explain it") and "lower score threshold" in why and "\n" not in why


def test_a_reference_without_below_threshold_inputs_is_never_judged_silently(folder, monkeypatch):
    """judge_runs (the export's and a folder's judgement) with a float64 reference that holds none fails in one
    line: a `score threshold` borderline would be accepted whatever its box."""
    art, _ = integrity(folder)
    eager, oracle = art.references[EAGER], art.references[ORACLE]
    judged = DetectorReport("x", "frozen", "synthetic", (1, *art.images[0].shape), (), AUTO_FACTOR,
                            images=[i.numpy() for i in art.images])
    judge_runs(judged, art.judging, art.images, eager, replace(oracle, below_threshold=[]), {}, Tolerance())
    assert judged.exit_code == 1
    problem, = [p for p in judged.problems if "below the score threshold" in p]
    assert "export it again" in problem and "\n" not in problem


def test_a_folder_written_without_them_is_refused_in_one_line(folder):
    edit_goldens(folder, lambda arrays: [arrays.pop(k) for k in _below_keys(arrays)])
    art, found = integrity(folder)
    assert not art.sound and not found[CONTENT].passed
    message = found[CONTENT].message
    assert BELOW in message and "export it again" in message and "\n" not in message


def _drop_one_above(arrays):
    """One input above the score threshold (a candidate) left out of the below-threshold recording."""
    keep = np.flatnonzero(arrays[f"float64.0.{BELOW}.scores"] != arrays["float64.0.candidates.scores"][0])
    for key in _below_keys(arrays):
        arrays[key] = arrays[key][keep]


def _under_the_lower_threshold(arrays):
    scores = arrays[f"float64.0.{BELOW}.scores"]
    scores[int(np.argmin(scores))] = 0.5 * scores.min()


def _not_finite(arrays):
    arrays[f"float64.0.{BELOW}.boxes"][0, 0] = np.nan


@pytest.mark.parametrize("tamper, check_name, named", [
    (_drop_one_above, "postprocess", "not exactly the"),
    (_under_the_lower_threshold, "postprocess", "of the score threshold"),
    (_not_finite, CONTENT, "NaN/Inf"),
])
def test_edited_below_threshold_inputs_fail_their_check(folder, tamper, check_name, named):
    """Goldens rehashed: only the content and postprocess checks can tell, and nothing is run."""
    edit_goldens(folder, tamper)
    art, found = integrity(folder)
    message = found[check_name].message
    assert not art.sound and not found[check_name].passed, message
    assert named in message and (BELOW in message or "lower score threshold" in message) and "\n" not in message


def test_rebuild_rederives_them(folder):
    """A float64 input added to the recording under the threshold, where the moved borderline would sit: consistent
    with every other golden (integrity passes), refused by `--rebuild` (verify/detect/rebuild.py)."""
    from exporter.errors import ArtifactError
    from verify.detect.rebuild import rebuild_detector

    def add(arrays):
        at = float(arrays["float64.0.candidates.scores"].min())
        box = np.array([100.0, 100.0, 100.0 + SHIFT, 100.0 + SHIFT])
        for key, value in (("boxes", box[None]), ("scores", np.array([0.99 * min(at, 0.05)])),
                           ("labels", arrays[f"float64.0.{BELOW}.labels"][:1])):
            arrays[f"float64.0.{BELOW}.{key}"] = np.concatenate([arrays[f"float64.0.{BELOW}.{key}"], value])
    edit_goldens(folder, add)
    art, found = integrity(folder)
    assert art.sound, [c.message for c in found.values() if not c.passed]
    with pytest.raises(ArtifactError, match=f"float64.0.{BELOW}"):
        rebuild_detector(art, None)


# A matrix cell ----------------------------------------------------------------------------------------------------

def _cell(data: dict) -> CellResult:
    return CellResult("c", data["detector"], data["norm"], "detector", AGREE, detector=data)


def test_a_cell_stores_them_and_its_numbers_are_judged_with_them(detector_export):
    report = detector_export[0]
    data = detector_numbers(report)
    below = report.references[ORACLE].below_threshold[0]
    assert len(data[BELOW]) == 1 and data[BELOW][0]["scores"] == below.scores.tolist()
    judged = judge_detector_cell(_cell(data), Tolerance(), report.formats, 1)
    assert judged.verdict == AGREE, judged.problems
    old = {k: v for k, v in data.items() if k != BELOW}  # a cell stored before them
    refused = judge_detector_cell(_cell(old), Tolerance(), report.formats, 1)
    assert refused.verdict == DISAGREE, refused.problems
    assert any("below the score threshold" in p and "rerun the cell" in p for p in refused.problems), refused.problems
    edited = {**data, BELOW: [{**data[BELOW][0], "scores": data[BELOW][0]["scores"][1:],
                               "boxes": data[BELOW][0]["boxes"][1:], "labels": data[BELOW][0]["labels"][1:]}]}
    failed = judge_detector_cell(_cell(edited), Tolerance(), report.formats, 1)
    assert failed.verdict == DISAGREE and any("lower score threshold" in p for p in failed.problems), failed.problems


SSD = "ssdlite320_mobilenet_v3_large"


def _ssd_cell(shift: float, below: bool = True) -> CellResult:
    """A stored SSDlite cell (no RPN, eager and its oracle only), its numbers consistent: eager keeps one detection at
    the score threshold that float64 recorded just under it (`shift` px off that box)."""
    rules = registered_rules(SSD)
    a, b = ([10.0, 10.0, 50.0, 50.0], 0.9, 1), ([100.0, 100.0, 160.0, 160.0], 0.8, 2)
    near = ([200.0, 200.0, 240.0, 250.0], rules.score_thresh, 3)

    def of(*found, dscore=0.0, dx=0.0):
        return {"boxes": [[v + (dx if i in (0, 2) else 0.0) for i, v in enumerate(box)] for box, _, _ in found],
                "scores": [score + dscore for _, score, _ in found], "labels": [label for _, _, label in found]}

    kept = of(a, b)
    eager = {k: kept[k] + of(near, dscore=1e-7, dx=shift)[k] for k in kept}
    data = {"detector": SSD, "norm": "batch", "weights": "synthetic", "shape": [1, 3, 320, 320], "formats": [],
            "rules": {"score_thresh": rules.score_thresh, "nms_thresh": rules.nms_thresh,
                      "detections_per_img": rules.detections_per_img},
            "runs": {EAGER: [eager], ORACLE: [kept]}, "candidates": [kept], "before_nms": [], "proposals": [],
            "after_nms": [], "refusals": {}}
    if below:
        data[BELOW] = [{k: kept[k] + of(near, dscore=-1e-7)[k] for k in kept}]
    # a real cell stores the after-NMS pairs its export judged, which are those its numbers give (stop 44's merge
    # binding holds the stored pairs to them): recomputed here as the export would have stored them
    from verify.detect.goldens import CLASSES
    from verify.matrix.detector_judging import _after_nms

    if below:  # a cell stored before the lower threshold's inputs were recorded stores none to recompute from
        after, _, _ = _after_nms(data, Tolerance().factor, [], 1, SSD, CLASSES)
        data["after_nms"] = [pair.to_dict() for pair in after]
    return CellResult("c", SSD, "batch", "detector", AGREE, detector=data)


def test_a_cells_score_threshold_borderline_moved_40_px_fails():
    same = judge_detector_cell(_ssd_cell(0.0), Tolerance(), (), 1)
    assert same.verdict == AGREE, same.problems
    pair, = same.detector["after_nms"]
    assert [b["reason"] for b in pair["borderline"]] == ["score threshold"], pair
    moved = judge_detector_cell(_ssd_cell(SHIFT), Tolerance(), (), 1)
    assert moved.verdict == DISAGREE, moved.problems
    assert any("score threshold would explain it" in p and "lower score threshold" in p for p in moved.problems)
    old = judge_detector_cell(_ssd_cell(SHIFT, below=False), Tolerance(), (), 1)
    assert old.verdict == DISAGREE and any("rerun the cell" in p for p in old.problems), old.problems
