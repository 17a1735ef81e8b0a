"""Hunt 22a: the whole detector, what hunts 20a and 21a left.
A TorchScript RetinaNet or SSDlite decodes its boxes inside its forward (`postprocess_detections`, NMS included), so its
decoding was judged after NMS only: a file whose box coder clamp was lowered so that only candidates the NMS suppresses
moved exited 0 (`verify export`'s judgement and `verify artifact --trust-unsigned-code` alike). Its final-NMS inputs now
come from the file's own compiled post-processing with its NMS made to suppress nothing (verify/detect/check.py
`_script_nms_inputs`) and are judged as ONNX's are (verify/detect/nms_inputs.py)."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from exporter.errors import ExportError
from exporter.families.detectors import ANCHOR_MODULES, build_detector, calibration_image
from tests.helpers import NAME, scripted_box_clip
from verify.detect.eager_runs import concat_dense, run_eager
from verify.detect.export import export_detector
from verify.detect.match import Detections
from verify.detect.nms_inputs import (
    BOX_REGRESSION,
    BOXES,
    CLASS_LOGITS,
    SMALL_BOX,
    BoxCoding,
    LoneProposals,
    NmsBands,
    lone_proposal_probabilities,
    near_small_box,
    unexplained,
)
from verify.detect.report import DetectorReport, Judging
from verify.detect.scripted_runs import _script_image_list, _script_nms_inputs, load_scripted
from verify.detect.verdict import EAGER, ORACLE, RUNTIMES, _judge, judge_runs
from verify.judge.compare import AUTO_FACTOR, Tolerance

SSD = "ssdlite320_mobilenet_v3_large"
SCRIPT = RUNTIMES["torchscript"]
TOPK = 20
"""Candidates per class (torchvision's SSDlite keeps 300, the suite's build 100): each judgement pairs them all."""


@pytest.fixture(scope="module")
def ssd(module_tmp):
    """SSDlite (synthetic weights) scripted, and its eager float32 and float64 runs of one 320x320 image:
    (built, image, eager, oracle, file)."""
    built = build_detector(SSD)
    built.model.topk_candidates = TOPK  # fewer candidates to pair, decoded as before
    image = calibration_image(0)
    path = module_tmp("ssd22a") / "detector.torchscript.pt"
    export_detector(built, image, ["torchscript"], path.parent)
    return (built, image, run_eager(built, [image], float64=False), run_eager(built, [image], float64=True),
            path)


def _judged(ssd, path) -> DetectorReport:
    built, image, eager, oracle, _ = ssd
    judged = DetectorReport(SSD, built.norm, built.weights, (1, *image.shape), ("torchscript",), AUTO_FACTOR,
                            images=[image.numpy()])
    judge_runs(judged, Judging.of(built), [image], eager, oracle, {"torchscript": path}, Tolerance())
    return judged


def _clamp_bound(ssd) -> float:
    """A dw/dh clamp bound above every float64 candidate the final NMS keeps and below the widest one it suppresses:
    lowered to it, only suppressed candidates move. From the oracle's own head outputs and anchors, decoded as SSD's
    box coder does."""
    from torchvision.models.detection._utils import BoxCoder
    from torchvision.ops import boxes as box_ops

    built, image, _, oracle, _ = ssd
    rows = oracle.per_image[0]
    levels = sorted(name for name in rows if name.startswith("head.regression_head.module_list."))
    regression = torch.cat([torch.as_tensor(rows[name]).view(1, -1, 4, *rows[name].shape[-2:]).permute(0, 3, 4, 1, 2)
                            .reshape(-1, 4) for name in levels])  # as SSDRegressionHead concatenates its levels
    anchors = torch.as_tensor(rows[f"{ANCHOR_MODULES['ssd']}#0"])
    weights = built.model.box_coder.weights
    decoded = box_ops.clip_boxes_to_image(BoxCoder(weights).decode_single(regression, anchors),
                                          tuple(image.shape[-2:])).numpy()
    side = torch.maximum(regression[:, 2] / weights[2], regression[:, 3] / weights[3]).numpy()
    found, kept = oracle.candidates[0], oracle.detections[0]
    owner = np.array([np.abs(decoded - box).max(axis=1).argmin() for box in found.boxes])  # each candidate's anchor
    np.testing.assert_allclose(decoded[owner], found.boxes, rtol=0, atol=1e-9)  # one anchor's decoded box each
    was_kept = np.array([((kept.labels == label) & (np.abs(kept.boxes - box).max(axis=1) == 0)).any()
                         for label, box in zip(found.labels, found.boxes, strict=True)])
    assert side[owner].max() > side[owner][was_kept].max(), "a suppressed candidate is wider than every kept one"
    return float(side[owner][was_kept].max() + side[owner].max()) / 2


# TorchScript RetinaNet and SSDlite: their final-NMS inputs from the file's own post-processing ------------------------

def test_a_torchscript_ssdlite_clamp_that_moves_only_suppressed_candidates_fails(ssd, tmp_path):
    seeded = scripted_box_clip(ssd[-1], _clamp_bound(ssd), tmp_path / "seeded.torchscript.pt")
    judged = _judged(ssd, seeded)
    assert judged.detections and all(p.passed for p in judged.detections), \
        "after NMS cannot see it: every kept detection is decoded as before"
    assert judged.exit_code == 1
    assert len(judged.problems) == 2, judged.problems  # its own pieces vs eager fp64 and vs eager
    assert all(p.startswith(f"{SCRIPT}'s own pieces before NMS") and BOXES in p and "\n" not in p
               for p in judged.problems), judged.problems


def test_a_correct_torchscript_ssdlite_passes_with_its_candidates_judged(ssd):
    judged = _judged(ssd, ssd[-1])
    assert judged.passed, judged.summary()
    assert not judged.problems


def _rows(found):
    table = np.column_stack([found.boxes, found.scores, found.labels])
    return table[np.lexsort(table.T[::-1])]


def test_the_files_own_post_processing_gives_every_candidate_and_must_compose_to_its_forward(ssd):
    _, image, _, _, path = ssd
    _script_image_list()
    model = load_scripted(path)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a scripted detector warns that it returns (losses, detections)
        _, out = model([image])
        thresh, cap = model.nms_thresh, model.detections_per_img
        found = _script_nms_inputs(model, image, out[0])
        reference = ssd[2].candidates[0]
        assert len(found) == len(reference) > len(out[0]["scores"]), "every candidate, the suppressed ones too"
        np.testing.assert_array_equal(_rows(found), _rows(reference))  # on the CPU the file computes as eager does
        assert (model.nms_thresh, model.detections_per_img) == (thresh, cap), "the file's own attributes restored"
        off = {**out[0], "scores": out[0]["scores"].clone()}
        off["scores"][-1] = torch.nextafter(off["scores"][-1], torch.tensor(2.0))
        with pytest.raises(ExportError, match="post-processing computes something else") as caught:
            _script_nms_inputs(model, image, off)
        assert (model.nms_thresh, model.detections_per_img) == (thresh, cap)
    assert "\n" not in str(caught.value)


# Faster R-CNN: a candidate of a proposal in one run only has its box asked too ----------------------------------------

def _without_proposal(run, k):
    """`run` (one image) without proposal `k`: its box-head rows and the final-NMS inputs decoded from it (the
    candidates whose score is one of its class probabilities) gone; the detections as they were."""
    rows = run.per_image[0]
    probabilities, = lone_proposal_probabilities([rows], [[k]])
    found = run.candidates[0]
    mine = np.abs(probabilities[0][found.labels] - found.scores) <= 1e-6
    per_image = [{name: np.delete(value, k, axis=0) if name in (CLASS_LOGITS, BOX_REGRESSION) else value
                  for name, value in rows.items()}]
    keep = np.flatnonzero(~mine)
    without = replace(run, per_image=per_image, dense=concat_dense(per_image, [torch.zeros(3, 320, 320)]),
                      proposals=[np.delete(run.proposals[0], k, axis=0)],
                      candidates=[Detections(found.boxes[keep], found.scores[keep], found.labels[keep])])
    return without, np.flatnonzero(mine)


def _lone_proposal_run(report, shift: float):
    """A run that kept one proposal the references did not (its float64 RPN score made the RPN's score threshold: an
    `RPN score threshold` borderline), with one of that proposal's candidates moved by `shift` px; judged against the
    references without it."""
    eager, oracle = report.references[EAGER], report.references[ORACLE]
    kept = oracle.detections[0]
    rows = eager.per_image[0]
    probabilities, = lone_proposal_probabilities([rows], [list(range(len(rows[CLASS_LOGITS])))])
    found = eager.candidates[0]
    owner = np.abs(probabilities[:, found.labels] - found.scores[None, :]).argmin(axis=0)
    kept_owners = {int(owner[j]) for j in range(len(found))
                   if ((kept.labels == found.labels[j]) & (np.abs(kept.scores - found.scores[j]) < 1e-5)).any()}
    k = max(set(owner.tolist()) - kept_owners)  # a proposal with candidates, none of them kept by the final NMS
    references = [_without_proposal(run, k)[0] for run in (eager, oracle)]
    references[1] = replace(references[1], rpn_candidates=oracle.rpn_candidates,
                            below_threshold=oracle.below_threshold)
    _, moved = _without_proposal(eager, k)
    boxes = found.boxes.copy()
    boxes[moved[0]] += np.array([shift, 0.0, shift, 0.0])
    run = replace(eager, candidates=[Detections(boxes, found.scores, found.labels)])
    rpn = oracle.rpn_candidates[0]
    threshold = float(rpn.scores[np.abs(rpn.boxes - oracle.proposals[0][k]).max(axis=1).argmin()])
    judging = replace(report.judging, rpn=replace(report.judging.rpn, score_thresh=threshold))
    judged = DetectorReport(NAME, report.norm, report.weights, report.shape, ("onnx",), AUTO_FACTOR,
                            images=report.images)
    _judge(judged, judging, references[0], references[1], {RUNTIMES["onnx"]: run}, Tolerance())
    return judged


def test_a_candidate_of_a_proposal_in_one_run_only_must_be_its_decoded_box(detector_export):
    report = detector_export[0]
    judged = _lone_proposal_run(report, 0.0)
    assert judged.passed, (judged.summary(), judged.problems)
    assert any(check.borderline for check in judged.proposals), "the run's proposal is an RPN borderline"
    judged = _lone_proposal_run(report, 5.0)
    assert all(p.passed for p in judged.detections), "after NMS cannot see it: the final NMS suppresses it"
    assert judged.exit_code == 1
    assert any("final-NMS input(s) in one run only" in p for p in judged.problems), judged.problems


def test_a_folder_whose_suppressed_float64_candidate_was_moved_is_refused_in_one_line(detector_export, tmp_path):
    """The box coder a folder's lone-proposal candidates are decoded with is torchvision's own, re-checked on its
    goldens: the float64 proposals' rows decoded give exactly the float64 final-NMS inputs."""
    from tests.helpers import edit_goldens, linked_copy, strip_signature
    from verify.detect.folder import detector_integrity
    from verify.folder.checks import CheckReport

    report, signed, _, _ = detector_export
    folder = strip_signature(linked_copy(signed, tmp_path))
    sound = CheckReport("artifact")
    assert detector_integrity(folder, sound).sound, [(c.name, c.message) for c in sound.checks if not c.passed]
    assert any("box coder's decoding" in c.message for c in sound.checks)
    oracle = report.references[ORACLE]
    kept = oracle.detections[0]
    found = oracle.candidates[0]
    suppressed = next(j for j in range(len(found)) if not ((kept.labels == found.labels[j])
                                                           & (kept.scores == found.scores[j])).any())

    def move(arrays):  # in the float64 inputs under the lower score threshold too: they must hold them
        below = arrays["float64.0.below_threshold.boxes"]
        twin = np.flatnonzero((np.abs(below - found.boxes[suppressed]).max(axis=1) == 0)
                              & (arrays["float64.0.below_threshold.scores"] == found.scores[suppressed]))
        for boxes, row in ((arrays["float64.0.candidates.boxes"], suppressed), (below, int(twin[0]))):
            boxes[row] += np.array([1.0, 0.0, 1.0, 0.0])

    edit_goldens(folder, move)
    edited = CheckReport("artifact")
    assert not detector_integrity(folder, edited).sound
    failed = [c for c in edited.checks if not c.passed]
    assert any("box coder" in c.message and "\n" not in c.message for c in failed), [(c.name, c.message)
                                                                                    for c in failed]


def test_a_files_own_pieces_failing_is_that_files_check_in_a_folders_report():
    """`verify artifact` listed a TorchScript file's own pieces failing before NMS as `check · trust guards`."""
    from verify.detect.folder import _row_check
    from verify.detect.report import DetectorRow

    text = f"{SCRIPT}'s own pieces before NMS: {SCRIPT} vs {ORACLE}: {BOXES} differs at float32 precision (1245.1x)"
    found = _row_check("ssd", DetectorRow("check", "", "", False, "failed", text))
    assert (found.runtime, found.name, found.passed, found.message) == (SCRIPT, "before NMS: its own pieces", False,
                                                                        text)
    guard = _row_check("ssd", DetectorRow("check", "", "", False, "failed", "eager changed its input"))
    assert (guard.runtime, guard.name) == ("check", "trust guards")


# Faster R-CNN: a candidate at the small-box limit (remove_small_boxes) ------------------------------------------------

BANDS = NmsBands(boxes=1e-4, scores=1e-6)
THRESH = 0.05


def _head_rows(count: int = 2):
    """Box-head rows of two proposals, three classes (background, 1, 2): class 1 likely, no regression (each decoded
    box is its proposal)."""
    logits = np.tile(np.array([0.0, 3.0, -3.0]), (count, 1))
    return {CLASS_LOGITS: logits, BOX_REGRESSION: np.zeros((count, 12))}


PROPOSALS = np.array([[100.0, 100.0, 100.0 + SMALL_BOX + 1e-5, 150.0], [10.0, 10.0, 60.0, 60.0]])
"""The first proposal's width is the small-box limit plus far less than a box band."""


def test_a_candidate_at_the_small_box_limit_is_a_named_borderline_of_its_own_decoding():
    coding = BoxCoding.rcnn_default()
    small = near_small_box(_head_rows(), PROPOSALS, coding, (320, 320), THRESH, BANDS)
    assert len(small) == 1 and small.labels.tolist() == [1]
    np.testing.assert_allclose(small.boxes[0], PROPOSALS[0], rtol=0, atol=1e-9)
    candidate = Detections(small.boxes.copy(), small.scores.copy(), small.labels.copy())
    empty = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    at_limit = LoneProposals([], [], run_small=[small], ref_small=[small])
    assert unexplained([([0], [])], [candidate], [empty], THRESH, None, BANDS, at_limit) == []
    assert unexplained([([], [0])], [empty], [candidate], THRESH, None, BANDS, at_limit) == []
    problems = unexplained([([0], [])], [candidate], [empty], THRESH, None, BANDS, LoneProposals([], []))
    assert len(problems) == 1 and "small-box limit" in problems[0] and "\n" not in problems[0]
    moved = Detections(candidate.boxes + np.array([1.0, 0.0, 1.0, 0.0]), candidate.scores, candidate.labels)
    assert len(unexplained([([0], [])], [moved], [empty], THRESH, None, BANDS, at_limit)) == 1
    wide = PROPOSALS.copy()
    wide[0, 2] += 2 * 2 * BANDS.boxes  # a side further than rounding from the limit: never near it
    assert not len(near_small_box(_head_rows(), wide, coding, (320, 320), THRESH, BANDS))


def test_an_image_without_proposals_decodes_no_candidate():
    """An image the RPN keeps no proposal for (the one pytorch/vision#4623's Reshape fails on) has no box to decode:
    reshaping its empty rows was a RuntimeError before any verdict."""
    coding = BoxCoding.rcnn_default()
    rows = {CLASS_LOGITS: np.zeros((0, 3)), BOX_REGRESSION: np.zeros((0, 12))}
    assert coding.decode(rows[BOX_REGRESSION], np.zeros((0, 4)), (64, 320)).shape == (0, 3, 4)
    assert not len(near_small_box(rows, np.zeros((0, 4)), coding, (64, 320), THRESH, BANDS))
