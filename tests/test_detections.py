"""Detections matched by IoU (verify/detect/match.py): permutations match, drops fail, rounding borderlines pass
named."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import DETECTION_FLOOR as FLOOR
from tests.helpers import DETECTION_RULES as RULES
from tests.helpers import detection_grid as grid
from verify.detect.match import (
    MATCH_IOU,
    Detections,
    Rules,
    compare_detections,
    iou_band,
    iou_matrix,
    measure_detection_floor,
)
from verify.judge.compare import AUTO_FACTOR


def judge(run: Detections, ref: Detections, candidates: Detections | None = None):
    return compare_detections("run", [run], "ref", [ref], FLOOR, RULES,
                              None if candidates is None else [candidates], AUTO_FACTOR)


@settings(max_examples=40, deadline=None)
@given(count=st.integers(1, 40), seed=st.integers(0, 2**16), data=st.data())
def test_a_permutation_with_rounding_noise_always_matches(count, seed, data):
    ref = grid(count, seed)
    order = data.draw(st.permutations(range(count)))
    noise = np.random.default_rng(seed).uniform(-1, 1, (count, 4)) * FLOOR.boxes
    run = Detections(ref.boxes[order] + noise[order], ref.scores[order], ref.labels[order])
    pair = judge(run, ref)
    assert pair.passed, pair.verdict()
    assert pair.matched == count and not pair.borderline and not pair.unexplained
    assert pair.worst_box_ratio <= 1.0


@settings(max_examples=40, deadline=None)
@given(count=st.integers(1, 40), seed=st.integers(0, 2**16), data=st.data())
def test_a_dropped_confident_detection_always_fails(count, seed, data):
    ref = grid(count, seed)
    drop = data.draw(st.integers(0, count - 1))
    run = ref.take([i for i in range(count) if i != drop])
    pair = judge(run, ref)
    assert not pair.passed
    assert len(pair.unexplained) == 1 and pair.unexplained[0].side == "reference"
    assert "unmatched" in pair.verdict() and "\n" not in pair.verdict()


def test_a_score_rounding_at_the_threshold_passes_named():
    ref = grid(5)
    extra = Detections(np.array([[300.0, 300, 330, 330]]), np.array([RULES.score_thresh + 2 * FLOOR.scores]),
                       np.array([3]))
    run = Detections(*(np.concatenate([getattr(ref, k), getattr(extra, k)]) for k in ("boxes", "scores", "labels")))
    pair = judge(run, ref)
    assert pair.passed, pair.verdict()
    assert [b.reason for b in pair.borderline] == ["score threshold"]
    assert "borderline (score threshold)" in pair.verdict()


def test_a_score_far_from_the_threshold_is_not_borderline():
    ref = grid(5)
    extra = Detections(np.array([[300.0, 300, 330, 330]]),
                       np.array([RULES.score_thresh + 10 * AUTO_FACTOR * FLOOR.scores]), np.array([3]))
    run = Detections(*(np.concatenate([getattr(ref, k), getattr(extra, k)]) for k in ("boxes", "scores", "labels")))
    assert not judge(run, ref).passed


def box_at_iou(anchor: np.ndarray, target: float) -> np.ndarray:
    """A box of the anchor's height, shifted in x so its float64 IoU with the anchor is `target`."""
    width = anchor[2] - anchor[0]
    shift = width * (1 - target) / (1 + target)  # IoU of two equal boxes offset by s: (w - s) / (w + s)
    return anchor + np.array([shift, 0, shift, 0])


def test_an_nms_decision_within_rounding_passes_named_and_a_clear_one_fails():
    kept = np.array([10.0, 10, 110, 60])
    for offset, should_pass in ((1e-9, True), (0.05, False)):
        twin = box_at_iou(kept, RULES.nms_thresh + offset)
        ref = Detections(kept[None], np.array([0.8]), np.array([2]))
        run = Detections(np.stack([kept, twin]), np.array([0.8, 0.6]), np.array([2, 2]))
        candidates = Detections(np.stack([kept, twin]), np.array([0.8, 0.6]), np.array([2, 2]))
        pair = judge(run, ref, candidates)
        assert pair.passed is should_pass, pair.verdict()
        if should_pass:
            assert [b.reason for b in pair.borderline] == ["NMS"]
            assert "NMS threshold" in pair.borderline[0].detail


def test_the_detections_cap_explains_a_swap_at_the_last_place():
    rules = Rules(0.05, 0.5, 3)
    ref = grid(4).take([0, 1, 2])
    ref.scores[:] = [0.9, 0.8, 0.3]
    run = grid(4).take([0, 1, 3])
    run.scores[:] = [0.9, 0.8, 0.3 + FLOOR.scores]
    pair = compare_detections("run", [run], "ref", [ref], FLOOR, rules)
    assert pair.passed, pair.verdict()
    assert {b.reason for b in pair.borderline} == {"detections cap"}


def test_a_shifted_label_is_a_label_mismatch():
    ref = grid(6)
    run = Detections(ref.boxes.copy(), ref.scores.copy(), ref.labels + 1)
    pair = judge(run, ref)
    assert not pair.passed and pair.label_mismatches == 6


def test_box_and_score_errors_over_the_factor_fail():
    ref = grid(6)
    moved = Detections(ref.boxes + np.array([0, 0, 2 * AUTO_FACTOR * FLOOR.boxes, 0]), ref.scores, ref.labels)
    pair = judge(moved, ref)
    assert not pair.passed and pair.worst_box_ratio > AUTO_FACTOR and pair.matched == 6
    rescored = Detections(ref.boxes, ref.scores + 2 * AUTO_FACTOR * FLOOR.scores, ref.labels)
    assert not judge(rescored, ref).passed


def test_an_empty_reference_judges_nothing_and_fails():
    empty = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    pair = judge(empty, empty)
    assert not pair.passed and "nothing to judge" in pair.verdict()


def test_floor_is_measured_on_matched_detections_and_never_below_one_ulp():
    ref = grid(10)
    floor = measure_detection_floor([ref], [ref])
    assert floor.matched == 10 and floor.boxes > 0 and floor.scores > 0
    empty = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    assert measure_detection_floor([empty], [ref]) is None


@pytest.mark.parametrize("shift", [0.1, 1.0, 5.0])
def test_iou_band_bounds_the_change_of_iou_under_coordinate_error(shift):
    a = np.array([10.0, 10, 60, 50])
    b = a + np.array([shift, shift, shift, shift])
    error = 1e-3
    band = iou_band(a, b, error)
    base = iou_matrix(a[None], b[None])[0, 0]
    rng = np.random.default_rng(0)
    for _ in range(200):
        moved = iou_matrix((a + rng.uniform(-error, error, 4))[None], (b + rng.uniform(-error, error, 4))[None])
        assert abs(moved[0, 0] - base) <= band * 1.01
    assert base >= MATCH_IOU


@pytest.mark.parametrize("given, wanted, empty", [("{71,363}", "{-1,4}", False), ("{0,364}", "{0,-1}", True)])
def test_an_onnx_runtime_reshape_failure_is_named_as_the_upstream_issue(given, wanted, empty):
    """vision#4623's own message ({71,363}) and the one this project reproduces (no proposal: {0,364})."""
    from verify.detect.onnx_runs import RESHAPE_BLOCKER, runtime_failure

    message = ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Reshape "
               "node. Name:'/roi_heads/Reshape' Status Message: reshape_helper.h:84 size != 0 was false. The input "
               f"tensor cannot be reshaped to the requested shape. Input shape:{given}, requested shape:{wanted}\n")
    text = runtime_failure(message, (3, 64, 320))
    assert RESHAPE_BLOCKER in text and f"{given} to {wanted}" in text and "/roi_heads/Reshape" in text
    assert ("no proposal" in text) == empty and "\n" not in text and "3x64x320" in text


def test_another_onnx_runtime_failure_is_quoted_not_blamed_on_the_upstream_issue():
    from verify.detect.onnx_runs import RESHAPE_BLOCKER, runtime_failure

    text = runtime_failure("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions\nfor input", (3, 8, 8))
    assert RESHAPE_BLOCKER not in text and "Got invalid dimensions for input" in text and "\n" not in text
