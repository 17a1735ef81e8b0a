"""Mask R-CNN's masks, judged per matched detection (verify/detect/match.py pairs them by IoU): each pair's pasted
mask element-wise (probabilities in the image, N x H x W) and its mask head's own output before pasting (the logits of
its label's channel, N x M x M), each on its floor measured the same way (eager float32 against the float64 oracle).

Why both: the head's output isolates the mask head from the paste, whose pixels move with the box (a box edge that
rounding carries across a pixel edge pastes the mask at other pixels: one pixel of a mask 0.3 off, no error of the
head's); the pasted mask judges what a user gets, the paste included (torchvision's traced paste is other code). A pair
whose two sides paste at other pixels is compared pixel by pixel only where rounding does not explain it: a pasted
box edge that differs by one pixel, its float64 coordinate within the rounding band of that pixel edge, is named
(`paste`) and judged on its head's output alone; any other difference is compared pixel by pixel (and fails)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from verify.judge.noise_floor import FLOAT32_EPS

if TYPE_CHECKING:
    import numpy as np

PADDING = 1
"""torchvision's `paste_masks_in_image` pads each M x M mask by one pixel and widens its box by (M + 2) / M."""


def paste_scale(size: int) -> float:
    return float(size + 2 * PADDING) / size


def paste_boxes(boxes: np.ndarray, dtype: np.dtype, size: int) -> np.ndarray:
    """The integer boxes torchvision's paste puts each mask in: `boxes` widened by `paste_scale` in the run's own
    precision `dtype` (float32 runs widen in float32), truncated toward zero as its int64 cast does."""
    import numpy as np
    import torch
    from torchvision.models.detection.roi_heads import expand_boxes

    wide = expand_boxes(torch.from_numpy(np.asarray(boxes, dtype=dtype).reshape(-1, 4).copy()), paste_scale(size))
    return wide.to(torch.int64).numpy()


def pasted_masks(logits: np.ndarray, boxes: np.ndarray, image: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """Each detection's mask as torchvision's Mask R-CNN pastes it (N x H x W, in `dtype`): the sigmoid of its label's
    logits (N x M x M) in the image at its box. Recorded goldens keep the logits only; the masks are re-derived."""
    import numpy as np
    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    height, width = image
    if not len(logits):
        return np.zeros((0, height, width), dtype=dtype)
    probs = torch.from_numpy(np.asarray(logits, dtype=dtype).copy()).sigmoid()[:, None]
    boxes = torch.from_numpy(np.asarray(boxes, dtype=dtype).reshape(-1, 4).copy())
    return paste_masks_in_image(probs, boxes, (int(height), int(width)))[:, 0].numpy()


def label_logits(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each detection's own row of the mask predictor's logits (N x classes x M x M): its label's channel, N x M x M,
    what torchvision's `maskrcnn_inference` keeps."""
    import numpy as np

    logits = np.asarray(logits)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if logits.ndim != 4 or len(logits) != len(labels) or (len(labels) and labels.max() >= logits.shape[1]):
        raise ValueError(f"mask logits of shape {list(logits.shape)} for {len(labels)} detections")
    return logits[np.arange(len(labels)), labels]


def paste_shift(run_boxes: np.ndarray, run_dtype: np.dtype, ref_boxes: np.ndarray, ref_dtype: np.dtype, size: int,
                box_error: float) -> tuple[bool, str]:
    """(pasted alike, why not): whether two matched detections (one box each) paste their masks at the same pixels;
    where they do not, a description that says whether rounding explains it (every differing edge one pixel apart and
    both sides' widened coordinates, in float64, within `box_error` x (1 + scale) of the pixel edge between them, plus
    float32 rounding): it starts `rounding:` then, else `not rounding:`."""
    import numpy as np

    mine = paste_boxes(run_boxes, run_dtype, size)[0]
    theirs = paste_boxes(ref_boxes, ref_dtype, size)[0]
    if np.array_equal(mine, theirs):
        return True, ""
    sides = [paste_boxes_float(np.asarray(boxes, dtype=np.float64).reshape(4), size)
             for boxes in (run_boxes, ref_boxes)]
    band = box_error * (1.0 + paste_scale(size)) + 4 * FLOAT32_EPS * max(float(np.abs(sides[1]).max()), 1.0)
    for c in np.flatnonzero(mine != theirs):
        edge = float(max(mine[c], theirs[c], key=abs))  # the int64 cast truncates toward zero
        far = max(abs(side[c] - edge) for side in sides)
        if abs(int(mine[c]) - int(theirs[c])) != 1 or far > band:
            return False, (f"not rounding: pasted at pixels {mine.tolist()} against {theirs.tolist()} (a widened "
                           f"edge {far:.3g} px from the pixel edge between them, beyond rounding {band:.3g})")
    return False, (f"rounding: pasted at pixels {mine.tolist()} against {theirs.tolist()}, each edge that differs "
                   f"within {band:.3g} px of a pixel edge")


def paste_boxes_float(box: np.ndarray, size: int) -> np.ndarray:
    """One box widened as the paste widens it, in float64, before its truncation."""
    import numpy as np

    half = np.array([box[2] - box[0], box[3] - box[1]]) * 0.5 * paste_scale(size)
    centre = np.array([box[2] + box[0], box[3] + box[1]]) * 0.5
    return np.array([centre[0] - half[0], centre[1] - half[1], centre[0] + half[0], centre[1] + half[1]])


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """The largest |a - b| in float64 (NaN where either holds one); 0 for empty arrays."""
    import numpy as np

    if a.shape != b.shape:
        return float("inf")
    if not a.size:
        return 0.0
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return float("nan") if np.isnan(diff).any() else float(diff.max())
