"""Per-proposal rows paired by proposal (verify/detect/proposals.py): the box head's rows of two runs whose
RPN ordered its proposals differently are judged pair by pair, a perturbed row still fails, and a proposal
in one run only passes only when rounding explains it (named)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from verify.detect.match import Detections
from verify.detect.proposals import (
    PAIR_IOU,
    PROPOSALS,
    Bands,
    ProposalCheck,
    RpnRules,
    align_rows,
    explain_lone,
    kept_order,
    pair_proposals,
    score_band,
)
from verify.judge.compare import AUTO_FACTOR, Tolerance, compare_outputs
from verify.judge.measure import measure_floors
from verify.judge.noise_floor import FLOAT32_EPS

ROWS = "roi_heads.box_predictor.cls_score#0"
DENSE = "rpn.head.cls_logits#0"
PER_PROPOSAL = ["roi_heads.box_predictor.cls_score"]
RULES = RpnRules(nms_thresh=0.7, post_nms_top_n=20, score_thresh=0.0)
NOISE = 1e-6
"""Relative rounding-like noise of a float32 run against its float64 reference."""
ROW_ERROR = 1e-3
"""A 0.1 % error in one proposal's row: far above rounding."""


def grid(count: int) -> np.ndarray:
    """`count` well separated proposal boxes (no two overlap)."""
    return np.array([[40.0 * (i % 8), 40.0 * (i // 8), 40.0 * (i % 8) + 30, 40.0 * (i // 8) + 25]
                     for i in range(count)])


def reference(count: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    return {ROWS: rng.normal(size=(count, 7)), DENSE: rng.normal(size=(1, 3, 4, 4))}, grid(count)


def noisy(tensors: dict[str, np.ndarray], seed: int, full: bool = False) -> dict[str, np.ndarray]:
    """`tensors` with a relative error up to NOISE in each value; `full`: exactly NOISE, of either sign."""
    rng = np.random.default_rng(seed)
    draw = (lambda shape: rng.choice([-1.0, 1.0], shape)) if full else (lambda shape: rng.uniform(-1, 1, shape))
    return {k: (v * (1 + NOISE * draw(v.shape))).astype(np.float32) for k, v in tensors.items()}


def permuted(tensors: dict[str, np.ndarray], boxes: np.ndarray, order: np.ndarray):
    return {**tensors, ROWS: tensors[ROWS][order]}, boxes[order]


def judged(run, run_boxes, ref, ref_boxes, floors=None):
    check = ProposalCheck("run", "ref")
    mine, theirs, lone = align_rows([run], [ref], [run_boxes], [ref_boxes], PER_PROPOSAL, check)
    floors = floors if floors is not None else measure_floors(mine[0], theirs[0])
    result = compare_outputs("run", mine[0], "ref", theirs[0], Tolerance(), floors, require_all=True)
    return check, result, lone, floors


def eager_floors(ref, ref_boxes, seed):
    """The floors a float32 eager run paired with the reference measures (what the pipeline judges on). Its error is
    the largest the noise model gives (`full`), as a model's own float32 run is what sets the floor for runs of the
    same computation: from a draw of up to NOISE, two proposals' floor could be a twentieth of another draw's error
    (hypothesis found count=2, seed=760 at 6.3x), a flaw of the noise model, not of the pairing."""
    return judged(noisy(ref, seed, full=True), ref_boxes.astype(np.float32), ref, ref_boxes)[3]


@settings(max_examples=25, deadline=None)
@given(count=st.integers(2, 40), seed=st.integers(0, 2**16), data=st.data())
def test_proposals_in_another_order_are_paired_and_their_rows_agree(count, seed, data):
    ref, boxes = reference(count, seed)
    floors = eager_floors(ref, boxes, seed + 1)
    order = np.array(data.draw(st.permutations(range(count))))
    run, run_boxes = permuted(noisy(ref, seed + 2), boxes, order)
    check, result, lone, _ = judged(run, run_boxes, ref, boxes, floors)
    assert check.paired_per_image == [count] and lone == [([], [])]
    assert check.reordered == int((order != np.arange(count)).sum())
    assert result.passed, result.worst.verdict()
    assert PROPOSALS in [o.name for o in result.outputs]


def test_rows_compared_by_index_after_a_swap_fail_and_paired_they_pass():
    """The known false failure, in small: two proposals swapped by the RPN (a saturated-sigmoid tie)."""
    ref, boxes = reference(10, 0)
    floors = eager_floors(ref, boxes, 1)
    order = np.array([0, 2, 1, *range(3, 10)])
    run, run_boxes = permuted(noisy(ref, 2), boxes, order)
    by_index = compare_outputs("run", run, "ref", ref, Tolerance(), floors, require_all=True)
    assert not by_index.passed
    assert judged(run, run_boxes, ref, boxes, floors)[1].passed


def test_a_perturbed_row_still_fails_after_pairing():
    ref, boxes = reference(12, 3)
    floors = eager_floors(ref, boxes, 4)
    run, run_boxes = permuted(noisy(ref, 5), boxes, np.arange(12)[::-1])
    run[ROWS] = run[ROWS].copy()
    run[ROWS][4, 2] += ROW_ERROR * np.abs(ref[ROWS]).max()
    result = judged(run, run_boxes, ref, boxes, floors)[1]
    assert not result.passed and result.worst.name == ROWS
    assert result.worst.ratio > AUTO_FACTOR


def test_a_moved_proposal_box_fails_as_proposals():
    ref, boxes = reference(8, 6)
    floors = eager_floors(ref, boxes, 7)
    run, run_boxes = noisy(ref, 8), boxes.astype(np.float32).copy()
    run_boxes[3, 0] += 1.0  # one pixel: still the same proposal (IoU > PAIR_IOU), a wrong box
    check, result, _, _ = judged(run, run_boxes, ref, boxes, floors)
    assert check.paired_per_image == [8]
    assert not result.passed and result.worst.name == PROPOSALS


def candidates(boxes: np.ndarray, scores: np.ndarray) -> Detections:
    return Detections(boxes.astype(np.float64), scores.astype(np.float64), np.zeros(len(boxes), np.int64))


def test_an_extra_proposal_outside_the_candidates_is_unexplained():
    boxes = grid(30)
    scores = np.linspace(0.99, 0.5, 30)
    check = ProposalCheck("run", "ref")
    stranger = np.array([300.0, 300.0, 319.0, 319.0])
    explain_lone(check, 0, "run", stranger, candidates(boxes, scores), RULES, Bands(1e-4, 1e-6))
    assert check.unexplained and not check.borderline and not check.passed
    assert "not among the oracle's RPN candidates" in check.unexplained[0]


def test_a_swap_across_the_proposal_cap_within_rounding_passes_named_and_a_clear_one_fails():
    boxes = grid(30)
    band = 1e-6
    scores = np.linspace(0.99, 0.5, 30)
    cap = RULES.post_nms_top_n
    scores[cap] = scores[cap - 1] - band / 2  # the first dropped proposal is within rounding of the last kept
    cands = candidates(boxes, scores)
    assert kept_order(cands, RULES.nms_thresh).tolist()[:cap + 1] == list(range(cap + 1))
    near, far = ProposalCheck("run", "ref"), ProposalCheck("run", "ref")
    explain_lone(near, 0, "run", boxes[cap], cands, RULES, Bands(1e-4, band))
    explain_lone(far, 0, "run", boxes[cap + 3], cands, RULES, Bands(1e-4, band))
    assert near.passed and "proposal cap" in near.borderline[0]
    assert not far.passed and "not within" in far.unexplained[0]


def test_an_rpn_nms_decision_within_rounding_passes_named():
    anchor = np.array([100.0, 100.0, 200.0, 200.0])
    other = np.array([100.0, 100.0, 100.0 + 100.0 * RULES.nms_thresh, 200.0])  # inside it: IoU = nms_thresh
    cands = candidates(np.stack([anchor, other]), np.array([0.9, 0.8]))
    check = ProposalCheck("run", "ref")
    explain_lone(check, 0, "reference", other, cands, RULES, Bands(1e-4, 1e-6))
    assert check.passed and "RPN NMS" in check.borderline[0]


def test_pairs_need_the_pair_iou_and_the_score_band_fails_closed():
    box = np.array([[0.0, 0.0, 10.0, 10.0]])
    apart = np.array([[0.0, 0.0, 10.0, 10.0 * PAIR_IOU * 0.9]])
    assert pair_proposals(box, apart) == []
    assert pair_proposals(box, box + 1e-4) == [(0, 0)]
    assert score_band(float("inf"), AUTO_FACTOR) == 0.0
    assert score_band(0.0, AUTO_FACTOR) == AUTO_FACTOR * FLOAT32_EPS
