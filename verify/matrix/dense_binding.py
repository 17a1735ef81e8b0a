"""What binds a detector cell's stored before-NMS pairs to each other and to the detector's anchors: both pairs of an
ONNX run are judged on one floor per dense tensor (verify/detect/verdict.py passes the same `floors` to both), and the
heads' levels tile the anchors; the stored after-NMS pairs are the ones recomputed (`after_nms_disagreements`: a
Mask R-CNN's mask floor raised in one pair). Without these, a failing level's floor raised in the one pair it failed
in, or that level cut out of every pair (FCOS's `bbox_ctrness#2`, say), merged to exit 0: the head module was still
there."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from verify.judge.noise_floor import FLOAT32_EPS
from verify.matrix.proposal_judging import Malformed

SLACK = 1e-6
"""How far two stored figures one computation links may drift through JSON (judging.RELATIVE_SLACK)."""
REGRESSION = {"fasterrcnn": "rpn.head.bbox_pred", "maskrcnn": "rpn.head.bbox_pred",
              "keypointrcnn": "rpn.head.bbox_pred", "retinanet": "head.regression_head.bbox_reg",
              "fcos": "head.regression_head.bbox_reg", "ssd": "head.regression_head.module_list."}
"""Each kind's box regression: N x 4A x H x W a level (A anchors a location), so its levels cover the anchors once
(Mask and Keypoint R-CNN: Faster R-CNN's RPN, whose levels a cell of theirs had not been held to)."""
PER_LEVEL = {"fasterrcnn": ("rpn.head.cls_logits",), "maskrcnn": ("rpn.head.cls_logits",),
             "keypointrcnn": ("rpn.head.cls_logits",), "retinanet": ("head.classification_head.cls_logits",),
             "fcos": ("head.classification_head.cls_logits", "head.regression_head.bbox_ctrness"),
             "ssd": ("head.classification_head.module_list.",)}
"""The other heads, one tensor a level at the regression's levels and sizes (SSDlite: a module a level)."""


def floor_disagreements(pairs: Sequence[Mapping[str, Any]], per_proposal: Sequence[str]) -> list[str]:
    """Each dense tensor's floor and shape as every stored pair holds them: the pairs of a cell share them (its
    per-proposal tensors, paired by proposal in each pair, aside; the paired RPN proposals and the final NMS's
    candidates, paired anew in each pair, share their floor only: a proposal rounding explains in one pair is cut from
    that pair alone)."""
    from verify.detect.nms_inputs import BOXES, SCORES
    from verify.detect.proposals import PROPOSALS

    seen: dict[str, tuple[float, Any, str]] = {}
    for pair in pairs:
        for output in pair.get("outputs") or []:
            if not isinstance(output, Mapping):
                continue
            name = str(output.get("name"))
            if name.partition("#")[0] in per_proposal:
                continue
            floor, shape = output.get("floor"), output.get("shape_b")
            shape = None if name.partition("@")[0] in (BOXES, SCORES, PROPOSALS) else shape
            if not isinstance(floor, (int, float)) or isinstance(floor, bool) or not math.isfinite(floor):
                continue  # judging.judge_output refuses it
            where = f"{pair.get('a')} vs {pair.get('b')}"
            if name not in seen:
                seen[name] = (float(floor), shape, where)
                continue
            first, first_shape, first_where = seen[name]
            if abs(first - floor) > SLACK * max(abs(first), abs(floor)) or shape != first_shape:
                return [f"the before-NMS pairs judge {name} on two floors or shapes ({first:.3g} {first_shape} in "
                        f"{first_where}, {floor:.3g} {shape} in {where}; one eager floor judges both: edited numbers); "
                        "rerun the cell"]
    return []


AFTER_NMS_FIGURES = ("matched", "worst_box_ratio", "worst_score_ratio", "worst_keypoint_ratio",
                     "worst_keypoint_score_ratio", "worst_keypoint_head_ratio")
"""The figures of a stored after-NMS pair that must be the recomputed pair's, besides its floor (a Keypoint R-CNN's
keypoint ratios too: its keypoints, scores and logits are stored exactly, so they recompute to the same figures;
absent in both for other detectors). Not the mask ratios:
eager's and the oracle's masks are re-derived from their logits with torchvision's paste outside the model, whose last
bits differ from the model's own masks at some pixels (measured at 320 px: a TorchScript-vs-eager mask ratio of 0.0 in
the export, 0.00065 recomputed), so the recomputed ratios stand, as a folder's re-derived masks do."""


REDERIVED_SLACK = FLOAT32_EPS
"""How far the mask floor recomputed from re-derived masks may sit from the run's own: one float32 rounding of a
probability (a pixel re-derived in other last bits, AFTER_NMS_FIGURES); a floor raised by a forger moves by floors."""


def after_nms_disagreements(stored: Any, recomputed: Sequence[Mapping[str, Any]]) -> list[str]:
    """The after-NMS pairs a shard stored must be those recomputed from its stored detections (and Mask R-CNN's mask
    logits): the same pairs, each on the one floor the stored eager and oracle numbers give (boxes, scores and the two
    mask floors), with the same counts and box and score figures. A mask floor raised in one stored pair is an edited
    cell, and fails; a run's mask logits edited are judged by the recomputed pairs (the stored ones never are)."""
    if not isinstance(stored, list) or not all(isinstance(p, Mapping) for p in stored):
        raise Malformed("after-NMS pairs")
    found = {(str(p.get("a")), str(p.get("b"))): p for p in stored}
    for pair in recomputed:
        where = f"{pair['a']} vs {pair['b']}"
        mine = found.get((pair["a"], pair["b"]))
        if mine is None:
            return [f"no after-NMS pair {where} stored; the export judges it, so a cell without it was not judged as "
                    "it was run (rerun the cell)"]
        floor = mine.get("floor") if isinstance(mine.get("floor"), Mapping) else {}
        figures = [(f"floor of {key}", floor.get(key), pair["floor"].get(key))
                   for key in sorted({*floor, *pair["floor"]})]
        figures += [(key, mine.get(key), pair.get(key)) for key in AFTER_NMS_FIGURES]
        wrong = [(key, a, b) for key, a, b in figures
                 if not _same(a, b, REDERIVED_SLACK if key == "floor of masks" else 0.0)]
        if wrong:
            key, a, b = wrong[0]
            return [f"the stored after-NMS pair {where} holds {key} {a!r}, its stored numbers give {b!r} (edited "
                    "numbers); rerun the cell"]
    return []


def _same(stored: Any, recomputed: Any, slack: float = 0.0) -> bool:
    """Two figures equal up to SLACK, plus `slack` (None only with None; a bool is no figure)."""
    if stored is None or recomputed is None:
        return stored is None and recomputed is None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (stored, recomputed)):
        return False
    return abs(stored - recomputed) <= SLACK * max(abs(stored), abs(recomputed)) + slack


def level_problems(shapes: Mapping[str, Any], kind: str, anchors: str) -> list[str]:
    """`shapes` (dense tensor name -> N x C x H x W, `module#call` or `module#call@HxW`): the regression's levels
    hold exactly the anchors' rows (a level cut out leaves anchors no tensor judged), and every other head has a
    tensor at each of its levels, of its N, H and W."""
    if kind not in REGRESSION:
        return []
    groups: dict[str, dict[str, Any]] = {}
    for name, shape in shapes.items():
        base, _, size = name.partition("@")
        groups.setdefault(size, {})[base] = shape
    for size, group in sorted(groups.items()):
        where = f" at {size}" if size else ""
        rows = sum(_dims(shape)[0] for name, shape in group.items() if name.partition("#")[0] == anchors)
        levels = _levels(group, REGRESSION[kind], kind)
        covered = sum(math.prod(dims) // 4 for dims in levels.values())
        if covered != rows:
            return [f"the before-NMS pairs' box regression levels{where} cover {covered} anchors, the anchors "
                    f"tensor has {rows} (a level left out, or a shape edited); rerun the cell"]
        own = {level: (dims[0], *dims[2:]) for level, dims in levels.items()}
        for head in PER_LEVEL[kind]:
            other = {level: (dims[0], *dims[2:]) for level, dims in _levels(group, head, kind).items()}
            if other != own:
                lost = sorted(set(own) - set(other)) or sorted(set(other) ^ set(own)) or sorted(own)
                return [f"the before-NMS pairs hold {head.rstrip('.')}{where} at other levels than the box "
                        f"regression (level {lost[0]}: a level left out, or a shape edited); rerun the cell"]
    return []


def _levels(group: Mapping[str, Any], module: str, kind: str) -> dict[str, list[int]]:
    """The tensors of `module` (an SSD: of each level's conv, SSDlite's `module_list.<level>.1`, SSD300's
    `module_list.<level>`) by level: the call for the others."""
    found = {}
    for name, shape in group.items():
        base, _, call = name.partition("#")
        if kind == "ssd":
            if base.startswith(module):
                found[base.removeprefix(module).partition(".")[0]] = _dims(shape)
        elif base == module:
            found[call] = _dims(shape)
    return found


def _dims(shape: Any) -> list[int]:
    if not isinstance(shape, list) or not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                          for n in shape):
        raise Malformed(f"a dense tensor's shape {shape!r}")
    return shape
