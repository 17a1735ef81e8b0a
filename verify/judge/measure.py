"""Measuring noise floors: a run against its float64 reference, per output and per channel (`measure_floor(s)`,
`worst_floor`), with the bulk floor of the peak rule (verify/judge/peaks.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from verify.judge.noise_floor import (
    CHANNEL_DIMS,
    CHANNEL_FLOOR_SHARE,
    LAYER_CHANNEL_DIMS,
    MIN_CHANNEL_ELEMENTS,
    NoiseFloor,
    channelled,
    other_axes,
)
from verify.judge.peaks import _with_bulk
from verify.judge.precision import EPS

if TYPE_CHECKING:
    import numpy as np


def measure_floor(run: np.ndarray, fp64: np.ndarray, precision: str = "fp32", float32: float | None = None,
                  samples: Sequence[np.ndarray] = ()) -> NoiseFloor | None:
    """The floor of one output: `run` (at `precision`) against its float64 reference. `samples` are
    other valid evaluations at the same precision (e.g. with norms folded into convolutions): their
    rounding joins the channel floors, which never exceed the per-output floor of `run`."""
    import numpy as np

    if run.shape != fp64.shape or fp64.size == 0:
        return None
    ref = fp64.astype(np.float64)
    err = _error(run, ref)
    if not (np.issubdtype(run.dtype, np.floating) and np.issubdtype(fp64.dtype, np.floating)):
        # an index or a mask is judged exactly (verify/judge/compare.py DISCRETE_NOTE), its flips in the pairs: as a
        # floor one flip was a whole index, refused as "not a noise floor; is the model random?" (sweep 27b)
        err = np.zeros_like(err)
    ignored = int((~np.isfinite(run.astype(np.float64) - ref)).sum())
    scale = _Scale(ref, precision)
    errors = [err] + ([_error(s, ref) for s in samples if s.shape == ref.shape] if scale.by_channel else [])
    value, channels = scale.floor(errors)
    if channels is not None:
        rms = np.sqrt((err ** 2).mean(axis=scale.axes))
        floor = NoiseFloor(value, channels, precision, float32, rms, ignored)
        return _with_bulk(floor, scale.magnitude, errors, scale.axes, scale.active) or floor
    floor = NoiseFloor(value, None, precision, float32, None, ignored)
    return _with_bulk(floor, scale.magnitude, [err], tuple(range(ref.ndim)), None) or floor


class _Scale:
    """What a floor's bounds read from the float64 reference alone (its magnitude, one ulp of its scale, each
    channel's non-zero count): measured once for every evaluation judged against it."""

    def __init__(self, ref: np.ndarray, precision: str, dims: Sequence[int] = CHANNEL_DIMS) -> None:
        import numpy as np

        self.precision = precision
        self.magnitude = _finite_or(np.abs(ref), 0.0)
        self.ulp = EPS[precision] * float(self.magnitude.max(initial=0.0))
        self.by_channel = channelled(ref.shape, dims)
        self.axes = other_axes(ref.ndim)
        self.active = np.count_nonzero(self.magnitude, axis=self.axes) if self.by_channel else None

    def floor(self, errors: Sequence[np.ndarray]) -> tuple[float, np.ndarray | None]:
        """(per-output floor, per-channel floors) of the first error, the others (samples) joining the channels:
        NoiseFloor's `value` and `channels` rules."""
        import numpy as np

        value = max(float(errors[0].max(initial=0.0)), self.ulp) or EPS[self.precision]
        if not self.by_channel:
            return value, None
        own = np.max([e.max(axis=self.axes) for e in errors], axis=0)
        least = max(CHANNEL_FLOOR_SHARE * value, self.ulp, np.finfo(np.float64).tiny)
        return value, np.where(self.active >= MIN_CHANNEL_ELEMENTS, np.clip(own, least, value), value)


def worst_floor(runs: Sequence[np.ndarray], fp64: np.ndarray, dims: Sequence[int] = LAYER_CHANNEL_DIMS
                ) -> NoiseFloor | None:
    """The float32 floor of several valid evaluations of one layer's output, each measured as `measure_floor` measures
    it alone (per channel where it has `dims` dimensions): the largest per-output floor and, per channel, the largest
    channel floor. Only what a verdict reads (`value`, `channels`): no RMS and no bulk, and the reference's magnitude
    read once for all (a layer verdict measures this for every layer of a model)."""
    import numpy as np

    runs = [run for run in runs if run.shape == fp64.shape]
    if not runs or fp64.size == 0:
        return None
    ref = np.asarray(fp64, dtype=np.float64)  # read only: no copy of a float64 reference
    scale = _Scale(ref, "fp32", dims)
    floors = [scale.floor([_error(run, ref)]) for run in runs]
    channels = [c for _, c in floors if c is not None]
    return NoiseFloor(max(v for v, _ in floors), np.maximum.reduce(channels) if channels else None)


def _error(run: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|run - ref|, with non-finite elements (a NaN in the reference itself) counted as 0."""
    import numpy as np

    with np.errstate(invalid="ignore"):  # inf - inf: a NaN, counted as 0 below
        err = np.asarray(np.subtract(run, ref, dtype=np.float64))  # a 0-d output's difference is a numpy scalar
    return _finite_or(np.abs(err, out=err), 0.0)


def _finite_or(values: np.ndarray, fill: float) -> np.ndarray:
    """`values` (float, changed in place) with every non-finite element set to `fill`. One pass where all are finite
    (the common case: the maximum of an array holding a NaN or an infinity is not finite), as a layer verdict
    measures this for every layer of a model."""
    import numpy as np

    if values.size and not np.isfinite(values.max()):
        values[~np.isfinite(values)] = fill
    return values


def measure_floors(run: dict[str, np.ndarray], fp64: dict[str, np.ndarray], precision: str = "fp32",
                   float32: dict[str, NoiseFloor] | None = None,
                   samples: Sequence[dict[str, np.ndarray]] = ()) -> dict[str, NoiseFloor]:
    """Every output's floor; `float32` (the float32 floors) is quoted beside a reduced precision's."""
    floors = {}
    for name, ref in fp64.items():
        if name not in run:
            continue
        fp32 = (float32 or {}).get(name)
        floor = measure_floor(run[name], ref, precision, fp32.value if fp32 is not None else None,
                              [s[name] for s in samples if name in s])
        if floor is not None:
            floors[name] = floor
    return floors


def noise_floors(fp32: dict[str, np.ndarray], fp64: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-output float32 floors as plain floats (the figure manifests record)."""
    return {name: floor.value for name, floor in measure_floors(fp32, fp64).items()}
