"""Per-proposal tensors judged row by row only after their rows are paired by proposal.

Faster R-CNN's box head gives one row per RPN proposal, in the RPN's order: proposals sorted by objectness
score after NMS. Two runtimes can order or keep proposals differently without any error: near 1 the float32
sigmoid saturates (ONNX Runtime's Sigmoid rounds logits 14.27 and 14.11 to the same 0.9999992847, torch gives
two values 2 ulps apart), and the NMS then orders the tie its own way. Rows of different proposals compared
index by index read as a failure of 1e5x the floor. So, per image:
- the proposal boxes of the run and of the reference are paired by optimal assignment on their largest
  coordinate difference (a pair needs IoU >= PAIR_IOU), and the per-proposal rows are judged pair by pair;
  the paired boxes are judged too, as the tensor `PROPOSALS` on the float64 oracle's floor;
- a proposal in one run only passes only when rounding explains it, recomputed on the oracle's float64 RPN
  candidates (the recorded inputs of the RPN's NMS): its score within the rounding band of the RPN's score
  threshold or of the score across the proposal cap's cutoff, or an NMS decision whose float64 IoU sits
  within rounding of the RPN's NMS threshold. Each such case is named; anything else fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from verify.detect.match import EXPLAIN_FACTOR, MATCH_IOU, Detections, Rules, iou_band, iou_matrix
from verify.judge.noise_floor import FLOAT32_EPS

if TYPE_CHECKING:
    import numpy as np

PAIR_IOU = MATCH_IOU
"""Below this IoU two proposal boxes are not the same proposal (their rows are never compared)."""
PROPOSALS = "proposals"
"""The name under which the paired proposal boxes are judged like any dense tensor."""
UNPAIRABLE_COST = 1e300
"""The assignment cost of a box with a NaN or infinite coordinate: finite, so every box is assigned (then refused by
its IoU); a thousand of them still sum below float64's largest."""
SIGMOID_SLOPE = 0.25
"""The largest derivative of the sigmoid: an objectness logit off by e gives a score off by at most e/4."""
LOGITS = "rpn.head.cls_logits#"
"""The dense tensors of the RPN's objectness logits (one per level): their floors set the score band."""


@dataclass(frozen=True)
class RpnRules:
    """The RPN's own post-processing constants: the decisions rounding can flip."""

    nms_thresh: float
    post_nms_top_n: int
    score_thresh: float


@dataclass(frozen=True)
class Bands:
    """How far rounding can move a proposal's box coordinates and score."""

    boxes: float
    scores: float


@dataclass
class ProposalCheck:
    """The pairing of a run's proposals with a reference's (one list per image)."""

    a: str
    b: str
    paired_per_image: list[int] = field(default_factory=list)
    reference_per_image: list[int] = field(default_factory=list)
    borderline: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    reordered: int = 0
    """Pairs whose rows sit at another index in the two runs (what a row-by-row comparison would misjudge)."""

    @property
    def passed(self) -> bool:
        return not self.unexplained

    def verdict(self) -> str:
        head = (f"{self.a} vs {self.b}: {sum(self.paired_per_image)} of {sum(self.reference_per_image)} proposals "
                f"paired ({self.reordered} in another order)")
        if self.unexplained:
            return (f"{head}; {len(self.unexplained)} proposals in one run only that rounding does not explain "
                    f"(first: {self.unexplained[0]})")
        return head + (f"; {len(self.borderline)} borderline (first: {self.borderline[0]})" if self.borderline
                       else "")

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "passed": self.passed, "paired_per_image": self.paired_per_image,
                "reference_per_image": self.reference_per_image, "reordered": self.reordered,
                "borderline": self.borderline, "unexplained": self.unexplained, "verdict": self.verdict()}


def pair_proposals(run: np.ndarray, ref: np.ndarray) -> list[tuple[int, int]]:
    """Optimal one-to-one pairs (index in run, index in ref) on the largest coordinate difference, a pair
    only where IoU >= PAIR_IOU; sorted by the reference's index."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    if not len(run) or not len(ref):
        return []
    cost = np.abs(run[:, None, :].astype(np.float64) - ref[None, :, :]).max(axis=2)
    # a NaN box costs as much as any: an infinite row would make the assignment infeasible (ValueError), not a verdict
    rows, cols = linear_sum_assignment(np.nan_to_num(cost, nan=UNPAIRABLE_COST, posinf=UNPAIRABLE_COST))
    iou = iou_matrix(run, ref)
    return sorted(((int(r), int(c)) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= PAIR_IOU),
                  key=lambda p: p[1])


def align_rows(run: Sequence[Mapping[str, np.ndarray]], ref: Sequence[Mapping[str, np.ndarray]],
               run_props: Sequence[np.ndarray], ref_props: Sequence[np.ndarray], per_proposal: Sequence[str],
               check: ProposalCheck) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]],
                                             list[tuple[list[int], list[int]]]]:
    """Per image: both sides' tensors with each per-proposal tensor cut to the paired rows, in the
    reference's order, plus `PROPOSALS` (the paired boxes); and the unpaired indices (run, reference)."""
    import numpy as np

    out_run, out_ref, lone = [], [], []
    for mine, theirs, boxes, ref_boxes in zip(run, ref, run_props, ref_props, strict=True):
        pairs = pair_proposals(boxes, ref_boxes)
        i = np.array([p[0] for p in pairs], dtype=np.int64)
        j = np.array([p[1] for p in pairs], dtype=np.int64)
        check.paired_per_image.append(len(pairs))
        check.reference_per_image.append(len(ref_boxes))
        check.reordered += int((i != j).sum())
        out_run.append(_cut(mine, i, per_proposal, boxes))
        out_ref.append(_cut(theirs, j, per_proposal, ref_boxes))
        lone.append((sorted(set(range(len(boxes))) - set(i.tolist())),
                     sorted(set(range(len(ref_boxes))) - set(j.tolist()))))
    return out_run, out_ref, lone


def _cut(tensors: Mapping[str, np.ndarray], rows: np.ndarray, per_proposal: Sequence[str],
         boxes: np.ndarray) -> dict[str, np.ndarray]:
    cut = {name: value[rows] if name.partition("#")[0] in per_proposal else value for name, value in tensors.items()}
    cut[PROPOSALS] = boxes[rows]
    return cut


def explain_lone(check: ProposalCheck, image: int, side: str, box: np.ndarray, candidates: Detections | None,
                 rules: RpnRules, bands: Bands, other_count: int | None = None) -> bool:
    """Record a proposal present on one `side` only as borderline (named) or unexplained; whether it is borderline.
    `other_count`: how many proposals the other side kept on this image (a swap across the cap leaves it full; None:
    not known)."""
    where = f"image {image}: {side} proposal [{', '.join(f'{v:.6g}' for v in box)}]"
    if candidates is None or not len(candidates):
        check.unexplained.append(f"{where}: no float64 RPN candidates to recompute its decision from")
        return False
    import numpy as np

    iou = iou_matrix(box[None], candidates.boxes)[0]
    k = int(np.argmax(iou))
    if iou[k] < PAIR_IOU:
        check.unexplained.append(f"{where}: not among the oracle's RPN candidates (best IoU {iou[k]:.3g})")
        return False
    full = other_count is None or other_count >= rules.post_nms_top_n
    found = _threshold(candidates, k, rules, bands) or (full and _cap(candidates, k, rules, bands)) or _nms(
        candidates, k, rules, bands)
    if found:
        check.borderline.append(f"{where}: {found}")
        return True
    check.unexplained.append(f"{where}: its float64 score {candidates.scores[k]:.9g} is not within "
                             f"{bands.scores:.2g} of the proposal cap, and no RPN NMS decision within rounding "
                             "explains it")
    return False


def explain_unpaired(check: ProposalCheck, lone: Sequence[tuple[list[int], list[int]]],
                     run_boxes: Sequence[np.ndarray], ref_boxes: Sequence[np.ndarray],
                     candidates: Sequence[Detections], rules: RpnRules,
                     bands: Bands) -> list[tuple[list[int], list[int]]]:
    """Every proposal in one run only (`lone`: per image, unpaired indices in the run and in the reference) recorded
    by explain_lone on that image's float64 RPN candidates; per image, the indices (run, reference) it found
    borderline: the final-NMS inputs decoded from them are in one run only too (verify/detect/nms_inputs.py)."""
    explained = []
    for image, (run_only, ref_only) in enumerate(lone):
        found = candidates[image] if image < len(candidates) else None
        sides: list[list[int]] = []
        for side, boxes, other, indices in (("run", run_boxes[image], ref_boxes[image], run_only),
                                            ("reference", ref_boxes[image], run_boxes[image], ref_only)):
            sides.append([k for k in indices
                          if explain_lone(check, image, side, boxes[k], found, rules, bands, len(other))])
        explained.append((sides[0], sides[1]))
    return explained


def pair_boxes(check: ProposalCheck, run_boxes: Sequence[np.ndarray], ref_boxes: Sequence[np.ndarray]
               ) -> tuple[list[np.ndarray], list[np.ndarray], list[tuple[list[int], list[int]]]]:
    """align_rows on the proposal boxes alone (per image): both sides' paired boxes in the reference's order, and
    the unpaired indices; the counts go into `check`."""
    mine, theirs, lone = align_rows([{}] * len(run_boxes), [{}] * len(ref_boxes), run_boxes, ref_boxes, (), check)
    return [m[PROPOSALS] for m in mine], [t[PROPOSALS] for t in theirs], lone


def check_proposals(a: str, b: str, run_boxes: Sequence[np.ndarray], ref_boxes: Sequence[np.ndarray],
                    candidates: Sequence[Detections], rules: RpnRules,
                    bands: Bands) -> tuple[ProposalCheck, list[np.ndarray], list[np.ndarray]]:
    """The pairing of run `a`'s proposals (per image) with reference `b`'s from the boxes alone, as the export
    records it (align_rows, then explain_unpaired), and both sides' paired boxes per image: what a stored detector
    cell is judged again from."""
    check = ProposalCheck(a, b)
    mine, theirs, lone = pair_boxes(check, run_boxes, ref_boxes)
    explain_unpaired(check, lone, run_boxes, ref_boxes, candidates, rules, bands)
    return check, mine, theirs


def derive_bands(floors: Mapping[str, float], factor: float) -> Bands:
    """The rounding bands from the oracle's floor values: `factor` floors of the paired proposal boxes (`PROPOSALS`;
    0 without one), and score_band of the largest RPN objectness-logit floor (0 without one); `factor` at most
    EXPLAIN_FACTOR (a looser tolerance never widens what rounding explains)."""
    factor = min(factor, EXPLAIN_FACTOR)
    logits = [value for name, value in floors.items() if name.startswith(LOGITS)]
    return Bands(factor * floors[PROPOSALS] if PROPOSALS in floors else 0.0,
                 score_band(max(logits, default=math.inf), factor))


def kept_order(candidates: Detections, nms_thresh: float) -> np.ndarray:
    """The oracle's RPN NMS, recomputed in float64 without the cap: kept indices, highest score first."""
    import torch
    from torchvision.ops import batched_nms

    keep = batched_nms(torch.as_tensor(candidates.boxes), torch.as_tensor(candidates.scores),
                       torch.as_tensor(candidates.labels), nms_thresh)
    return keep.numpy()


def moved_boxes(found: Detections, kept: Detections, rules: Rules, image: tuple[int, int],
                resized: tuple[int, int]) -> int:
    """How many of `kept` (a float64 run's final detections on an `image` of H x W) are not the boxes its recorded
    final-NMS inputs `found` (in the transform's `resized` H x W) give once the NMS and cap are replayed and the boxes
    scaled back as torchvision's resize_boxes does (float32 ratios): 0 when they are. The scores and labels are
    compared first (exactly, by the caller): a moved candidate box kept them and changed every float64 IoU an `NMS`
    borderline is judged on."""
    import numpy as np

    keep = kept_order(found, rules.nms_thresh)[:rules.detections_per_img] if len(found) else np.zeros(0, np.int64)
    if len(keep) != len(kept):
        return max(len(keep), len(kept))
    ratio_h, ratio_w = (float(np.float32(a) / np.float32(b)) for a, b in zip(image, resized, strict=True))
    boxes = found.boxes[keep] * np.array([ratio_w, ratio_h, ratio_w, ratio_h])
    slack = FLOAT32_EPS * max(float(np.abs(kept.boxes).max(initial=0.0)), 1.0)
    return int((np.abs(boxes - kept.boxes).max(axis=1, initial=0.0) > slack).sum())


def _threshold(candidates: Detections, k: int, rules: RpnRules, bands: Bands) -> str | None:
    gap = abs(float(candidates.scores[k]) - rules.score_thresh)
    if gap <= bands.scores:
        return f"RPN score threshold: float64 score {candidates.scores[k]:.9g} is {gap:.2g} from {rules.score_thresh:g}"
    return None


def _cap(candidates: Detections, k: int, rules: RpnRules, bands: Bands) -> str | None:
    """A kept candidate within rounding of the first one the cap drops, or a dropped one within rounding of
    the last one it keeps: rounding can swap the two across the cutoff (so the side without it is full, which
    explain_lone asks first: a run that merely lost its last proposal is no swap)."""
    keep = kept_order(candidates, rules.nms_thresh).tolist()
    cap = rules.post_nms_top_n
    if len(keep) <= cap or k not in keep:
        return None
    score = float(candidates.scores[k])
    across = float(candidates.scores[keep[cap]] if keep.index(k) < cap else candidates.scores[keep[cap - 1]])
    gap = abs(score - across)
    if gap <= bands.scores:
        return (f"proposal cap: float64 score {score:.9g} is {gap:.2g} from the score {across:.9g} across the "
                f"{cap}-proposal cutoff (band {bands.scores:.2g})")
    return None


def _nms(candidates: Detections, k: int, rules: RpnRules, bands: Bands) -> str | None:
    """The float64 NMS decision between candidate `k` and each same-level candidate scored as high
    (within rounding) that the NMS keeps: an IoU within rounding of the RPN's NMS threshold explains either outcome.
    A candidate the NMS removes suppresses nothing (counted, one at the threshold explained the loss of a proposal
    no kept neighbour came near)."""
    import numpy as np

    score, level = float(candidates.scores[k]), int(candidates.labels[k])
    kept = np.zeros(len(candidates), dtype=bool)
    kept[kept_order(candidates, rules.nms_thresh)] = True
    rivals = np.flatnonzero((candidates.labels == level) & (candidates.scores >= score - bands.scores) & kept)
    offset = FLOAT32_EPS * (float(np.abs(candidates.boxes).max()) + 1.0) * (int(candidates.labels.max()) + 1)
    error = bands.boxes + offset  # batched_nms offsets each level's boxes; float32 rounds the offset boxes
    for r in rivals[rivals != k]:
        iou = float(iou_matrix(candidates.boxes[k][None], candidates.boxes[r][None])[0, 0])
        band = iou_band(candidates.boxes[k], candidates.boxes[r], error)
        if abs(iou - rules.nms_thresh) <= band:
            return (f"RPN NMS: float64 IoU {iou:.9f} with a level-{level} proposal is within {band:.2g} of the "
                    f"NMS threshold {rules.nms_thresh:g}")
    return None


def score_band(logit_floor: float, factor: float) -> float:
    """Rounding of an objectness score: `factor` logit floors through the sigmoid's slope, plus one
    float32 rounding of the score itself (near 1 that is what separates saturated scores); 0 (nothing
    explained) when the logit floor is not finite."""
    return factor * (SIGMOID_SLOPE * logit_floor + FLOAT32_EPS) if math.isfinite(logit_floor) else 0.0
