"""Hunt 21a: Faster R-CNN's box decoding judged before NMS.
Its final-NMS inputs (each proposal's decoded box per class, its score) were recorded but not judged: the decoding (box
coder weights, the clamp, clip to image) was judged after NMS only, so a decoding bug that moved only candidates the
NMS suppresses exited 0 (an ONNX file whose dw clamp bound was lowered from log(1000/16) to just above the largest dw
of a kept detection). Each ONNX run's final-NMS inputs are now paired with eager's and the float64 oracle's and judged
on their own floor, as RetinaNet's and SSDlite's since hunt 20a; a candidate in one run only passes as a `score
threshold` borderline or, carried through from the RPN, as a candidate of a proposal in one run only that the RPN's
rounding explains (never as a `top-k cut`: Faster R-CNN keeps every candidate above the threshold)."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from exporter.manifest import MANIFEST_NAME
from tests.helpers import NAME, scripted_box_clip
from verify.detect.eager_runs import concat_dense
from verify.detect.match import Detections
from verify.detect.nms_inputs import (
    BOXES,
    CLASS_LOGITS,
    SCORES,
    LoneProposals,
    NmsBands,
    lone_proposal_probabilities,
    unexplained,
)
from verify.detect.report import DetectorReport
from verify.detect.verdict import EAGER, ORACLE, RUNTIMES, judge_runs
from verify.judge.compare import AUTO_FACTOR, Tolerance

ONNX = RUNTIMES["onnx"]
CLAMP = float(np.log(1000.0 / 16))
"""torchvision's BoxCoder clamp of dw and dh before exp (bbox_xform_clip)."""
BOX_REGRESSION = "roi_heads.box_predictor.bbox_pred#0"
DW_WEIGHT = 5.0
"""RoIHeads' box coder weight of dw and dh (10, 10, 5, 5): dw = regression / 5."""
SCRIPT = RUNTIMES["torchscript"]


def _candidate_dw(report, column: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Per float64 final-NMS input of image 0: its decoded dw (`column` 3: dh) before the clamp, and whether the NMS
    kept it. A
    candidate is the proposal whose class probability is its score; the kept ones are those with a detection's class
    and score (a suppressed twin of a kept one, same score, counts as kept: the clamp then stays above it)."""
    oracle = report.references[ORACLE]
    found, kept = oracle.candidates[0], oracle.detections[0]
    rows = oracle.per_image[0]
    probabilities, = lone_proposal_probabilities([rows], [list(range(len(rows[CLASS_LOGITS])))])
    regression = rows[BOX_REGRESSION].reshape(len(probabilities), -1, 4)
    proposal = np.abs(probabilities[:, found.labels] - found.scores[None, :]).argmin(axis=0)
    dw = regression[proposal, found.labels, column] / DW_WEIGHT
    was_kept = np.array([bool(((kept.labels == label) & (kept.scores == score)).any())
                         for label, score in zip(found.labels, found.scores, strict=True)])
    return dw, was_kept


def _clamp_lowered(path, bound, out):
    """The ONNX file with its dw clamp bound (the first of the box head's two Clips at log(1000/16)) set to `bound`."""
    model = onnx.load(str(path))
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    clips = [n for n in model.graph.node if n.op_type == "Clip" and n.name.startswith("/roi_heads/")
             and len(n.input) == 3 and n.input[2] in constants
             and np.isclose(numpy_helper.to_array(constants[n.input[2]].attribute[0].t), CLAMP)]
    assert len(clips) == 2, "the box coder clamps dw and dh"
    tensor = constants[clips[0].input[2]].attribute[0].t
    tensor.CopyFrom(numpy_helper.from_array(np.array(bound, np.float32), tensor.name))
    onnx.save(model, str(out))
    return out


def _judged(report, files):
    judged = DetectorReport(NAME, report.norm, report.weights, report.shape, tuple(files), AUTO_FACTOR,
                            images=report.images)  # against the suite's own eager runs of its image
    judge_runs(judged, report.judging, [torch.as_tensor(image) for image in report.images], report.references[EAGER],
               report.references[ORACLE], files, Tolerance())
    return judged


def test_a_correct_faster_rcnn_export_judges_its_decoded_candidates(detector_export):
    report, folder, _, _ = detector_export
    assert report.passed, report.summary()
    oracle = report.references[ORACLE]
    assert len(oracle.candidates[0]) > len(oracle.detections[0]), "the NMS suppresses some candidates"
    assert [(p.a, p.b) for p in report.dense] == [(ONNX, ORACLE), (ONNX, EAGER)]
    for pair in report.dense:
        judged = {o.name: o for o in pair.outputs if o.name.partition("@")[0] in (BOXES, SCORES)}
        assert {n.partition("@")[0] for n in judged} == {BOXES, SCORES}, [(o.name, o.passed) for o in pair.outputs]
        assert all(o.passed for o in judged.values()), [(o.name, o.passed) for o in pair.outputs]
    noise = json.loads((folder / MANIFEST_NAME).read_text())["noise_floor"]
    assert BOXES in noise and SCORES in noise, "a folder re-derives and checks the candidates' floors"


def test_a_lowered_decoding_clamp_that_moves_only_suppressed_candidates_fails(detector_export, tmp_path):
    report, folder, _, _ = detector_export
    dw, kept = _candidate_dw(report)
    assert kept.sum() >= len(report.references[ORACLE].detections[0])  # a suppressed twin of a kept one counts
    assert dw.max() > dw[kept].max(), "some suppressed candidate is wider than every kept one"
    bound = float(dw[kept].max() + dw.max()) / 2  # only candidates the NMS suppresses reach it
    seeded = _clamp_lowered(folder / "detector.onnx", bound, tmp_path / "seeded.onnx")
    judged = _judged(report, {"onnx": seeded})
    assert judged.detections and all(p.passed for p in judged.detections), \
        "after NMS cannot see it: every kept detection is decoded as before"
    assert judged.exit_code == 1
    for pair in judged.dense:
        assert not pair.passed and pair.worst.where.partition("@")[0].startswith(BOXES), \
            [(o.name, o.passed) for o in pair.outputs]


# A candidate in one run only: a `score threshold` borderline, or one of a proposal in one run only ------------------

BANDS = NmsBands(boxes=1e-3, scores=1e-6)
THRESH = 0.05


def _found(rows):
    boxes = np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 4)
    return Detections(boxes, np.array([r[1] for r in rows], dtype=np.float64), np.array([r[2] for r in rows]))


REFERENCE = _found([([0, 0, 10, 10], 0.9, 1), ([20, 20, 40, 40], 0.5, 1), ([50, 50, 90, 90], 0.3, 1)])
LONE = _found([*[(b.tolist(), s, int(c)) for b, s, c in zip(REFERENCE.boxes, REFERENCE.scores, REFERENCE.labels,
                                                                 strict=True)],
               ([100, 100, 140, 140], 0.4, 2)])
"""The reference's candidates and one more, of class 2 at 0.4: a candidate of a proposal the run alone kept."""


def _probabilities(p2):
    """One proposal's class probabilities (background, class 1, class 2): `p2` for class 2."""
    return np.array([[1 - p2 - 0.1, 0.1, p2]])


def test_a_candidate_of_a_proposal_in_one_run_only_is_carried_through_from_the_rpn():
    carried = LoneProposals([_probabilities(0.4 + 1e-7)], [np.zeros((0, 0))])
    assert unexplained([([3], [])], [LONE], [REFERENCE], THRESH, None, BANDS, carried) == []
    other = LoneProposals([_probabilities(0.2)], [np.zeros((0, 0))])  # a lone proposal, but not the one it came from
    problems = unexplained([([3], [])], [LONE], [REFERENCE], THRESH, None, BANDS, other)
    assert len(problems) == 1 and "run candidate of class 2, score 0.4" in problems[0] and "\n" not in problems[0]
    assert len(unexplained([([3], [])], [LONE], [REFERENCE], THRESH, None, BANDS, LoneProposals([], []))) == 1
    # the reference's side: a reference-only candidate carried through from a reference-only proposal
    mirrored = LoneProposals([np.zeros((0, 0))], [_probabilities(0.4)])
    assert unexplained([([], [3])], [REFERENCE], [LONE], THRESH, None, BANDS, mirrored) == []
    assert len(unexplained([([], [3])], [REFERENCE], [LONE], THRESH, None, BANDS, LoneProposals([], []))) == 1


def test_faster_rcnn_candidates_have_no_top_k_cut():
    """A one-for-one swap at the lowest score of a sorted block passes for RetinaNet and SSDlite (their per-level or
    per-class top-k); Faster R-CNN keeps every candidate above the threshold, so it is a moved candidate there."""
    swapped = _found([([0, 0, 10, 10], 0.9, 1), ([20, 20, 40, 40], 0.5, 1), ([100, 100, 140, 140], 0.3 + 1e-7, 3)])
    assert unexplained([([2], [2])], [swapped], [REFERENCE], THRESH, None, BANDS) == []
    problems = unexplained([([2], [2])], [swapped], [REFERENCE], THRESH, None, BANDS, LoneProposals([], []))
    assert len(problems) == 2 and all("top-k" not in p and "proposal in one run only" in p for p in problems)


def test_lone_proposal_probabilities_are_the_softmax_of_their_own_rows():
    logits = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]], dtype=np.float32)
    found, = lone_proposal_probabilities([{CLASS_LOGITS: logits}], [[2, 0]])
    expected = np.exp(logits[[2, 0]].astype(np.float64))
    np.testing.assert_allclose(found, expected / expected.sum(axis=1, keepdims=True), rtol=1e-12)
    missing, = lone_proposal_probabilities([{}], [[0]])  # a side without the logits explains nothing
    assert missing.size == 0


def _without_proposal(run, k):
    """`run` (one image) as a runtime that did not keep proposal `k`: its box-head rows and its final-NMS inputs (the
    candidates whose score is one of its class probabilities) gone; the detections as they were."""
    rows = run.per_image[0]
    probabilities, = lone_proposal_probabilities([rows], [[k]])
    found = run.candidates[0]
    mine = np.abs(probabilities[0][found.labels] - found.scores) <= 1e-6
    per_image = [{name: np.delete(value, k, axis=0) if name in (CLASS_LOGITS, BOX_REGRESSION) else value
                  for name, value in rows.items()}]
    keep = np.flatnonzero(~mine)
    candidates = [Detections(found.boxes[keep], found.scores[keep], found.labels[keep])]
    return replace(run, per_image=per_image, dense=concat_dense(per_image, [torch.zeros(3, 320, 320)]),
                   proposals=[np.delete(run.proposals[0], k, axis=0)], candidates=candidates), int(mine.sum())


def test_a_proposal_in_one_run_only_carries_its_candidates_end_to_end(detector_export):
    """A run without one proposal, whose float64 RPN score is the RPN's score threshold (a `RPN score threshold`
    borderline): the candidates decoded from it are in the reference only, and explained by it."""
    from verify.detect.verdict import _judge

    report, _, _, _ = detector_export
    eager, oracle = report.references[EAGER], report.references[ORACLE]
    kept = oracle.detections[0]
    rows = eager.per_image[0]
    probabilities, = lone_proposal_probabilities([rows], [list(range(len(rows[CLASS_LOGITS])))])
    found = eager.candidates[0]
    owner = np.abs(probabilities[:, found.labels] - found.scores[None, :]).argmin(axis=0)
    used = set(owner.tolist())
    kept_owners = {int(owner[j]) for j in range(len(found))
                   if ((kept.labels == found.labels[j]) & (np.abs(kept.scores - found.scores[j]) < 1e-5)).any()}
    k = max(used - kept_owners)  # a proposal with candidates, none of them kept by the final NMS
    run, gone = _without_proposal(eager, k)
    assert gone >= 1
    rpn = oracle.rpn_candidates[0]
    threshold = float(rpn.scores[np.abs(rpn.boxes - oracle.proposals[0][k]).max(axis=1).argmin()])
    judging = replace(report.judging, rpn=replace(report.judging.rpn, score_thresh=threshold))
    judged = DetectorReport(NAME, report.norm, report.weights, report.shape, ("onnx",), AUTO_FACTOR,
                            images=report.images)
    _judge(judged, judging, eager, oracle, {ONNX: run}, Tolerance())
    pairs = {(p.a, p.b): p for p in judged.proposals}
    assert len(pairs[(ONNX, ORACLE)].borderline) == 1 and pairs[(ONNX, ORACLE)].passed
    assert not judged.problems, judged.problems
    assert judged.passed, judged.summary()
    for pair in judged.dense:
        assert {o.name for o in pair.outputs} >= {BOXES, SCORES}


# TorchScript: its Faster R-CNN's final-NMS inputs come from the file's own box coder ----------------------------------

def test_a_torchscript_clamp_that_moves_only_suppressed_candidates_fails(detector_export, tmp_path):
    report, folder, _, _ = detector_export
    (dw, kept), (dh, _) = _candidate_dw(report, 2), _candidate_dw(report, 3)
    side = np.maximum(dw, dh)  # one clamp bound serves both
    assert side.max() > side[kept].max(), "some suppressed candidate is wider or taller than every kept one"
    bound = float(side[kept].max() + side.max()) / 2
    seeded = scripted_box_clip(folder / "detector.torchscript.pt", bound, tmp_path / "seeded.torchscript.pt",
                               holder="roi_heads")
    judged = _judged(report, {"torchscript": seeded})
    assert judged.detections and all(p.passed for p in judged.detections), \
        "after NMS cannot see it: every kept detection is decoded as before"
    assert judged.exit_code == 1
    assert len(judged.problems) == 2, judged.problems  # its own pieces vs eager fp64 and vs eager
    assert all(p.startswith(f"{SCRIPT}'s own pieces before NMS") and BOXES in p and "\n" not in p
               for p in judged.problems), judged.problems


def test_torchscript_candidates_come_from_its_own_box_coder_and_compose_to_its_forward(detector_export):
    from exporter.errors import ExportError
    from exporter.families.detectors import calibration_image
    from verify.detect.scripted_runs import (
        _run_torchscript,
        _script_candidates,
        _script_decoder,
        _script_image_list,
        _script_pieces,
        load_scripted,
    )

    report, folder, _, _ = detector_export
    eager = report.references[EAGER]
    path = folder / "detector.torchscript.pt"
    run = _run_torchscript(path, [calibration_image(0)], list(eager.dense))
    assert len(run.candidates) == 1 and len(run.candidates[0]) == len(eager.candidates[0])
    np.testing.assert_array_equal(np.sort(run.candidates[0].scores), np.sort(eager.candidates[0].scores))
    _script_image_list()
    model = load_scripted(path)
    image = calibration_image(0)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a scripted detector warns that it returns (losses, detections)
        _, out = model([image])
        tensors, proposals, _ = _script_pieces(model, image, [])
        decoder = _script_decoder(model)
        off = {**out[0], "scores": out[0]["scores"].clone()}
        off["scores"][-1] = torch.nextafter(off["scores"][-1], torch.tensor(2.0))
        with pytest.raises(ExportError, match="post-processing computes something else") as caught:
            _script_candidates(model, decoder, image, tensors, proposals, off)
    assert "\n" not in str(caught.value)


def test_a_folder_written_before_its_candidates_were_judged_is_refused_in_one_line(detector_export, tmp_path):
    """A Faster R-CNN folder exported before hunt 21a lists no final-NMS floors in its manifest: refused, as every
    floor is re-derived, and told to export again."""
    from tests.helpers import edit_manifest, linked_copy, strip_signature
    from verify.detect.folder import detector_integrity
    from verify.folder.checks import CheckReport

    _, signed, _, _ = detector_export
    folder = strip_signature(linked_copy(signed, tmp_path))
    edit_manifest(folder, lambda data: data.update(noise_floor={k: v for k, v in data["noise_floor"].items()
                                                                if k not in (BOXES, SCORES)}))
    report = CheckReport("artifact")
    art = detector_integrity(folder, report)
    failed = [c for c in report.checks if not c.passed]
    assert not art.sound and len(failed) == 1, [(c.name, c.message) for c in failed]
    assert "export it again" in failed[0].message and BOXES in failed[0].message and "\n" not in failed[0].message
