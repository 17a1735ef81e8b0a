"""The final NMS's inputs (each candidate's decoded box, score and class) of a run judged against a reference's, paired
as the RPN's proposals are (verify/detect/proposals.py): RetinaNet and SSDlite (hunt 20a), Faster R-CNN (hunt 21a).

Their box decoding (the box coder's weights and clamp, the anchors as the decoding reads them) was judged after NMS
only: a decoding bug that moved only candidates the NMS then suppresses agreed (hunt 20a: SSDlite's level-2 anchors
5 % off between the anchor generator and the decoding exited 0). Per image and per class, the candidates of the two
runs are paired by optimal assignment on their largest coordinate difference (a score difference counts at the
boxes' scale, so two candidates with one clipped box stay apart), a pair only where IoU >= PAIR_IOU; the paired boxes
and scores are judged as the tensors BOXES and SCORES on floors measured the same way on eager float32 against float64.
A candidate in one run only passes only when rounding explains it, each case named:
- `score threshold`: its score within the band of the score threshold (on the run's side, also one of the float64
  inputs recorded below the threshold, box and score within rounding, where they were recorded);
- `top-k cut`: a candidate of the run only and one of the reference only swapped at a per-level (RetinaNet) or
  per-class (SSDlite) top-k cut: both scores within the band of the lowest score of a sorted block of the reference's
  candidates (the one the reference's own candidate sits in), and of each other. Faster R-CNN has no top-k before
  its final NMS (every proposal's every class above the score threshold is a candidate): never there;
- `proposal in one run only` (Faster R-CNN, hunt 21a): its score within the band of its class's probability (softmax
  of the box head's class logits, as the side computed them) of a proposal on its side in one run only that the RPN's
  rounding explains (verify/detect/proposals.py `explain_unpaired`): that proposal's candidates are in one run only
  too; and its box within rounding of its class's box decoded from that proposal's own row (hunt 22a);
- `small box` (Faster R-CNN, hunt 22a): one of the side's own candidates (its rows decoded) whose smaller side is within
  rounding of SMALL_BOX, under which the other side's rounding can have dropped it.
Anything else fails, as one problem of the report naming the first such candidate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from verify.detect.match import EXPLAIN_FACTOR, Detections, iou_matrix
from verify.detect.proposals import PAIR_IOU, UNPAIRABLE_COST
from verify.judge.noise_floor import FLOAT32_EPS

if TYPE_CHECKING:
    import numpy as np

NMS_INPUTS = "final_nms"
BOXES, SCORES = f"{NMS_INPUTS}.boxes", f"{NMS_INPUTS}.scores"
"""The names under which paired candidates are judged like any dense tensor (`@HxW` added for images of several
sizes, as concat_dense names them)."""
CLASS_LOGITS = "roi_heads.box_predictor.cls_score#0"
"""Faster R-CNN's box-head class logits, one row per proposal: a candidate's score is its class's softmax."""
SMALL_BOX = 1e-2
"""torchvision's RoIHeads.postprocess_detections drops candidates with a side under this (remove_small_boxes)."""
BOX_REGRESSION = "roi_heads.box_predictor.bbox_pred#0"
"""Faster R-CNN's box-head regression, one row per proposal (4 codes a class): a candidate's box is its class's codes
decoded on its proposal (BoxCoding)."""


@dataclass(frozen=True)
class NmsBands:
    """How far rounding can move a candidate's box coordinates and score."""

    boxes: float
    scores: float


def derive_nms_bands(floors: Mapping[str, float], factor: float) -> NmsBands:
    """`factor` (at most EXPLAIN_FACTOR) floors of the paired boxes and scores, the scores' plus one float32 rounding
    of a probability; 0 (nothing explained) without a floor."""
    factor = min(factor, EXPLAIN_FACTOR)
    boxes = [v for name, v in floors.items() if name.partition("@")[0] == BOXES]
    scores = [v for name, v in floors.items() if name.partition("@")[0] == SCORES]
    return NmsBands(factor * max(boxes) if boxes else 0.0,
                    factor * (max(scores) + FLOAT32_EPS) if scores else 0.0)


def pair_candidates(run: Detections, ref: Detections) -> list[tuple[int, int]]:
    """Optimal one-to-one pairs (index in run, index in ref) within each class, a pair only where IoU >= PAIR_IOU;
    sorted by the reference's index."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    pairs: list[tuple[int, int]] = []
    scale = max(1.0, float(np.abs(ref.boxes).max(initial=0.0)) if len(ref) else 1.0)
    for label in np.intersect1d(run.labels, ref.labels):
        i, j = np.flatnonzero(run.labels == label), np.flatnonzero(ref.labels == label)
        a, b = run.boxes[i], ref.boxes[j]
        cost = np.maximum(np.abs(a[:, None, :] - b[None, :, :]).max(axis=2),
                          np.abs(run.scores[i][:, None] - ref.scores[j][None, :]) * scale)
        rows, cols = linear_sum_assignment(np.nan_to_num(cost, nan=UNPAIRABLE_COST, posinf=UNPAIRABLE_COST))
        iou = iou_matrix(a, b)
        pairs += [(int(i[r]), int(j[c])) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= PAIR_IOU]
    return sorted(pairs, key=lambda p: p[1])


def paired_inputs(run: Sequence[Detections], ref: Sequence[Detections]) -> tuple[
        list[dict[str, np.ndarray]], list[dict[str, np.ndarray]], list[tuple[list[int], list[int]]]]:
    """Per image: both sides' paired boxes and scores (BOXES, SCORES) in the reference's order, and the unpaired
    indices (run, reference)."""
    import numpy as np

    mine, theirs, lone = [], [], []
    for found, reference in zip(run, ref, strict=True):
        pairs = pair_candidates(found, reference)
        i = np.array([p[0] for p in pairs], dtype=np.int64)
        j = np.array([p[1] for p in pairs], dtype=np.int64)
        mine.append({BOXES: found.boxes[i].reshape(-1, 4), SCORES: found.scores[i]})
        theirs.append({BOXES: reference.boxes[j].reshape(-1, 4), SCORES: reference.scores[j]})
        lone.append((sorted(set(range(len(found))) - set(i.tolist())),
                     sorted(set(range(len(reference))) - set(j.tolist()))))
    return mine, theirs, lone


def block_lows(scores: np.ndarray) -> np.ndarray:
    """Per candidate, the lowest score of the sorted block it sits in: torchvision concatenates each level's (RetinaNet)
    or class's (SSD) top-k, highest first, so a block ends where the next score rises."""
    import numpy as np

    if not len(scores):
        return scores.copy()
    starts = np.concatenate([[True], scores[1:] > scores[:-1]])
    block = np.cumsum(starts) - 1
    ends = np.concatenate([np.flatnonzero(starts)[1:] - 1, [len(scores) - 1]])
    return scores[ends][block]


@dataclass(frozen=True)
class BoxCoding:
    """Faster R-CNN's box head decoding (torchvision's BoxCoder of its RoIHeads): the weights of (dx, dy, dw, dh) and
    the clamp of dw and dh before exp."""

    weights: tuple[float, float, float, float]
    clip: float

    @classmethod
    def of(cls, coder: object) -> BoxCoding:
        """From a torchvision BoxCoder."""
        return cls(tuple(float(w) for w in coder.weights), float(coder.bbox_xform_clip))  # type: ignore[attr-defined]

    @classmethod
    def rcnn_default(cls) -> BoxCoding:
        """What torchvision's Faster R-CNN builders give their RoIHeads (no bbox_reg_weights: RoIHeads' own default),
        taken from torchvision's code, not copied: a folder's goldens are re-checked against it (folder.py)."""
        from torchvision.models.detection.roi_heads import RoIHeads

        heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100)
        return cls.of(heads.box_coder)

    def decode(self, codes: np.ndarray, proposals: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Each proposal's box per class (P x C x 4, float64), decoded from its box-regression row (P x 4C) and clipped
        to the transformed image's `size` (H, W), as RoIHeads.postprocess_detections does."""
        import numpy as np
        import torch
        from torchvision.models.detection._utils import BoxCoder
        from torchvision.ops import boxes as box_ops

        classes = int(np.asarray(codes).shape[-1]) // 4 if np.asarray(codes).ndim == 2 else 0
        if not len(proposals):  # an image the RPN kept no proposal for
            return np.zeros((0, classes, 4))
        coder = BoxCoder(self.weights, self.clip)
        rows = torch.as_tensor(np.asarray(codes, dtype=np.float64)).reshape(len(proposals), -1)
        boxes = coder.decode(rows, [torch.as_tensor(np.asarray(proposals, dtype=np.float64)).reshape(-1, 4)])
        return box_ops.clip_boxes_to_image(boxes, size).numpy()


@dataclass(frozen=True)
class LoneProposals:
    """Faster R-CNN: per image, the class probabilities (one row per proposal, softmax of the box head's logits) of
    the proposals in one run only that the RPN's rounding explains, on each side of a pairing; and their boxes per
    class as the box coder decodes them from the side's own rows (P x C x 4; `lone_proposal_boxes`), which a candidate
    carried through from one must be, within rounding (hunt 22a: its box was not asked, so a run's candidate of a lone
    proposal moved 5 px passed). None: boxes not asked (a caller that has no rows to decode them from)."""

    run: list[np.ndarray]
    ref: list[np.ndarray]
    run_boxes: list[np.ndarray] | None = None
    ref_boxes: list[np.ndarray] | None = None
    run_small: list[Detections] | None = None
    ref_small: list[Detections] | None = None
    """Per image, the side's own candidates (its rows decoded, `near_small_box`) with a side within rounding of
    SMALL_BOX: a candidate in one run only that is one of them is a `small box` borderline (hunt 22a). None: none."""


def lone_proposal_probabilities(per_image: Sequence[Mapping[str, np.ndarray]],
                                rows: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Per image, the float64 softmax of CLASS_LOGITS's `rows` (a side's explained lone proposals, in its own order);
    an image without them gives none (nothing explained)."""
    import numpy as np

    found = []
    for image, indices in enumerate(rows):
        logits = per_image[image].get(CLASS_LOGITS) if image < len(per_image) else None
        if logits is None or not len(indices) or logits.ndim != 2 or max(indices) >= len(logits):
            found.append(np.zeros((0, 0)))
            continue
        chosen = np.asarray(logits, dtype=np.float64)[list(indices)]
        shifted = np.exp(chosen - chosen.max(axis=1, keepdims=True))
        found.append(shifted / shifted.sum(axis=1, keepdims=True))
    return found


def rcnn_candidates(rows: Mapping[str, np.ndarray], proposals: np.ndarray, coding: BoxCoding, size: tuple[int, int],
                    score_thresh: float, small_box: float) -> Detections:
    """Faster R-CNN's final-NMS inputs of one image as RoIHeads.postprocess_detections makes them from its box head's
    rows (CLASS_LOGITS, BOX_REGRESSION, one per proposal): each proposal's box per class decoded by `coding` and
    clipped to the transformed image's `size`, the softmax, the background dropped, the score threshold, the boxes
    with a side under `small_box` dropped; in the rows' precision."""
    import numpy as np
    import torch
    from torchvision.ops import boxes as box_ops

    logits = torch.as_tensor(np.asarray(rows[CLASS_LOGITS]))
    boxes = torch.as_tensor(coding.decode(rows[BOX_REGRESSION], proposals, size))[:, 1:].reshape(-1, 4)
    scores = torch.nn.functional.softmax(logits, -1)[:, 1:].reshape(-1)
    labels = torch.arange(logits.shape[-1]).view(1, -1).expand_as(logits)[:, 1:].reshape(-1)
    inds = torch.where(scores > score_thresh)[0]
    boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
    keep = box_ops.remove_small_boxes(boxes, min_size=small_box)
    return Detections(boxes[keep].numpy(), scores[keep].numpy(), labels[keep].numpy())


def near_small_box(rows: Mapping[str, np.ndarray], proposals: np.ndarray, coding: BoxCoding | None,
                   size: tuple[int, int] | None, score_thresh: float, bands: NmsBands) -> Detections:
    """One side's candidates of one image (its box head's rows decoded by `coding`, every proposal, scores within the
    band of the threshold included) whose smaller side is within rounding of SMALL_BOX (two box bands: a side is the
    difference of two coordinates): those that rounding can keep in one run and drop in another. None without the
    coding, the size or the rows."""
    import numpy as np

    if coding is None or size is None or CLASS_LOGITS not in rows or BOX_REGRESSION not in rows \
            or rows[CLASS_LOGITS].ndim != 2 or len(rows[CLASS_LOGITS]) != len(proposals) \
            or len(rows[BOX_REGRESSION]) != len(proposals) or not bands.boxes:
        return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    found = rcnn_candidates(rows, proposals, coding, size, score_thresh - bands.scores, 0.0)
    sides = np.minimum(found.boxes[:, 2] - found.boxes[:, 0], found.boxes[:, 3] - found.boxes[:, 1])
    return found.take(np.flatnonzero(np.abs(sides - SMALL_BOX) <= 2 * bands.boxes))


def lone_proposal_boxes(per_image: Sequence[Mapping[str, np.ndarray]], proposals: Sequence[np.ndarray],
                        rows: Sequence[Sequence[int]], coding: BoxCoding | None,
                        sizes: Sequence[tuple[int, int]] | None) -> list[np.ndarray]:
    """Per image, the boxes per class (P x C x 4) that `coding` decodes from BOX_REGRESSION's `rows` (a side's explained
    lone proposals, in its own order) and those proposals' boxes, clipped to the image's transformed size; an image
    without them (or without the coding or sizes) gives none: a candidate's box is then never within rounding."""
    import numpy as np

    found = []
    for image, indices in enumerate(rows):
        codes = per_image[image].get(BOX_REGRESSION) if image < len(per_image) else None
        if coding is None or sizes is None or image >= len(sizes) or image >= len(proposals) or codes is None \
                or not len(indices) or codes.ndim != 2 or max(indices) >= min(len(codes), len(proposals[image])):
            found.append(np.zeros((0, 0, 4)))
            continue
        found.append(coding.decode(np.asarray(codes)[list(indices)], np.asarray(proposals[image])[list(indices)],
                                   sizes[image]))
    return found


def unexplained(lone: Sequence[tuple[list[int], list[int]]], run: Sequence[Detections], ref: Sequence[Detections],
                score_thresh: float, below: Sequence[Detections] | None, bands: NmsBands,
                proposals: LoneProposals | None = None) -> list[str]:
    """Each candidate in one run only that rounding does not explain (see the module's rules), one line each.
    `proposals`: Faster R-CNN's explained lone proposals (its candidates then have no top-k cut); None: a detector
    without an RPN."""
    import numpy as np

    problems: list[str] = []
    cut = "" if proposals is not None else " or a top-k cut"
    for image, (run_only, ref_only) in enumerate(lone):
        found, reference = run[image], ref[image]
        lows = block_lows(reference.scores)
        cuts = np.unique(lows) if proposals is None else lows[:0]
        swaps_run, swaps_ref = [], []
        for k in run_only:
            score = float(found.scores[k])
            if abs(score - score_thresh) <= bands.scores and _recorded(found, k, below, image, bands):
                continue
            if proposals is not None and (_from_lone_proposal(found, k, proposals.run, proposals.run_boxes, image,
                                                              bands)
                                          or _at_small_box(found, k, proposals.run_small, image, bands)):
                continue
            if len(cuts) and float(np.abs(cuts - score).min()) <= bands.scores:
                swaps_run.append((score, k))
                continue
            problems.append(_where(image, "run", found, k) + f": not within rounding of the score threshold{cut} (or "
                            "not one of the float64 inputs recorded below the threshold)"
                            + (", nor from a proposal in one run only, nor at the small-box limit"
                               if proposals is not None else ""))
        for k in ref_only:
            score = float(reference.scores[k])
            if abs(score - score_thresh) <= bands.scores:
                continue
            if proposals is not None:
                if _from_lone_proposal(reference, k, proposals.ref, proposals.ref_boxes, image, bands) \
                        or _at_small_box(reference, k, proposals.ref_small, image, bands):
                    continue
            elif abs(score - float(lows[k])) <= bands.scores:
                swaps_ref.append((score, k))
                continue
            why = "nor from a proposal in one run only, nor at the small-box limit" if proposals is not None \
                else "or of its top-k cut"
            problems.append(_where(image, "reference", reference, k)
                            + f": not within rounding of the score threshold {why}")
        problems += _unswapped(image, sorted(swaps_run), sorted(swaps_ref), found, reference, bands)
    return problems


def _from_lone_proposal(found: Detections, k: int, probabilities: Sequence[np.ndarray],
                        boxes: Sequence[np.ndarray] | None, image: int, bands: NmsBands) -> bool:
    """Whether candidate `k` is, within rounding, its class's probability and (where `boxes` are asked) its class's
    decoded box of one of the side's explained proposals in one run only (LoneProposals)."""
    import numpy as np

    if image >= len(probabilities):
        return False
    table, label = probabilities[image], int(found.labels[k])
    if not table.size or not 0 <= label < table.shape[1]:
        return False
    near = np.abs(table[:, label] - float(found.scores[k])) <= bands.scores
    if boxes is not None:
        decoded = boxes[image] if image < len(boxes) else np.zeros((0, 0, 4))
        if decoded.shape[:2] != table.shape:
            return False
        near &= np.abs(decoded[:, label] - found.boxes[k]).max(axis=1) <= bands.boxes
    return bool(near.any())


def _at_small_box(found: Detections, k: int, small: Sequence[Detections] | None, image: int, bands: NmsBands) -> bool:
    """Whether candidate `k` is, within rounding (class, box, score), one of the side's own decoded candidates whose
    smaller side is within rounding of SMALL_BOX (`near_small_box`): the other side's rounding can have put it under
    the limit (a `small box` borderline)."""
    import numpy as np

    if small is None or image >= len(small) or not len(small[image]):
        return False
    near = small[image]
    return bool(((near.labels == found.labels[k])
                 & (np.abs(near.boxes - found.boxes[k]).max(axis=1) <= bands.boxes)
                 & (np.abs(near.scores - found.scores[k]) <= bands.scores)).any())


def _recorded(found: Detections, k: int, below: Sequence[Detections] | None, image: int, bands: NmsBands) -> bool:
    """Whether the run's candidate `k` is one of the float64 inputs recorded below the score threshold (True where
    none were recorded: the report then fails on their absence)."""
    import numpy as np

    if below is None:
        return True
    if image >= len(below):
        return False
    low = below[image]
    same = low.labels == found.labels[k]
    near = (np.abs(low.boxes - found.boxes[k]).max(axis=1, initial=0.0) <= bands.boxes) & \
        (np.abs(low.scores - found.scores[k]) <= bands.scores)
    return bool((same & near).any())


def _unswapped(image: int, run: list[tuple[float, int]], ref: list[tuple[float, int]], found: Detections,
               reference: Detections, bands: NmsBands) -> list[str]:
    """A top-k swap trades one candidate for another: the two sides' cut candidates paired in score order, each pair
    within the score band; any left over is unexplained."""
    problems = []
    while run and ref:
        a, b = run[0][0], ref[0][0]
        if abs(a - b) <= 2 * bands.scores:
            run.pop(0)
            ref.pop(0)
        elif a < b:
            problems.append(_where(image, "run", found, run.pop(0)[1]) + ": at a top-k cut, but no candidate of the "
                            "reference only swapped with it")
        else:
            problems.append(_where(image, "reference", reference, ref.pop(0)[1]) + ": at a top-k cut, but no "
                            "candidate of the run only swapped with it")
    problems += [_where(image, "run", found, k) + ": at a top-k cut, but no candidate of the reference only swapped "
                 "with it" for _, k in run]
    problems += [_where(image, "reference", reference, k) + ": at a top-k cut, but no candidate of the run only "
                 "swapped with it" for _, k in ref]
    return problems


def _where(image: int, side: str, found: Detections, k: int) -> str:
    box = ", ".join(f"{v:.6g}" for v in found.boxes[k])
    return f"image {image}: {side} candidate of class {int(found.labels[k])}, score {found.scores[k]:.9g}, box [{box}]"


def onnx_nms_inputs(model: object) -> tuple[str, str, str] | None:
    """The values the final batched NMS takes (boxes, scores, labels) in a legacy ONNX detector: the graph's `scores`
    and `labels` outputs are Gathers of the NMS's scores and labels by its kept indices, and its boxes are the one other
    Gather by those indices (before the transform scales them back); None where the graph is not so."""
    made = {out: node for node in model.graph.node for out in node.output}  # type: ignore[attr-defined]
    scores, labels = made.get("scores"), made.get("labels")
    if scores is None or labels is None or scores.op_type != "Gather" or labels.op_type != "Gather" \
            or scores.input[1] != labels.input[1]:
        return None
    kept = scores.input[1]
    boxes = {node.input[0] for node in model.graph.node  # type: ignore[attr-defined]
             if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == kept} \
        - {scores.input[0], labels.input[0]}
    return (boxes.pop(), scores.input[0], labels.input[0]) if len(boxes) == 1 else None
