"""The peak rule (PEAK_FACTOR): each group's typical magnitude (a channel's, or a channel-less output's), and the floor
of its bulk, the elements that are no peak (a mask value, a sentinel, a border), measured on those elements alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from verify.judge.noise_floor import CHANNEL_AXIS, CHANNEL_FLOOR_SHARE, MIN_CHANNEL_ELEMENTS, NoiseFloor, channel_view
from verify.judge.precision import EPS

if TYPE_CHECKING:
    import numpy as np

PEAK_FACTOR = 16.0
"""An element more than this many times its group's typical magnitude (a channel's, or a channel-less output's
BULK_QUANTILE of its non-zero |fp64|) is a peak: a mask value, a sentinel, a border. Its rounding (u x its
magnitude) says nothing of the other elements', so the rest of its group, the bulk, keeps a floor of its own
(`NoiseFloor.bulk`); peaks are judged on the group's floor over every element, as before. 16 is above the
spread of a normal activation (its maximum is ~3-4.5 sigma, its 90th percentile 1.6 sigma): a model without
outliers has no peak and is judged as before."""
BULK_QUANTILE = 0.9
"""The typical magnitude of a group: this quantile of its non-zero finite |fp64| (a ReLU's zeros left out); where it
falls among exact copies of the group's maximum (a mask value over a tenth or more of it), of its other elements."""


def _typical(rows: np.ndarray) -> np.ndarray:
    """Each row's typical magnitude: the BULK_QUANTILE of its non-zero elements (numpy's linear quantile), NaN
    with fewer than MIN_CHANNEL_ELEMENTS of them. One sort of all rows (a loop of np.quantile is 10-100x slower)."""
    import numpy as np

    ordered = np.sort(rows, axis=1)  # magnitudes: the zeros come first
    count = (rows != 0).sum(axis=1)
    position = BULK_QUANTILE * np.maximum(count - 1, 0)  # among the non-zero elements, as `_no_peak` counts them
    below = np.floor(position)
    low = np.minimum(rows.shape[1] - count + below.astype(np.intp), rows.shape[1] - 1)  # a row of zeros: NaN below
    high = np.minimum(low + 1, rows.shape[1] - 1)
    share = position - below
    index = np.arange(rows.shape[0])
    a, b = ordered[index, low], ordered[index, high]
    # numpy's own interpolation (`_lerp`): never below `a`, so a row whose quantile is a tie of x stays <= 16x
    typical = np.where(share >= 0.5, b - (b - a) * (1 - share), a + (b - a) * share)
    return np.where(count >= MIN_CHANNEL_ELEMENTS, typical, np.nan)


def _no_peak(rows: np.ndarray) -> np.ndarray:
    """Per row, True where no element can exceed PEAK_FACTOR x the row's typical magnitude (`_typical`): at least as
    many elements are within 1/PEAK_FACTOR of the row's maximum as lie at or above its quantile's lower index, so
    the quantile itself is. A sufficient test (False may still have no peak), one pass instead of a sort."""
    import numpy as np

    top = rows.max(axis=1, initial=0.0)
    return _loud_enough(rows, top, _need(np.count_nonzero(rows, axis=1)))


def _need(count: np.ndarray) -> np.ndarray:
    """How many of a row's `count` non-zero elements lie at or above its quantile's lower index."""
    import numpy as np

    return count - np.floor(BULK_QUANTILE * np.maximum(count - 1, 0))


def _loud_enough(rows: np.ndarray, top: np.ndarray, need: np.ndarray) -> np.ndarray:
    """`_no_peak` with each row's maximum and `_need` given."""
    import numpy as np

    least = top / PEAK_FACTOR  # rounds below float64's normal range: then the next float up, so 16 x least >= top
    least = np.where(least * PEAK_FACTOR < top, np.nextafter(least, np.inf), least)
    return (np.count_nonzero(rows >= least[:, None], axis=1) >= need) | (top == 0)


def _no_peak_nor_mask(flat: np.ndarray, rows: np.ndarray) -> bool:
    """Every row of `rows` (and `flat`, the same elements as one row) passes `_no_peak` and has no `_mask_value`:
    then `_typical_below_mask` is `_typical` and no element is a peak. One pass fewer than both tests on both."""
    import numpy as np

    top = rows.max(axis=1, initial=0.0)
    count = np.count_nonzero(rows, axis=1)
    need = _need(count)
    ties = np.count_nonzero(rows == top[:, None], axis=1)
    if ((top > 0) & (ties >= need)).any() or not _loud_enough(rows, top, need).all():
        return False
    if flat is rows:
        return True
    whole = top.max(initial=0.0)
    flat_need = _need(np.asarray([count.sum()]))
    return not (whole > 0 and ties[top == whole].sum() >= flat_need[0]) \
        and bool(_loud_enough(flat, np.asarray([whole]), flat_need)[0])


def _mask_value(rows: np.ndarray) -> np.ndarray:
    """Per row, True where BULK_QUANTILE falls among copies of the row's maximum (exactly equal magnitudes, as
    `masked_fill` or a constant border writes them): a mask over a tenth or more of the row would be its own typical
    magnitude, and no element of it a peak."""
    import numpy as np

    top = rows.max(axis=1, initial=0.0)
    return (top > 0) & (np.count_nonzero(rows == top[:, None], axis=1) >= _need(np.count_nonzero(rows, axis=1)))


def _typical_below_mask(rows: np.ndarray) -> np.ndarray:
    """`_typical`, except that a row whose quantile falls on copies of its maximum (`_mask_value`) gets the typical
    magnitude of its other elements, where MIN_CHANNEL_ELEMENTS of them are non-zero: a mask value is a peak however
    much of the row it covers (a constant row, or one mostly masked, keeps `_typical`)."""
    import numpy as np

    typical = _typical(rows)
    masked = _mask_value(rows)
    if masked.any():
        chosen = rows[masked]
        below = _typical(np.where(chosen == chosen.max(axis=1, keepdims=True), 0.0, chosen))
        typical[masked] = np.where(np.isnan(below), typical[masked], below)
    return typical


def _with_bulk(floor: NoiseFloor, magnitude: np.ndarray, errors: Sequence[np.ndarray], axes: tuple[int, ...],
               active: np.ndarray | None) -> NoiseFloor | None:
    """`floor` with the floors of its groups' bulk (PEAK_FACTOR), or None where no element is a peak. Each group's
    bulk floor is the largest error on its bulk elements, at least CHANNEL_FLOOR_SHARE of the output's bulk floor
    and one ulp of the bulk's magnitude (the group floor's own lower bounds, taken over the bulk), at most the group
    floor; a channel with too few elements to measure keeps the output's bulk floor."""
    import numpy as np

    flat = magnitude.reshape(1, -1)
    rows = flat if floor.channels is None else \
        np.moveaxis(magnitude, CHANNEL_AXIS, 0).reshape(magnitude.shape[CHANNEL_AXIS], -1)
    if _no_peak_nor_mask(flat, rows):  # the common case, without sorting (~2x faster)
        return None
    whole = float(_typical_below_mask(flat)[0])
    if math.isnan(whole):
        return None
    if floor.channels is None:
        limits = np.asarray([PEAK_FACTOR * whole])
        shape: tuple[int, ...] = (1,) * magnitude.ndim
    else:
        typical = _typical_below_mask(rows)
        limits = PEAK_FACTOR * np.where(np.isnan(typical), whole, typical)
        shape = channel_view(magnitude.ndim)
    in_bulk = magnitude <= limits.reshape(shape)
    if in_bulk.all():
        return None
    own = np.max([np.where(in_bulk, e, 0.0).max(axis=axes) for e in errors], axis=0).reshape(-1)
    bulk_scale = float(np.where(in_bulk, magnitude, 0.0).max())
    ulp = EPS[floor.precision] * bulk_scale
    output_bulk = max(float(np.where(in_bulk, errors[0], 0.0).max()), ulp) or EPS[floor.precision]
    least = max(CHANNEL_FLOOR_SHARE * output_bulk, ulp, np.finfo(np.float64).tiny)
    groups = floor.group_floors
    if floor.channels is None:
        bulk = np.asarray([output_bulk])
    else:
        bulk = np.where(active >= MIN_CHANNEL_ELEMENTS, np.clip(own, least, output_bulk), output_bulk)
    return replace(floor, bulk=np.minimum(bulk, groups), bulk_limits=limits)
