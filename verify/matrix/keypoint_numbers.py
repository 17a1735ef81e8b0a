"""Keypoint R-CNN's per-detection numbers in a matrix cell (verify/matrix/detector_cell.py stores them,
detector_judging.py reads them back and judges them with verify/detect/keypoints.py, as `verify export` does): each
run's keypoints (N x K x 3) and keypoint scores (N x K), float32 in every run (torchvision returns them in float32 from
a float64 model too), and its keypoint head's heatmap logits (N x K x M x M) in the run's precision (the oracle's
float64), all stored exactly (verify/matrix/mask_numbers.py `pack`). The keypoints are stored, not re-derived:
torchvision derives them in the detector's resized frame and scales them back in float32, which the stored boxes cannot
undo bit for bit (a folder's goldens keep them for the same reason).

Every shape is bound before a byte is read as numbers: N is the run's detection count, K and M the registered
detector's (its keypoint predictor's channels, twice its keypoint RoI pool's side), and `unpack` holds the bytes to the
shape. Eager's and the oracle's numbers measure the floors: they must be finite, and their keypoints inside their own
boxes (as a folder's goldens must); a runtime's are judged as they are (a NaN or a keypoint far outside fails)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from verify.detect.verdict import EAGER, ORACLE
from verify.matrix.mask_numbers import DTYPES, UINTS, pack, run_dtype, unpack

if TYPE_CHECKING:
    import numpy as np

    from verify.detect.match import Detections

POINTS_KEY, SCORES_KEY, LOGITS_KEY = "keypoint_xyv", "keypoint_score_values", "keypoint_head_logits"
"""An image's stored keypoints, keypoint scores and heatmap logits, beside its boxes, scores and labels (names no
`Detections.of` reads: proposal_judging.py `detections_of` takes the boxes, scores and labels only)."""
KEYS = (POINTS_KEY, SCORES_KEY, LOGITS_KEY)
XOR_KEY = "xor_eager_zlib"
"""A stored logits record holding what differs from eager's logits (`logits_record`) instead of `pack`'s base64."""
POINTS_DTYPE = "float32"
"""The keypoints' and their scores' precision in every run (torchvision's Keypoint R-CNN returns float32)."""
FLOOR_RUNS = (EAGER, ORACLE)
"""The runs whose keypoints measure the floors (checked finite and inside their boxes, else malformed)."""
BOX_SLACK = 1e-3
"""How far (relative to the largest box coordinate) a floor run's float32 keypoint may sit outside its float64 box
(verify/detect/goldens.py `_check_keypoint_rows`)."""


def keypoint_numbers(label: str, found: Detections, eager: Detections | None) -> dict[str, Any]:
    """What a run's image stores of its keypoints: keypoints, scores and heatmap logits (a run's other than eager's as
    what differs from eager's, `logits_record`); {} without (a run that gave none is then judged without them, and
    fails)."""
    if found.keypoints is None or found.keypoint_scores is None or found.keypoint_logits is None:
        return {}
    base = eager.keypoint_logits if eager is not None and label != EAGER else None
    return {POINTS_KEY: pack(found.keypoints, POINTS_DTYPE), SCORES_KEY: pack(found.keypoint_scores, POINTS_DTYPE),
            LOGITS_KEY: logits_record(found.keypoint_logits, run_dtype(label), base)}


def logits_record(logits: np.ndarray, dtype: str, base: np.ndarray | None) -> dict[str, Any]:
    """A run's heatmap logits, exactly: as `pack` stores them, or (a run other than eager, of eager's shape) as the
    bits that differ from eager's logits in the run's precision, XOR then zlib. Measured at 320 px (44 detections):
    TorchScript's 2.3 MB of logits store 2.3 KB, ONNX Runtime's 0.92 MB, the oracle's 4.7 MB 3.4 MB."""
    import base64
    import zlib

    import numpy as np

    if base is None or np.shape(base) != np.shape(logits):
        return pack(logits, dtype)
    bits = UINTS[dtype]
    mine = np.ascontiguousarray(logits, dtype=DTYPES[dtype]).view(bits)
    theirs = np.ascontiguousarray(np.asarray(base).astype(DTYPES[dtype])).view(bits)
    return {"dtype": dtype, "shape": list(mine.shape),
            XOR_KEY: base64.b64encode(zlib.compress((mine ^ theirs).tobytes(), 6)).decode("ascii")}


def head_shape(built: Any) -> tuple[int, int]:
    """(K, M): the registered detector's keypoint count and its heatmap logits' side (the predictor's transposed
    convolution doubles its RoI pool's side), read from `built` (proposal_judging.py `registered_detector`)."""
    heads = built.model.roi_heads
    side = heads.keypoint_roi_pool.output_size
    side = side[0] if isinstance(side, (tuple, list)) else side
    return int(heads.keypoint_predictor.kps_score_lowres.out_channels), 2 * int(side)


def attach_all(found: Mapping[str, Sequence[Detections]], runs: Mapping[str, Any], shape: tuple[int, int]) -> None:
    """Every run's keypoints read back (`attach_keypoints`), eager's first: the others' logits are stored against
    eager's."""
    eager = found.get(EAGER)
    for label in sorted(found, key=lambda label: label != EAGER):
        attach_keypoints(label, found[label], runs[label], shape, None if label == EAGER else eager)


def attach_keypoints(label: str, found: Sequence[Detections], stored: Sequence[Mapping[str, Any]],
                     shape: tuple[int, int], eager: Sequence[Detections] | None = None) -> None:
    """Each image's keypoints, scores and heatmap logits read back into `found` (its stored images; `shape`: the
    detector's (K, M), `head_shape`; `eager`: eager's images, read back first, whose logits a run's other than eager's
    may be stored against). An image stored without all three keeps none (compare_detections then fails the pair: a
    Keypoint R-CNN run is never judged on its boxes alone); anything malformed is a ValueError."""
    count, side = shape
    for image, (one, numbers) in enumerate(zip(found, stored, strict=True)):
        if not all(key in numbers for key in KEYS):
            continue
        where = f"{label} image {image}"
        expected = {POINTS_KEY: [len(one), count, 3], SCORES_KEY: [len(one), count],
                    LOGITS_KEY: [len(one), count, side, side]}
        for key, what in ((POINTS_KEY, "keypoints"), (SCORES_KEY, "keypoint scores"), (LOGITS_KEY, "heatmap logits")):
            if not isinstance(numbers[key], Mapping) or numbers[key].get("shape") != expected[key]:
                got = numbers[key].get("shape") if isinstance(numbers[key], Mapping) else None
                raise ValueError(f"{where} {what}: a shape {got!r}, not {expected[key]} ({len(one)} detections)")
        points = unpack(numbers[POINTS_KEY], POINTS_DTYPE, f"{where} keypoints")
        scores = unpack(numbers[SCORES_KEY], POINTS_DTYPE, f"{where} keypoint scores")
        base = eager[image].keypoint_logits if eager is not None and image < len(eager) else None
        logits = read_logits(numbers[LOGITS_KEY], run_dtype(label), base, f"{where} heatmap logits")
        if label in FLOOR_RUNS:
            _floor_run(points, scores, logits, one.boxes, where)
        one.keypoints, one.keypoint_scores, one.keypoint_logits = points, scores, logits


def _floor_run(points: Any, scores: Any, logits: Any, boxes: Any, where: str) -> None:
    """Eager's and the oracle's numbers, which measure the floors: finite, and each keypoint inside its own box."""
    import numpy as np

    if not all(np.isfinite(a).all() for a in (points, scores, logits)):
        raise ValueError(f"{where}: keypoints, scores or heatmap logits that are not finite (they measure the floors)")
    if len(points):
        slack = BOX_SLACK * max(float(np.abs(boxes).max(initial=0.0)), 1.0)
        corners = np.asarray(boxes, dtype=np.float64)[:, None, :]
        xy = points[..., :2].astype(np.float64)
        if ((xy < corners[..., :2] - slack) | (xy > corners[..., 2:] + slack)).any():
            raise ValueError(f"{where}: keypoints outside their detection's box (they measure the floors)")


def read_logits(stored: Mapping[str, Any], dtype: str, base: np.ndarray | None, what: str) -> np.ndarray:
    """`logits_record`'s record read back bit for bit (its shape already checked against the detections and the head):
    `pack`'s form, or the XOR against eager's logits inflated to exactly the shape's bytes, never more."""
    import base64
    import binascii
    import math
    import zlib

    import numpy as np

    if XOR_KEY not in stored:
        return unpack(stored, dtype, what)
    shape = stored["shape"]
    if stored.get("dtype") != dtype or not isinstance(stored[XOR_KEY], str):
        raise ValueError(f"{what}: not {dtype} numbers stored against eager's")
    if base is None or list(np.shape(base)) != shape:
        raise ValueError(f"{what}: stored against eager's logits, which are not there or of another shape")
    length = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
    try:
        inflater = zlib.decompressobj()
        residual = inflater.decompress(base64.b64decode(stored[XOR_KEY], validate=True), length + 1)
    except (binascii.Error, ValueError, zlib.error):
        raise ValueError(f"{what}: the residual does not decode") from None
    if len(residual) != length or not inflater.eof:
        raise ValueError(f"{what}: a residual of other than {length} bytes")
    bits = UINTS[dtype]
    theirs = np.ascontiguousarray(np.asarray(base).astype(DTYPES[dtype])).view(bits)
    return (theirs ^ np.frombuffer(residual, dtype=bits).reshape(shape)).view(DTYPES[dtype]).astype(dtype)
