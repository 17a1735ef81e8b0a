"""Mask R-CNN's per-detection numbers in a matrix cell (verify/matrix/detector_cell.py stores them, detector_judging.py
reads them back): each run's mask-head logits of each detection's label (N x M x M, in the run's precision), and, for
a runtime (whose paste is its own code: the ONNX file's traced paste is not torchvision's), its pasted masks as the
bits in which they differ from torchvision's paste of its own logits at its own boxes. Eager's and the oracle's masks
are re-derived from their logits and boxes with torchvision's own paste (verify/detect/masks.py `pasted_masks`), as a
folder's goldens re-derive them.

Arrays are stored as their little-endian bytes in base64 (exact, and half the size of JSON numbers or less); the
precision a run's arrays must have comes from its label (the oracle float64, every other run float32), never from
the cell."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from verify.detect.verdict import EAGER, ORACLE

if TYPE_CHECKING:
    import numpy as np

    from verify.detect.match import Detections

LOGITS_KEY, MASKS_KEY = "mask_logits", "masks"
"""An image's stored mask-head logits and (a runtime's) pasted masks, beside its boxes, scores and labels."""
DTYPES = {"float32": "<f4", "float64": "<f8"}
"""The precisions a stored array may have, as little-endian numpy types."""
UINTS = {"float32": "<u4", "float64": "<u8"}
"""Their bits, for a runtime's masks stored as what differs from torchvision's paste."""
REDERIVED = (EAGER, ORACLE)
"""The runs whose masks are torchvision's own paste of their logits (re-derived, not stored)."""


def run_dtype(label: str) -> str:
    """The precision of a run's mask arrays: the oracle's float64, every other run's float32."""
    return "float64" if label == ORACLE else "float32"


def pack(array: np.ndarray, dtype: str) -> dict[str, Any]:
    """`array` as {dtype, shape, base64 of its little-endian bytes}: read back bit for bit by `unpack`."""
    import base64

    import numpy as np

    values = np.ascontiguousarray(np.asarray(array), dtype=DTYPES[dtype])
    return {"dtype": dtype, "shape": list(values.shape), "base64": base64.b64encode(values.tobytes()).decode("ascii")}


def unpack(stored: Any, dtype: str, what: str) -> np.ndarray:
    """The array `pack` stored, which must be of `dtype` (else ValueError, one line naming `what`)."""
    import base64
    import binascii
    import math

    import numpy as np

    if not isinstance(stored, Mapping) or stored.get("dtype") != dtype or not isinstance(stored.get("base64"), str):
        raise ValueError(f"{what}: not {dtype} numbers stored as dtype, shape and base64")
    shape = stored.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                              for n in shape):
        raise ValueError(f"{what}: a shape {shape!r}")
    try:
        raw = base64.b64decode(stored["base64"], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what}: its base64 does not decode") from None
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    if len(raw) != math.prod(shape) * itemsize:
        raise ValueError(f"{what}: {len(raw)} bytes for a shape {shape}")
    return np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(shape).astype(dtype)


def mask_numbers(label: str, found: Detections, size: tuple[int, int]) -> dict[str, Any]:
    """What a run's image (`size` H x W) stores of its masks: its logits, and a runtime's own pasted masks as their
    residual; {} without."""
    if found.mask_logits is None:
        return {}
    dtype = run_dtype(label)
    stored: dict[str, Any] = {LOGITS_KEY: pack(found.mask_logits, dtype)}
    if label not in REDERIVED and found.masks is not None:
        stored[MASKS_KEY] = _residual(found, dtype, size)
    return stored


def _residual(found: Detections, dtype: str, size: tuple[int, int]) -> dict[str, Any]:
    """A runtime's pasted masks (N x H x W) as the bits that differ from torchvision's paste of its own logits at its
    own boxes (XOR of the two, zlib-compressed): where its paste rounds as torchvision's does, nothing is stored, and
    the masks are rebuilt bit for bit (the legacy ONNX file's traced paste differs in the last bits of about 16 % of
    the pixels at 64 px: 19 KB against 74 KB for the masks' nonzero pixels)."""
    import base64
    import zlib

    import numpy as np

    from verify.detect.masks import pasted_masks

    assert found.masks is not None and found.mask_logits is not None
    masks = np.ascontiguousarray(found.masks, dtype=DTYPES[dtype])
    own = np.ascontiguousarray(pasted_masks(found.mask_logits, found.boxes, size, dtype), dtype=DTYPES[dtype])
    if masks.shape != own.shape:  # a run's masks of another shape: stored whole, judged (and failed) as they are
        return {"size": list(size), "shape": list(masks.shape), "whole": pack(masks, dtype)}
    bits = UINTS[dtype]
    residual = (masks.view(bits) ^ own.view(bits)).tobytes()
    return {"size": list(size), "xor_zlib": base64.b64encode(zlib.compress(residual, 6)).decode("ascii")}


def attach_masks(label: str, found: Sequence[Detections], stored: Sequence[Mapping[str, Any]],
                 size: tuple[int, int]) -> None:
    """Each image's masks and mask logits read back into `found` (its stored images, `size` H x W): eager's and the
    oracle's masks re-derived from their logits, a runtime's rebuilt from its residual. An image stored without them
    keeps none (compare_detections then fails the pair: a Mask R-CNN run is never judged on its boxes alone);
    anything malformed is a ValueError."""
    from verify.detect.masks import pasted_masks

    dtype = run_dtype(label)
    for image, (one, numbers) in enumerate(zip(found, stored, strict=True)):
        if LOGITS_KEY not in numbers:
            continue
        where = f"{label} image {image}"
        logits = unpack(numbers[LOGITS_KEY], dtype, f"{where} mask logits")
        if logits.ndim != 3 or len(logits) != len(one) or logits.shape[1] != logits.shape[2]:
            raise ValueError(f"{where} mask logits: {list(logits.shape)} for {len(one)} detections, not N x M x M")
        one.mask_logits = logits
        own = pasted_masks(logits, one.boxes, size, dtype)
        if label in REDERIVED:
            one.masks = own
        elif MASKS_KEY in numbers:
            one.masks = _rebuilt(numbers[MASKS_KEY], own, dtype, size, where)


def _rebuilt(stored: Any, own: np.ndarray, dtype: str, size: tuple[int, int], where: str) -> np.ndarray:
    """A runtime's masks from `_residual`'s record and `own` (torchvision's paste of its stored logits)."""
    import base64
    import binascii
    import zlib

    import numpy as np

    if not isinstance(stored, Mapping) or stored.get("size") != list(size):
        raise ValueError(f"{where} masks: not the masks of a {size[0]} x {size[1]} image")
    if "whole" in stored:
        return unpack(stored["whole"], dtype, f"{where} masks")
    if not isinstance(stored.get("xor_zlib"), str):
        raise ValueError(f"{where} masks: no residual stored")
    length = own.size * own.itemsize
    try:
        inflater = zlib.decompressobj()
        residual = inflater.decompress(base64.b64decode(stored["xor_zlib"], validate=True), length + 1)
    except (binascii.Error, ValueError, zlib.error):
        raise ValueError(f"{where} masks: the residual does not decode") from None
    if len(residual) != length or not inflater.eof:
        raise ValueError(f"{where} masks: a residual of other than {length} bytes")
    bits = UINTS[dtype]
    own = np.ascontiguousarray(own, dtype=DTYPES[dtype])
    return (own.view(bits) ^ np.frombuffer(residual, dtype=bits).reshape(own.shape)).view(DTYPES[dtype]).astype(dtype)
