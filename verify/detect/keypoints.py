"""Keypoint R-CNN's keypoints, judged per matched detection (verify/detect/match.py pairs them by IoU): each pair's
keypoints (x, y; torchvision's visibility column is always 1), their scores, and the keypoint head's heatmap logits
before the upsampling and the argmax (N x K x 28 x 28), each element-wise on its own floor measured the same way
(eager float32 against the float64 oracle, matched alike).

Why the logits too: a keypoint is the argmax of its heatmap resized to its box (`heatmaps_to_keypoints`), a discrete
cell; an error in the head that leaves the argmax in its cell moves no keypoint, and the score shows it at one cell of
the map only. The logits judge the whole head. The argmax itself: two nearly equal maxima can swap under rounding,
which moves the keypoint a whole cell (about a pixel, or far across the box) with no error anywhere. A keypoint whose
two sides chose other cells (or maps of other sizes) is named (`argmax_borderline`) and judged on its score and its
head alone only where rounding explains it: the reference's own heatmap, recomputed from its logits, holds at the
other side's cell a value within the band of the keypoint-score floor below its maximum (and a map size that differs,
its box's width or height within the box floor's band of a whole pixel); any other cell is judged on x, y (and fails).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

KEYPOINTS, KEYPOINT_SCORES, KEYPOINT_LOGITS = "keypoints", "keypoints_scores", "keypoint_logits"
"""Keypoint R-CNN's keypoints (N x K x 3) and their scores (N x K), its outputs, and its head's heatmap logits
(N x K x M x M, the predictor's transposed convolution's output, one row per detection)."""
UP_SCALE = 2
"""torchvision's KeypointRCNNPredictor upsamples its transposed convolution's logits x2 (bilinear) into heatmaps."""


def keypoint_names(count: int) -> list[str]:
    """The COCO person keypoints' names when there are 17 (torchvision's), else `keypoint <k>`."""
    from torchvision.models.detection.keypoint_rcnn import _COCO_PERSON_KEYPOINT_NAMES

    if count == len(_COCO_PERSON_KEYPOINT_NAMES):
        return list(_COCO_PERSON_KEYPOINT_NAMES)
    return [f"keypoint {k}" for k in range(count)]


def heatmaps(logits: np.ndarray, dtype: np.dtype) -> torch.Tensor:
    """The predictor's heatmaps from its transposed convolution's logits, as KeypointRCNNPredictor upsamples them."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(logits, dtype=dtype).copy())
    return F.interpolate(x, scale_factor=float(UP_SCALE), mode="bilinear", align_corners=False,
                         recompute_scale_factor=False)


def derived_keypoints(logits: np.ndarray, boxes: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Each detection's keypoints (N x K x 3) and scores (N x K) as torchvision's Keypoint R-CNN derives them from its
    head's logits (N x K x M x M) and its boxes, in `dtype` (torchvision returns them in float32 either way). Goldens
    keep the logits only; the keypoints are re-derived."""
    import numpy as np
    import torch
    from torchvision.models.detection.roi_heads import heatmaps_to_keypoints

    logits = np.asarray(logits)
    if not len(logits):
        count = logits.shape[1] if logits.ndim == 4 else 0
        return np.zeros((0, count, 3), dtype=np.float32), np.zeros((0, count), dtype=np.float32)
    rois = torch.from_numpy(np.asarray(boxes, dtype=dtype).reshape(-1, 4).copy())
    with torch.inference_mode():
        xy, scores = heatmaps_to_keypoints(heatmaps(logits, dtype), rois)
    return xy.numpy(), scores.numpy()


def in_frame(boxes: np.ndarray, keypoints: np.ndarray | None, scale: tuple[float, float]) -> tuple[np.ndarray, Any]:
    """Boxes (and keypoints' x, y) taken back into the detector's resized frame, where `heatmaps_to_keypoints` ran:
    `scale` is (x, y) from that frame to the image's (torchvision's `resize_boxes` / `resize_keypoints`)."""
    import numpy as np

    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / np.array([scale[0], scale[1]] * 2)
    if keypoints is None:
        return boxes, None
    return boxes, np.asarray(keypoints, dtype=np.float64)[..., :2] / np.array(scale)


def cells(keypoints: np.ndarray, boxes: np.ndarray,
          scale: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """(cells N x K x 2, map sizes N x 2): each keypoint's argmax cell (column, row) in its box's resized map and the
    map's width and height, recovered from the keypoint and its box as `heatmaps_to_keypoints` computed it
    (x = x1 + (column + 0.5) * width / ceil(width), the width at least 1), in the detector's resized frame."""
    import numpy as np

    boxes, xy = in_frame(boxes, keypoints, scale)
    sides = np.maximum(boxes[:, 2:] - boxes[:, :2], 1.0)
    sizes = np.ceil(sides)
    step = (sides / sizes)[:, None, :]
    found = np.rint((xy - boxes[:, None, :2]) / step - 0.5).astype(np.int64)
    return found, sizes.astype(np.int64)


def argmax_shift(run_xy: np.ndarray, ref_logits: np.ndarray, ref_box: np.ndarray, k: int, score_band: float,
                 scale: tuple[float, float] = (1.0, 1.0)) -> tuple[bool, str]:
    """(explained, why): whether rounding explains that one keypoint `k` of a matched pair sits in another cell on the
    run's side (`run_xy`) than on the reference's: the reference's heatmap for `k` (from its logits, in float64, at
    its box's map size) holds at the run's cell a value within `score_band` of its maximum (map sizes:
    `map_size_shift`). `why` starts `rounding:` or `not rounding:`."""
    import numpy as np
    import torch.nn.functional as F

    shown = run_xy
    box, run_xy = in_frame(ref_box, np.asarray(run_xy, dtype=np.float64)[None, :2], scale)
    box, run_xy = box[0], run_xy[0]
    sides = np.maximum(box[2:] - box[:2], 1.0)
    width, height = (int(v) for v in np.ceil(sides))
    maps = heatmaps(np.asarray(ref_logits)[None, k:k + 1], np.float64)
    roi = F.interpolate(maps, size=(height, width), mode="bicubic", align_corners=False)[0, 0].numpy()
    column = int(np.clip(np.floor((run_xy[0] - box[0]) / (sides[0] / width)), 0, width - 1))
    row = int(np.clip(np.floor((run_xy[1] - box[1]) / (sides[1] / height)), 0, height - 1))
    below = float(roi.max() - roi[row, column])
    if below > score_band:
        return False, (f"not rounding: at ({shown[0]:.2f}, {shown[1]:.2f}) the reference's heatmap is {below:.3g} "
                       f"below its maximum, beyond rounding {score_band:.3g}")
    return True, (f"rounding: at ({shown[0]:.2f}, {shown[1]:.2f}) the reference's heatmap is {below:.3g} below its "
                  f"maximum, within {score_band:.3g}")


def map_size_shift(run_box: np.ndarray, ref_box: np.ndarray, box_band: float,
                   scale: tuple[float, float] = (1.0, 1.0)) -> tuple[bool, str]:
    """(alike or explained, why): whether two matched boxes give maps of the same size, or rounding explains that
    they do not (each side that differs one pixel, the reference's length within `box_band` of a whole pixel)."""
    import numpy as np

    framed = [in_frame(box, None, scale)[0][0] for box in (run_box, ref_box)]
    sides = [np.maximum(box[2:] - box[:2], 1.0) for box in framed]
    sizes = [np.ceil(s) for s in sides]
    if np.array_equal(sizes[0], sizes[1]):
        return True, ""
    far = float(np.abs(sides[1] - np.rint(sides[1]))[sizes[0] != sizes[1]].max())
    if np.abs(sizes[0] - sizes[1]).max() > 1 or far > box_band:
        return False, (f"not rounding: maps of {sizes[0].astype(int).tolist()} against {sizes[1].astype(int).tolist()} "
                       f"pixels ({far:.3g} px from a whole pixel, beyond rounding {box_band:.3g})")
    return True, (f"rounding: maps of {sizes[0].astype(int).tolist()} against {sizes[1].astype(int).tolist()} pixels, "
                  f"the box {far:.3g} px from a whole pixel")


def keypoint_problem(keypoints: np.ndarray) -> str | None:
    """Why a run's keypoints are not torchvision's (N x K x 3, visibility 1 everywhere); None when they are."""
    import numpy as np

    if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
        return f"keypoints of shape {list(keypoints.shape)}, not N x K x 3"
    if keypoints.size and not np.all(keypoints[..., 2] == 1):
        return "keypoints whose visibility column is not 1 (torchvision sets it to 1 everywhere)"
    return None


def floor_errors(run: Any, i: int, ref: Any, j: int,
                 scale: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float, float, float]:
    """One float32 / float64 pair's (keypoint x-y error, score error, head-logit error, largest |logit|): x, y and
    scores over the keypoints whose argmax chose the same cell of maps of the same size on both sides only (a swap of
    two nearly equal maxima says nothing of the keypoints' rounding; `argmax_shift` judges those)."""
    import numpy as np

    ref_cells, ref_sizes = cells(ref.keypoints[j:j + 1], ref.boxes[j:j + 1], scale)
    run_cells, run_sizes = cells(run.keypoints[i:i + 1], run.boxes[i:i + 1], scale)
    head = _max_abs(run.keypoint_logits[i], ref.keypoint_logits[j])
    scale = float(np.abs(ref.keypoint_logits[j]).max(initial=0.0))
    if not np.array_equal(ref_sizes, run_sizes):
        return 0.0, 0.0, head, scale
    same = np.all(ref_cells[0] == run_cells[0], axis=-1)
    if not same.any():
        return 0.0, 0.0, head, scale
    xy = _max_abs(run.keypoints[i][same, :2], ref.keypoints[j][same, :2])
    score = _max_abs(run.keypoint_scores[i][same], ref.keypoint_scores[j][same])
    return xy, score, head, scale


@dataclass
class KeypointJudgement:
    """A pair of runs' keypoints (Keypoint R-CNN), each matched detection's judged against its floors."""

    worst_keypoint_ratio: float = 0.0
    """The largest |a - b| of a matched pair's keypoints (x, y), in keypoint floors."""
    worst_keypoint_score_ratio: float = 0.0
    worst_keypoint_head_ratio: float = 0.0
    """The largest |a - b| of a matched pair's heatmap logits (its head's, before the argmax), in their floors."""
    by_keypoint: dict[str, float] = field(default_factory=dict)
    """Each keypoint's name -> its largest ratio (x-y, score or its heatmap's logits) over the matched pairs."""
    argmax_borderline: list[str] = field(default_factory=list)
    """Keypoints whose argmax rounding moved to another cell (two nearly equal maxima): judged on their head alone."""
    argmax_unexplained: list[str] = field(default_factory=list)
    """Keypoints in another cell that rounding does not explain (judged on x, y: they fail)."""
    problems: list[str] = field(default_factory=list)
    """A side without keypoints (or heatmap logits) for every detection, or not torchvision's (each a failure)."""

    @property
    def worst_keypoint(self) -> str | None:
        """The name of the keypoint with the largest ratio (None before any is judged, or all exactly equal)."""
        worst = max(self.by_keypoint, key=lambda k: self.by_keypoint[k]) if self.by_keypoint else None
        return worst if worst is not None and self.by_keypoint[worst] != 0 else None

    def passed(self, factor: float) -> bool:
        return (not self.problems and self.worst_keypoint_ratio <= factor
                and self.worst_keypoint_score_ratio <= factor and self.worst_keypoint_head_ratio <= factor)

    def reasons(self, factor: float, floor: Any, over: Any) -> list[str]:
        """Why it fails (`over(what, ratio, floor, factor)` words one ratio), naming the keypoints past `factor`."""
        out = [over(what, ratio, value, factor) for what, ratio, value in (
            ("keypoints", self.worst_keypoint_ratio, floor.keypoints),
            ("keypoint scores", self.worst_keypoint_score_ratio, floor.keypoint_scores),
            ("keypoint head logits", self.worst_keypoint_head_ratio, floor.keypoint_head)) if ratio > factor]
        named = sorted((k for k, r in self.by_keypoint.items() if r > factor), key=lambda k: -self.by_keypoint[k])
        if named:
            out.append("keypoints off: " + ", ".join(f"{k} {_text(self.by_keypoint[k])}" for k in named[:5])
                       + (f" and {len(named) - 5} more" if len(named) > 5 else ""))
        if self.argmax_unexplained:
            out.append(f"{len(self.argmax_unexplained)} keypoint(s) in another cell (first: "
                       f"{self.argmax_unexplained[0]})")
        return out + self.problems[:1]

    def summary(self) -> str:
        text = (f", keypoints {self.worst_keypoint_ratio:.1f}x, keypoint score {self.worst_keypoint_score_ratio:.1f}x, "
                f"keypoint head {self.worst_keypoint_head_ratio:.1f}x")
        return text + (f" (worst: {self.worst_keypoint})" if self.worst_keypoint else "")

    def to_dict(self) -> dict[str, Any]:
        finite = {k: (v if math.isfinite(v) else None) for k, v in self.by_keypoint.items()}
        return {"worst_keypoint_ratio": _finite(self.worst_keypoint_ratio),
                "worst_keypoint_score_ratio": _finite(self.worst_keypoint_score_ratio),
                "worst_keypoint_head_ratio": _finite(self.worst_keypoint_head_ratio),
                "worst_keypoint": self.worst_keypoint, "keypoint_ratios": finite,
                "argmax_borderline": self.argmax_borderline, "argmax_unexplained": self.argmax_unexplained,
                "keypoint_problems": self.problems}

    def present(self, image: int, labels: tuple[str, str], run: Any, ref: Any) -> bool:
        """Whether both sides hold keypoints, scores and heatmap logits for every detection, as torchvision gives
        them; else a problem (a Keypoint R-CNN run without its keypoints is never judged on its boxes alone)."""
        for found, label in ((run, labels[0]), (ref, labels[1])):
            if not len(found):
                continue
            arrays = (found.keypoints, found.keypoint_scores, found.keypoint_logits)
            if any(a is None for a in arrays):
                self.problems.append(f"image {image}: {label} gives no keypoints, keypoint scores and keypoint head "
                                     "output to judge")
                return False
            why = keypoint_problem(found.keypoints)
            if why is None and not (len(found.keypoints) == len(found.keypoint_scores) == len(found.keypoint_logits)
                                    == len(found) and found.keypoint_logits.ndim == 4
                                    and found.keypoint_scores.shape == found.keypoints.shape[:2]
                                    and found.keypoint_logits.shape[1] == found.keypoints.shape[1]):
                why = (f"keypoints of {list(found.keypoints.shape)}, scores of {list(found.keypoint_scores.shape)} and "
                       f"heatmap logits of {list(found.keypoint_logits.shape)} for {len(found)} detections")
            if why is not None:
                self.problems.append(f"image {image}: {label} gives {why}")
                return False
        return True

    def judge(self, image: int, run: Any, i: int, ref: Any, j: int, floor: Any, band_factor: float,
              scale: tuple[float, float] | None = None) -> float:
        """One matched pair: its head's logits always (per keypoint channel); each keypoint's x, y and score where both
        sides chose the same cell of maps of the same size, else on its head alone where rounding explains the other
        cell (`argmax_borderline`), on x, y otherwise. The largest ratio."""
        import numpy as np

        names = keypoint_names(ref.keypoints.shape[1])
        head = np.abs(np.asarray(run.keypoint_logits[i], dtype=np.float64)
                      - np.asarray(ref.keypoint_logits[j], dtype=np.float64)).reshape(len(names), -1)
        head_ratios = [_ratio(float(h.max()) if not np.isnan(h).any() else math.nan, floor.keypoint_head) for h in head]
        self.worst_keypoint_head_ratio = max(self.worst_keypoint_head_ratio, *head_ratios)
        scale = scale or (1.0, 1.0)
        run_cells, run_sizes = cells(run.keypoints[i:i + 1], run.boxes[i:i + 1], scale)
        ref_cells, ref_sizes = cells(ref.keypoints[j:j + 1], ref.boxes[j:j + 1], scale)
        sized, size_why = map_size_shift(run.boxes[i], ref.boxes[j], 2 * band_factor * floor.boxes / min(scale), scale)
        worst = 0.0
        for k, name in enumerate(names):
            run_xy = np.asarray(run.keypoints[i, k, :2], dtype=np.float64)
            ref_xy = np.asarray(ref.keypoints[j, k, :2], dtype=np.float64)
            xy = _ratio(float(np.abs(run_xy - ref_xy).max()), floor.keypoints)
            score = 0.0
            if np.array_equal(run_sizes, ref_sizes) and np.array_equal(run_cells[0, k], ref_cells[0, k]):
                score = _ratio(abs(float(run.keypoint_scores[i, k]) - float(ref.keypoint_scores[j, k])),
                               floor.keypoint_scores)
            elif math.isfinite(xy):
                explained, why = argmax_shift(run_xy, ref.keypoint_logits[j], ref.boxes[j], k,
                                              band_factor * floor.keypoint_scores, scale)
                where = f"image {image}: class {int(ref.labels[j])} detection's {name} "
                if sized and explained:
                    self.argmax_borderline.append(where + (size_why or why))
                    xy = 0.0  # judged on its head alone
                else:
                    self.argmax_unexplained.append(where + (why if sized else size_why))
            self.worst_keypoint_ratio = max(self.worst_keypoint_ratio, xy)
            self.worst_keypoint_score_ratio = max(self.worst_keypoint_score_ratio, score)
            ratio = max(head_ratios[k], xy, score)
            self.by_keypoint[name] = max(self.by_keypoint.get(name, 0.0), ratio)
            worst = max(worst, ratio)
        return worst


def _ratio(error: float, floor: float) -> float:
    return error / floor if not math.isnan(error) else math.inf


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _text(ratio: float) -> str:
    return f"{ratio:.1f}x" if math.isfinite(ratio) else "NaN"


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    from verify.detect.masks import max_abs

    return max_abs(a, b)
