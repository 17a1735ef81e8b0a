"""Helper binding43: an honest Faster R-CNN cell whose ONNX run has a proposal that rounding explains in one pair only
(paired against eager, in one run only against the oracle) stores that pair's paired proposal boxes one row short. The
binding of the before-NMS pairs (verify/matrix/dense_binding.py) compared their shapes and failed the cell as edited
numbers; they share their floor only, as the final NMS's candidates do. The shapes are a real shard's:
`verify matrix -b fasterrcnn_mobilenet_v3_large_320_fpn -n frozen --detector-shape 2x3x320x320 --shard 1/1` (seed 0)."""

from __future__ import annotations

import math

from verify.detect.export import DEFAULT_FORMATS
from verify.detect.nms_inputs import BOXES, SCORES
from verify.detect.proposals import PROPOSALS
from verify.detect.verdict import AFTER_NMS_ONLY, EAGER, ORACLE, RUNTIMES
from verify.judge.compare import Tolerance
from verify.matrix.detector_judging import _before_nms

DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"
LABELS = [RUNTIMES[f] for f in DEFAULT_FORMATS if RUNTIMES[f] not in AFTER_NMS_ONLY]
TOLERANCE = Tolerance()
SHAPES = {**{f"rpn.head.cls_logits#{i}": [2, 15, s, s] for i, s in enumerate((10, 10, 5))},
          **{f"rpn.head.bbox_pred#{i}": [2, 60, s, s] for i, s in enumerate((10, 10, 5))},
          "rpn.anchor_generator#0": [6750, 4], "roi_heads.box_predictor.cls_score#0": [200, 91],
          "roi_heads.box_predictor.bbox_pred#0": [200, 364], PROPOSALS: [200, 4], BOXES: [687, 4], SCORES: [687]}
PAIRED = ("roi_heads.box_predictor.", PROPOSALS)
"""The tensors cut to the paired proposals in each pair (verify/detect/proposals.py `align_rows`)."""


def _output(name: str, shape: list[int], floor: float = 1e-6) -> dict:
    return {"name": name, "shape_a": shape, "shape_b": shape, "total": math.prod(shape), "nonfinite": 0,
            "mismatched": 0, "max_abs": floor, "floor": floor, "ratio": 1.0, "channel_floor": None,
            "allowed": TOLERANCE.factor * floor}


def _pairs(lone_in_oracle_pair: int, proposals_floor: float = 1e-6) -> list[dict]:
    """Both pairs of each run; in the oracle pair `lone_in_oracle_pair` proposals are in one run only (cut)."""
    pairs = []
    for label in LABELS:
        for ref, kind in ((ORACLE, "oracle"), (EAGER, "runtime")):
            cut = lone_in_oracle_pair if ref == ORACLE else 0
            outputs = [_output(name, [shape[0] - cut, *shape[1:]] if name.startswith(PAIRED) else shape,
                               proposals_floor if name == PROPOSALS and ref == ORACLE else 1e-6)
                       for name, shape in SHAPES.items()]
            pairs.append({"a": label, "b": ref, "kind": kind, "outputs": outputs})
    return pairs


def test_a_proposal_explained_in_one_pair_only_leaves_the_cell_agreeing():
    assert _before_nms(_pairs(0), TOLERANCE, LABELS, DETECTOR)[1] == []
    assert _before_nms(_pairs(1), TOLERANCE, LABELS, DETECTOR)[1] == []


def test_the_paired_proposals_floor_raised_in_one_pair_still_fails():
    reasons = _before_nms(_pairs(1, proposals_floor=2e-6), TOLERANCE, LABELS, DETECTOR)[1]
    assert any(f"judge {PROPOSALS} on two floors" in reason for reason in reasons), reasons
