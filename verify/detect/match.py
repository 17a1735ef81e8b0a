"""A verdict for variable-length outputs: detections of a run matched to the reference's by IoU.

Per image and per class, the two sides' boxes are paired by optimal assignment on 1 - IoU
(scipy's linear_sum_assignment), a pair only where IoU >= MATCH_IOU. Each pair is judged on box
coordinates and score against the float32 noise floor of detections (eager float32 vs eager float64,
matched the same way). A detection left without a partner passes only when float32 rounding explains it,
each case named as a borderline:
- `score threshold`: its score is within the rounding band of the score threshold;
- `detections cap`: the side without it is full (detections per image) and its score is within the band of
  that side's lowest kept score;
- `NMS`: a same-class detection kept on the side without it overlaps it, recomputed on the oracle's
  float64 candidate boxes, by an IoU within rounding of the NMS threshold.
Anything else unmatched fails, and so does a box whose partner sits in another class (a label mismatch), a
detection with a NaN or infinite box or score, one of a side holding more than the cap, one that overlaps a
same-class detection of its own side past the NMS threshold (a duplicate NMS would have removed), and a pair in
which nothing matched at all.
Mask R-CNN's masks belong to their detections: each matched pair's pasted mask and its mask head's output are judged
on their own floors, measured on the same matching of eager float32 against float64 (verify/detect/masks.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from verify.detect.keypoints import KEYPOINT_LOGITS, KEYPOINT_SCORES, KEYPOINTS, KeypointJudgement, floor_errors
from verify.judge.compare import AUTO_FACTOR
from verify.judge.noise_floor import FLOAT32_EPS

if TYPE_CHECKING:
    import numpy as np

MASKS, MASK_LOGITS = "masks", "mask_logits"
"""Mask R-CNN's pasted masks (its fourth output) and its mask head's logits of each detection's label."""
MATCH_IOU = 0.5
"""Below this IoU two boxes are not the same detection (the COCO matching threshold)."""
FLOOR_IOU = 0.99
"""The floor is measured only on pairs this close: the same detection up to rounding (floors measured here are near
1e-4 px). A looser pair is two detections that NMS or the cap kept differently, whose distance is no rounding error
and would let every runtime pass on it."""
SCORE_SCALE = 1.0
EXPLAIN_FACTOR = AUTO_FACTOR
"""The most floors a rounding explanation (a borderline) spans, whatever the factor: a looser --factor loosens how far
matched values may differ, never which detections may go missing (at 1e6 every lost detection was `score threshold`)."""
"""Scores are probabilities: one ulp of this is the least score floor."""


@dataclass
class Detections:
    """One image's detections, float64 boxes (x1, y1, x2, y2), scores and integer labels; Mask R-CNN's also their
    pasted masks (N x H x W probabilities) and their mask head's logits of their label (N x M x M), each in the run's
    own precision (float32 runs paste in float32); Keypoint R-CNN's their keypoints (N x K x 3), keypoint scores (N x K)
    and their head's heatmap logits (N x K x M x M, verify/detect/keypoints.py)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None
    mask_logits: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    keypoint_scores: np.ndarray | None = None
    keypoint_logits: np.ndarray | None = None

    @classmethod
    def of(cls, outputs: Mapping[str, Any]) -> Detections:
        import numpy as np

        boxes = np.asarray(outputs["boxes"], dtype=np.float64).reshape(-1, 4)
        masks = outputs.get(MASKS)
        if masks is not None:
            masks = np.asarray(masks)
            masks = masks[:, 0] if masks.ndim == 4 and masks.shape[1] == 1 else masks
        logits = outputs.get(MASK_LOGITS)
        kept = [None if outputs.get(key) is None else np.asarray(outputs[key])
                for key in (KEYPOINTS, KEYPOINT_SCORES, KEYPOINT_LOGITS)]
        return cls(boxes, np.asarray(outputs["scores"], dtype=np.float64).reshape(-1),
                   np.asarray(outputs["labels"]).astype(np.int64).reshape(-1), masks,
                   None if logits is None else np.asarray(logits), *kept)

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, index: Any) -> Detections:
        return Detections(self.boxes[index], self.scores[index], self.labels[index],
                          None if self.masks is None else self.masks[index],
                          None if self.mask_logits is None else self.mask_logits[index],
                          *(None if a is None else a[index]
                            for a in (self.keypoints, self.keypoint_scores, self.keypoint_logits)))


@dataclass(frozen=True)
class Rules:
    """The model's own post-processing constants: the decisions rounding can flip."""

    score_thresh: float
    nms_thresh: float
    detections_per_img: int


OPTIONAL_FLOORS = ("masks", "mask_head", "keypoints", "keypoint_scores", "keypoint_head")
"""The floors only some detectors have (absent, never null, elsewhere)."""


@dataclass(frozen=True)
class DetectionFloor:
    boxes: float
    """max |float32 - float64| over matched box coordinates, at least one ulp of the largest coordinate."""
    scores: float
    """max |float32 - float64| over matched scores, at least one ulp of 1."""
    matched: int = 0
    """How many detections the floor was measured on."""
    masks: float | None = None
    """Mask R-CNN: max |float32 - float64| over the pasted masks of the pairs pasted at the same pixels, at least one
    ulp of 1 (probabilities); None where the detections have no masks."""
    mask_head: float | None = None
    """Mask R-CNN: max |float32 - float64| over the mask head's logits of each pair's label, at least one ulp of the
    largest; None where the detections have no masks."""
    keypoints: float | None = None
    """Keypoint R-CNN: max |float32 - float64| over the x, y of the keypoints whose argmax chose the same cell on both
    sides, at least one ulp of the largest box coordinate; None where the detections have no keypoints."""
    keypoint_scores: float | None = None
    """Keypoint R-CNN: max |float32 - float64| over those keypoints' scores (heatmap values), at least one ulp of 1."""
    keypoint_head: float | None = None
    """Keypoint R-CNN: max |float32 - float64| over the head's heatmap logits, at least one ulp of the largest."""

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None or key not in OPTIONAL_FLOORS}


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) boxes, in float64; 0 where the union is empty."""
    import numpy as np

    a, b = a.astype(np.float64), b.astype(np.float64)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(high - low, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou_band(a: np.ndarray, b: np.ndarray, error: float) -> float:
    """How far rounding can move IoU(a, b) when every coordinate may be off by `error` (first order:
    |dI| <= e P_I and |dU| <= e (P_a + P_b + P_I), P a perimeter, so |dIoU| <= e (P_I + IoU (P_a + P_b + P_I)) / U)."""
    import numpy as np

    def perimeter(box: np.ndarray) -> float:
        return 2.0 * (max(box[2] - box[0], 0.0) + max(box[3] - box[1], 0.0))

    low, high = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter_box = np.concatenate([low, np.maximum(high, low)])
    inter = float(np.prod(np.clip(high - low, 0, None)))
    union = perimeter_area(a) + perimeter_area(b) - inter
    if not union > 0:  # two empty (or NaN) boxes: the NMS never compares them, rounding explains no decision
        return 0.0
    iou = inter / union
    p_i = perimeter(inter_box)
    return error * (p_i + iou * (perimeter(a) + perimeter(b) + p_i)) / union


def perimeter_area(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0))


def assign(a: Detections, b: Detections) -> list[tuple[int, int, float]]:
    """Optimal one-to-one pairs (index in a, index in b, IoU) per class with IoU >= MATCH_IOU."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    pairs = []
    for label in np.intersect1d(a.labels, b.labels):
        ia, ib = np.flatnonzero(a.labels == label), np.flatnonzero(b.labels == label)
        iou = iou_matrix(a.boxes[ia], b.boxes[ib])
        rows, cols = linear_sum_assignment(1.0 - iou)
        pairs += [(int(ia[r]), int(ib[c]), float(iou[r, c])) for r, c in zip(rows, cols, strict=True)
                  if iou[r, c] >= MATCH_IOU]
    return pairs


def measure_detection_floor(fp32: Sequence[Detections], fp64: Sequence[Detections],
                            scales: Sequence[tuple[float, float]] | None = None) -> DetectionFloor | None:
    """The float32 floor of detections: eager float32 against eager float64, matched by IoU, over the pairs at
    FLOOR_IOU or closer. None when nothing matched (no floor can be measured from nothing)."""
    import numpy as np

    from verify.detect.masks import max_abs, paste_shift

    box_err, score_err, scale, matched = 0.0, 0.0, 0.0, 0
    masked = bool(fp32) and all(found.masks is not None and found.mask_logits is not None for found in [*fp32, *fp64])
    mask_err, head_err, logit_scale = 0.0, 0.0, 0.0
    keyed = bool(fp32) and all(found.keypoints is not None and found.keypoint_logits is not None
                               and found.keypoint_scores is not None for found in [*fp32, *fp64])
    kp_err = [0.0, 0.0, 0.0, 0.0]  # keypoints, scores, head logits, largest |logit|
    for image, (run, ref) in enumerate(zip(fp32, fp64, strict=True)):
        frame = scales[image] if scales is not None else (1.0, 1.0)  # Keypoint R-CNN's keypoints: their argmax cells
        for i, j, _ in (pair for pair in assign(run, ref) if pair[2] >= FLOOR_IOU):
            box_err = max(box_err, float(np.abs(run.boxes[i] - ref.boxes[j]).max()))
            score_err = max(score_err, abs(float(run.scores[i] - ref.scores[j])))
            matched += 1
            if masked and _masks_held(run, i) and _masks_held(ref, j):
                head_err = max(head_err, max_abs(run.mask_logits[i], ref.mask_logits[j]))
                logit_scale = max(logit_scale, float(np.abs(ref.mask_logits[j]).max(initial=0.0)))
                alike, _ = paste_shift(run.boxes[i], run.masks.dtype, ref.boxes[j], ref.masks.dtype,
                                       ref.mask_logits.shape[-1], 0.0)
                if alike:  # a pair pasted at other pixels (rounding) says nothing of the masks' rounding
                    mask_err = max(mask_err, max_abs(run.masks[i], ref.masks[j]))
            if keyed and _keypoints_held(run, i) and _keypoints_held(ref, j):
                kp_err = [max(a, b) for a, b in zip(kp_err, floor_errors(run, i, ref, j, frame), strict=True)]
        if len(ref):
            scale = max(scale, float(np.abs(ref.boxes).max()))
    if not matched:
        return None
    floor = DetectionFloor(max(box_err, FLOAT32_EPS * max(scale, 1.0)), max(score_err, FLOAT32_EPS * SCORE_SCALE),
                           matched)
    if masked:
        floor = replace(floor, masks=max(mask_err, FLOAT32_EPS * SCORE_SCALE),
                        mask_head=max(head_err, FLOAT32_EPS * max(logit_scale, 1.0)))
    if keyed:
        floor = replace(floor, keypoints=max(kp_err[0], FLOAT32_EPS * max(scale, 1.0)),
                        keypoint_scores=max(kp_err[1], FLOAT32_EPS * SCORE_SCALE),
                        keypoint_head=max(kp_err[2], FLOAT32_EPS * max(kp_err[3], 1.0)))
    return floor


def _masks_held(found: Detections, k: int) -> bool:
    """Whether detection `k` has a mask and a mask-head row (the arrays hold one per detection)."""
    return (found.masks is not None and found.mask_logits is not None and len(found.masks) == len(found)
            and len(found.mask_logits) == len(found) and 0 <= k < len(found))


def _keypoints_held(found: Detections, k: int) -> bool:
    """Whether detection `k` has keypoints, scores and a heatmap-logit row (the arrays hold one per detection)."""
    arrays = (found.keypoints, found.keypoint_scores, found.keypoint_logits)
    return all(a is not None and len(a) == len(found) for a in arrays) and 0 <= k < len(found)


@dataclass
class _Unmatched:
    """A detection of one side without a partner on the other."""

    image: int
    side: str
    """Where the detection is: `run` (an extra one) or `reference` (one the run lacks)."""
    label: int
    score: float
    box: list[float]
    reason: str


@dataclass
class Borderline(_Unmatched):
    """An unmatched detection that float32 rounding explains; `reason` is `score threshold`, `detections cap`
    or `NMS`."""

    detail: str

    def describe(self) -> str:
        return f"image {self.image}: {self.side} detection of class {self.label} (score {self.score:.6g}): " \
               f"{self.reason}, {self.detail}"


@dataclass
class Unexplained(_Unmatched):
    """An unmatched detection that rounding does not explain; `reason` says why."""

    def describe(self) -> str:
        return f"image {self.image}: {self.side} detection of class {self.label} (score {self.score:.6g}) " \
               f"unmatched: {self.reason}"


@dataclass
class DetectionPair:
    """The after-NMS verdict of run `a` against reference `b`."""

    a: str
    b: str
    factor: float
    floor: DetectionFloor
    matched_per_image: list[int] = field(default_factory=list)
    reference_per_image: list[int] = field(default_factory=list)
    borderline: list[Borderline] = field(default_factory=list)
    unexplained: list[Unexplained] = field(default_factory=list)
    label_mismatches: int = 0
    worst_box_ratio: float = 0.0
    worst_score_ratio: float = 0.0
    worst_image: int | None = None
    """The image with the largest ratio (or the first with an unexplained detection)."""
    worst_mask_ratio: float = 0.0
    """Mask R-CNN: the largest |a - b| of a matched pair's pasted masks, in mask floors."""
    worst_mask_head_ratio: float = 0.0
    """Mask R-CNN: the largest |a - b| of a matched pair's mask-head logits (its label's), in mask-head floors."""
    paste_borderline: list[str] = field(default_factory=list)
    """Mask R-CNN: matched pairs whose masks rounding pasted at other pixels (judged on their mask head alone)."""
    mask_problems: list[str] = field(default_factory=list)
    """Mask R-CNN: a side without a mask per detection (each a failure)."""
    keypoint_judgement: KeypointJudgement = field(default_factory=KeypointJudgement)
    """Keypoint R-CNN: its matched detections' keypoints, scores and heatmap logits (verify/detect/keypoints.py)."""

    @property
    def matched(self) -> int:
        return sum(self.matched_per_image)

    @property
    def masks_judged(self) -> bool:
        return self.floor.masks is not None

    @property
    def keypoints_judged(self) -> bool:
        return self.floor.keypoints is not None

    @property
    def passed(self) -> bool:
        return (self.matched > 0 and not self.unexplained and self.label_mismatches == 0
                and self.worst_box_ratio <= self.factor and self.worst_score_ratio <= self.factor
                and not self.mask_problems and self.worst_mask_ratio <= self.factor
                and self.worst_mask_head_ratio <= self.factor and self.keypoint_judgement.passed(self.factor))

    @property
    def status(self) -> str:
        if self.passed:
            return "matched with borderline" if self.borderline else "matched"
        return "unmatched" if self.unexplained or not self.matched else "differs"

    def reasons(self) -> list[str]:
        out = []
        if not sum(self.reference_per_image):
            out.append("the reference has no detections: nothing to judge")
        elif not self.matched:
            out.append("no detection matched one of the reference's: nothing to judge")
        if self.worst_box_ratio > self.factor:
            out.append(_over("boxes", self.worst_box_ratio, self.floor.boxes, self.factor))
        if self.worst_score_ratio > self.factor:
            out.append(_over("scores", self.worst_score_ratio, self.floor.scores, self.factor))
        if self.masks_judged and self.worst_mask_ratio > self.factor:
            out.append(_over("masks", self.worst_mask_ratio, self.floor.masks, self.factor))
        if self.masks_judged and self.worst_mask_head_ratio > self.factor:
            out.append(_over("mask head logits", self.worst_mask_head_ratio, self.floor.mask_head, self.factor))
        out += self.mask_problems[:1]
        if self.keypoints_judged:
            out += self.keypoint_judgement.reasons(self.factor, self.floor, _over)
        if self.label_mismatches:
            out.append(f"{self.label_mismatches} boxes with another label")
        if self.unexplained:
            out.append(f"{len(self.unexplained)} unmatched detections rounding does not explain "
                       f"(first: {self.unexplained[0].describe()})")
        return out

    def verdict(self) -> str:
        head = f"{self.a} vs {self.b}: {self.matched} of {sum(self.reference_per_image)} detections matched"
        if self.passed:
            masks = f", mask {self.worst_mask_ratio:.1f}x, mask head {self.worst_mask_head_ratio:.1f}x" \
                if self.masks_judged else ""
            if self.keypoints_judged:
                masks += self.keypoint_judgement.summary()
            tail = f", worst box {self.worst_box_ratio:.1f}x, score {self.worst_score_ratio:.1f}x{masks} the floor"
            if self.borderline:
                tail += f"; {len(self.borderline)} borderline ({self.borderline[0].reason})"
            if self.paste_borderline:
                tail += f"; {len(self.paste_borderline)} mask(s) pasted at other pixels by rounding (mask head judged)"
            if self.keypoint_judgement.argmax_borderline:
                tail += (f"; {len(self.keypoint_judgement.argmax_borderline)} keypoint(s) whose argmax rounding moved "
                         "to a nearly equal maximum (keypoint head judged)")
            return head + tail
        return head + "; " + "; ".join(self.reasons())

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "passed": self.passed, "status": self.status, "factor": self.factor,
                "floor": self.floor.to_dict(), "matched": self.matched,
                "matched_per_image": self.matched_per_image, "reference_per_image": self.reference_per_image,
                "worst_box_ratio": _finite(self.worst_box_ratio), "worst_score_ratio": _finite(self.worst_score_ratio),
                "worst_image": self.worst_image, "label_mismatches": self.label_mismatches,
                "borderline": [{**asdict(b), "text": b.describe()} for b in self.borderline],
                "unexplained": [{**asdict(u), "text": u.describe()} for u in self.unexplained],
                **({"worst_mask_ratio": _finite(self.worst_mask_ratio),
                    "worst_mask_head_ratio": _finite(self.worst_mask_head_ratio),
                    "paste_borderline": self.paste_borderline, "mask_problems": self.mask_problems}
                   if self.masks_judged else {}),
                **(self.keypoint_judgement.to_dict() if self.keypoints_judged else {}),
                "verdict": self.verdict()}


def _over(what: str, ratio: float, floor: float, factor: float) -> str:
    if not math.isfinite(ratio):
        return f"{what} of matched detections are not finite numbers (NaN or infinite)"
    return f"{what} {ratio:.1f}x the floor ({floor:.3g}), over {factor:g}x"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def compare_detections(a_label: str, a: Sequence[Detections], b_label: str, b: Sequence[Detections],
                       floor: DetectionFloor, rules: Rules, candidates: Sequence[Detections] | None = None,
                       factor: float = AUTO_FACTOR,
                       scales: Sequence[tuple[float, float]] | None = None,
                       below_threshold: Sequence[Detections] | None = None) -> DetectionPair:
    """Judge run `a` against reference `b` (one Detections per image). `candidates` are the oracle's
    float64 inputs to the final NMS per image (to recompute NMS decisions); without them an NMS decision
    is recomputed on the detections' own boxes. `scales`: per image, (x, y) from the candidates' frame (the
    detector's resized image) to the detections' (torchvision's `resize_boxes`); with them, a detection of run `a`
    alone is a `detections cap` or `NMS` borderline only if a float64 candidate has its class, box and score within
    rounding (a box the model never proposed is no rounding). `below_threshold`: per image, the oracle's final-NMS
    inputs recorded with a lower score threshold; with them (and `scales`), a `score threshold` borderline of run `a`
    must be one of them up to rounding too (without them it is not asked: its float64 twin fell under the threshold,
    before `candidates` were recorded)."""
    pair = DetectionPair(a_label, b_label, factor, floor)
    if len(a) != len(b):
        pair.reference_per_image = [len(d) for d in b]
        pair.unexplained.append(Unexplained(0, "run", -1, math.nan, [], f"{len(a)} images against {len(b)}"))
        return pair
    worst = -1.0
    for image, (run, ref) in enumerate(zip(a, b, strict=True)):
        cands = candidates[image] if candidates is not None else None
        scale = scales[image] if scales is not None else None
        below = below_threshold[image] if below_threshold is not None else None
        ratio = _judge_image(pair, image, run, ref, floor, rules, cands, factor, scale, below)
        if ratio > worst or (pair.worst_image is None and pair.unexplained):
            worst, pair.worst_image = ratio, image
    return pair


def _judge_image(pair: DetectionPair, image: int, run: Detections, ref: Detections, floor: DetectionFloor,
                 rules: Rules, candidates: Detections | None, factor: float,
                 scale: tuple[float, float] | None = None, below: Detections | None = None) -> float:
    import numpy as np

    pairs = assign(run, ref)
    pair.matched_per_image.append(len(pairs))
    pair.reference_per_image.append(len(ref))
    worst = 0.0
    masked = floor.masks is not None and _masks_present(pair, image, run, ref)
    keyed = floor.keypoints is not None and pair.keypoint_judgement.present(image, (pair.a, pair.b), run, ref)
    for i, j, _ in pairs:
        box = _ratio(float(np.abs(run.boxes[i] - ref.boxes[j]).max()), floor.boxes)
        score = _ratio(abs(float(run.scores[i] - ref.scores[j])), floor.scores)
        pair.worst_box_ratio = max(pair.worst_box_ratio, box)
        pair.worst_score_ratio = max(pair.worst_score_ratio, score)
        worst = max(worst, box, score)
        if masked:
            worst = max(worst, _judge_masks(pair, image, run, i, ref, j, floor, min(factor, EXPLAIN_FACTOR)))
        if keyed:
            worst = max(worst, pair.keypoint_judgement.judge(image, run, i, ref, j, floor, min(factor, EXPLAIN_FACTOR),
                                                             scale))
    lone_run = sorted(set(range(len(run))) - {i for i, _, _ in pairs})
    lone_ref = sorted(set(range(len(ref))) - {j for _, j, _ in pairs})
    pair.label_mismatches += _label_mismatches(run.take(lone_run), ref.take(lone_ref))
    context = _Context(image, floor, rules, candidates, factor, scale, below)
    before = len(pair.unexplained)
    for side, mine, other, lone in (("run", run, ref, lone_run), ("reference", ref, run, lone_ref)):
        for k in lone:
            found = context.explain(side, mine, k, other)
            if isinstance(found, Borderline):
                pair.borderline.append(found)
            else:
                pair.unexplained.append(found)
    return math.inf if len(pair.unexplained) > before else worst


def _masks_present(pair: DetectionPair, image: int, run: Detections, ref: Detections) -> bool:
    """Whether both sides hold a mask and a mask-head row per detection; else a mask problem of the pair (a failure:
    a Mask R-CNN run without its masks is never judged on its boxes alone)."""
    for found, label in ((run, pair.a), (ref, pair.b)):
        if not len(found):
            continue
        if found.masks is None or found.mask_logits is None:
            pair.mask_problems.append(f"image {image}: {label} gives no "
                                      f"{'masks' if found.masks is None else 'mask head output'} to judge")
            return False
        if len(found.masks) != len(found) or len(found.mask_logits) != len(found) or found.masks.ndim != 3 \
                or found.mask_logits.ndim != 3:
            pair.mask_problems.append(f"image {image}: {label} gives masks of {list(found.masks.shape)} and a mask "
                                      f"head output of {list(found.mask_logits.shape)} for {len(found)} detections")
            return False
    return True


def _judge_masks(pair: DetectionPair, image: int, run: Detections, i: int, ref: Detections, j: int,
                 floor: DetectionFloor, band_factor: float) -> float:
    """One matched pair's masks (verify/detect/masks.py): the mask head's logits always, the pasted masks pixel by
    pixel unless rounding pasted them at other pixels (named in `paste_borderline`); the larger ratio."""
    from verify.detect.masks import max_abs, paste_shift

    assert floor.masks is not None and floor.mask_head is not None
    assert run.masks is not None and run.mask_logits is not None and ref.masks is not None
    assert ref.mask_logits is not None
    head = _ratio(max_abs(run.mask_logits[i], ref.mask_logits[j]), floor.mask_head)
    pair.worst_mask_head_ratio = max(pair.worst_mask_head_ratio, head)
    alike, why = paste_shift(run.boxes[i], run.masks.dtype, ref.boxes[j], ref.masks.dtype, ref.mask_logits.shape[-1],
                             band_factor * floor.boxes)
    if not alike and why.startswith("rounding"):
        pair.paste_borderline.append(f"image {image}: class {int(ref.labels[j])} detection's mask {why}")
        return head
    mask = _ratio(max_abs(run.masks[i], ref.masks[j]), floor.masks)
    pair.worst_mask_ratio = max(pair.worst_mask_ratio, mask)
    return max(head, mask)


def _ratio(error: float, floor: float) -> float:
    """`error` in floors; a NaN error (a NaN score or coordinate) is infinitely far, never max()'s ignored operand."""
    return error / floor if not math.isnan(error) else math.inf


def _label_mismatches(run: Detections, ref: Detections) -> int:
    """Unmatched boxes that pair up across classes: the same object with another label."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    if not len(run) or not len(ref):
        return 0
    iou = iou_matrix(run.boxes, ref.boxes)
    rows, cols = linear_sum_assignment(1.0 - iou)
    return int(sum(1 for r, c in zip(rows, cols, strict=True)
                   if iou[r, c] >= MATCH_IOU and run.labels[r] != ref.labels[c] and np.isfinite(iou[r, c])))


@dataclass
class _Context:
    image: int
    floor: DetectionFloor
    rules: Rules
    candidates: Detections | None
    factor: float
    scale: tuple[float, float] | None = None
    """(x, y) from the candidates' frame to the detections' (None: unknown, no candidate is asked for)."""
    below: Detections | None = None
    """The oracle's final-NMS inputs recorded with a lower score threshold (None: not recorded, a `score threshold`
    borderline is not asked for its candidate)."""

    @property
    def band_factor(self) -> float:
        return min(self.factor, EXPLAIN_FACTOR)

    @property
    def score_band(self) -> float:
        return self.band_factor * self.floor.scores

    def explain(self, side: str, mine: Detections, k: int, other: Detections) -> Borderline | Unexplained:
        label, score, box = int(mine.labels[k]), float(mine.scores[k]), mine.boxes[k]
        refused = self._invalid(score, box) or self._over_cap(mine) or self._duplicate(mine, k)
        if refused:
            return Unexplained(self.image, side, label, score, [float(v) for v in box], refused)
        found = self._threshold(score) or self._cap(score, other) or self._nms(label, score, box, other)
        if found and side == "run":
            refused = self._unproposed(label, score, box, self.below if found[0] == "score threshold"
                                       else self.candidates)
            if refused:
                return Unexplained(self.image, side, label, score, [float(v) for v in box],
                                   f"{found[0]} would explain it, but {refused}")
        if found:
            return Borderline(self.image, side, label, score, [float(v) for v in box], *found)
        why = f"score {score:.6g} is {(score - self.rules.score_thresh) / self.floor.scores:.3g} floors above the " \
              f"threshold {self.rules.score_thresh:g}, and no NMS decision or cap within rounding explains it"
        return Unexplained(self.image, side, label, score, [float(v) for v in box], why)

    @staticmethod
    def _invalid(score: float, box: np.ndarray) -> str | None:
        import numpy as np

        if not (math.isfinite(score) and np.isfinite(box).all()):
            return "its box or score is not a finite number"
        return None

    def _over_cap(self, mine: Detections) -> str | None:
        if len(mine) > self.rules.detections_per_img:
            return f"its side kept {len(mine)} detections, more than the model keeps per image " \
                   f"({self.rules.detections_per_img})"
        return None

    def _duplicate(self, mine: Detections, k: int) -> str | None:
        """A same-class detection of the same side overlapping this one past the NMS threshold (beyond rounding):
        the model's NMS keeps no such two, so one is a duplicate, whatever its score."""
        import numpy as np

        same = np.flatnonzero(mine.labels == mine.labels[k])
        same = same[same != k]
        if not len(same):
            return None
        error = self._box_error()
        iou = iou_matrix(mine.boxes[k][None], mine.boxes[same])[0]
        for index, value in zip(same, iou, strict=True):
            if value > self.rules.nms_thresh + iou_band(mine.boxes[k], mine.boxes[index], error):
                return (f"it overlaps another class-{int(mine.labels[k])} detection of the same run at IoU "
                        f"{value:.6f}, past the NMS threshold {self.rules.nms_thresh:g}: NMS keeps no such two "
                        "(a duplicate)")
        return None

    def _unproposed(self, label: int, score: float, box: np.ndarray, cands: Detections | None) -> str | None:
        """Why no float64 candidate of the final NMS (in the detections' frame) is this run detection up to rounding:
        same class, score within the score band, every coordinate within the box band. A cap or NMS decision that
        rounding flips only keeps or drops a detection the model proposed; a runtime that moved its lowest kept box
        40 px (or made one up) at that score passed as two `detections cap` borderlines. A `score threshold` one is
        asked of `below` (in float64 it fell under the threshold, before `candidates` were recorded; hunt 19a: a
        run-only detection at the threshold passed whatever its box); with no such candidates recorded, not asked."""
        import numpy as np

        if cands is None or self.scale is None:
            return None
        same = np.flatnonzero(cands.labels == label)
        if len(same):
            sx, sy = self.scale
            boxes = cands.boxes[same] * np.array([sx, sy, sx, sy])
            slack = self.band_factor * self.floor.boxes + FLOAT32_EPS * max(float(np.abs(boxes).max()), 1.0)
            near = (np.abs(boxes - box).max(axis=1) <= slack) & (np.abs(cands.scores[same] - score) <= self.score_band)
            if near.any():
                return None
        which = " (recorded with a lower score threshold)" if cands is self.below else ""
        return (f"no float64 candidate of the model's final NMS{which} has its class, box and score within rounding "
                f"({len(same)} of class {label}): rounding does not make a box up")

    def _box_error(self) -> float:
        """How far rounding can move a coordinate the NMS compares (the offset boxes of batched NMS)."""
        return self.band_factor * self.floor.boxes + FLOAT32_EPS * self._offset_scale()

    def _threshold(self, score: float) -> tuple[str, str] | None:
        gap = abs(score - self.rules.score_thresh)
        if gap <= self.score_band:
            return "score threshold", f"{gap / self.floor.scores:.2g} floors from the threshold " \
                                      f"{self.rules.score_thresh:g}"
        return None

    def _cap(self, score: float, other: Detections) -> tuple[str, str] | None:
        if len(other) < self.rules.detections_per_img or not len(other):
            return None
        lowest = float(other.scores.min())
        gap = abs(score - lowest)
        if gap <= self.score_band:
            return "detections cap", f"the other side is full ({self.rules.detections_per_img}) and its lowest " \
                                     f"kept score {lowest:.6g} is {gap / self.floor.scores:.2g} floors away"
        return None

    def _nms(self, label: int, score: float, box: np.ndarray, other: Detections) -> tuple[str, str] | None:
        """Recompute, in float64, the NMS decision between this detection and each same-class detection
        the other side kept with a score as high (within rounding)."""
        import numpy as np

        mine64 = self._float64(label, box)
        keepers = np.flatnonzero((other.labels == label) & (other.scores >= score - self.score_band))
        error = self._box_error()
        for k in keepers:
            theirs64 = self._float64(label, other.boxes[k])
            iou = float(iou_matrix(mine64[None], theirs64[None])[0, 0])
            band = iou_band(mine64, theirs64, error)
            if abs(iou - self.rules.nms_thresh) <= band:
                return "NMS", f"float64 IoU {iou:.9f} with a kept class-{label} box is within {band:.2g} of " \
                              f"the NMS threshold {self.rules.nms_thresh:g}"
        return None

    def _float64(self, label: int, box: np.ndarray) -> np.ndarray:
        """The oracle's float64 candidate for `box` (same class, largest IoU), or `box` itself."""
        import numpy as np

        cands = self.candidates
        if cands is None or not len(cands):
            return box
        same = np.flatnonzero(cands.labels == label)
        if not len(same):
            return box
        iou = iou_matrix(box[None], cands.boxes[same])[0]
        best = int(np.argmax(iou))
        return cands.boxes[same[best]] if iou[best] >= MATCH_IOU else box

    def _offset_scale(self) -> float:
        """torchvision's batched NMS offsets each class's boxes by label x (max coordinate + 1), and
        rounds the offset boxes: that magnitude sets float32's rounding of the IoU."""
        cands = self.candidates
        if cands is None or not len(cands):
            return 0.0
        top = float(abs(cands.boxes).max()) + 1.0
        return top * (int(cands.labels.max()) + 1)
