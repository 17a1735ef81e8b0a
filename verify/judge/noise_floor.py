"""The noise floor record (`NoiseFloor`): one output's rounding at one precision against its float64 reference, per
channel where the output has channels, with the floor of its bulk where some elements are peaks (verify/judge/peaks.py).
Measured by verify/judge/measure.py; this module holds the record and the constants its bounds read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from verify.judge.precision import EPS, describe

if TYPE_CHECKING:
    import numpy as np

FLOAT32_EPS = EPS["fp32"]
CHANNEL_AXIS = 1
"""Outputs with channels (CHANNEL_DIMS) have them on this axis; their floors are per channel."""
CHANNEL_DIMS = (4, 5)
"""The ranks of outputs with channels: NCHW, and NCDHW (a Conv3d's, a video model's). Before, a 5-D output had one
floor, and a 0.1 % error in a quiet channel of a Conv3d's output passed at 3.5x that floor, 7.6x its channel's own
(sweep 31)."""
LAYER_CHANNEL_DIMS = (4,)
"""The ranks whose values a layer's own floor (the layer verdict, `explain --isolate`) splits per channel: NCHW only.
ONNX Runtime rounds a Conv3d more coarsely than torch (r2plus1d_18 at 1x12x32x32: its error a channel 1.48x torch's in
the median), and a correct file's Conv3d reached 7.0x its channel's own floor over torch's three evaluations (sweep 31):
a 5-D layer keeps one floor, as before."""
MIN_CHANNEL_ELEMENTS = 16
"""A channel gets its own floor only with at least this many non-zero reference elements: a channel a
ReLU has (nearly) zeroed shows its rounding in a handful of elements, too few to measure it from, and
keeps its output's floor."""
CHANNEL_FLOOR_SHARE = 0.2
"""A channel's floor is at least this share of its output's floor: where a channel's elements are few or
correlated (deep layers, constant images) its own maximum underestimates its rounding. Calibrated with
bench/calibrate_auto.py (bench/results/calibrate-cpu-perchannel.log)."""


def channelled(shape: Sequence[int], dims: Sequence[int] = CHANNEL_DIMS) -> bool:
    """Whether an output of this shape is judged per channel: `dims` dimensions, more than one channel."""
    return len(shape) in dims and shape[CHANNEL_AXIS] > 1


def channel_view(ndim: int) -> tuple[int, ...]:
    """The shape that makes one value a channel broadcast over an output of `ndim` dimensions."""
    return (1,) * CHANNEL_AXIS + (-1,) + (1,) * (ndim - CHANNEL_AXIS - 1)


def other_axes(ndim: int) -> tuple[int, ...]:
    """Every axis of an output of `ndim` dimensions but the channels': what a channel's maximum is taken over."""
    return tuple(a for a in range(ndim) if a != CHANNEL_AXIS)


@dataclass(frozen=True, eq=False)
class NoiseFloor:
    """The noise floor of one output at one precision."""

    value: float
    """Per output: max |run - fp64|, at least one ulp (at this precision) of the output's scale."""
    channels: np.ndarray | None = None
    """Per channel (axis 1 of an NCHW or NCDHW output): max over every other axis of |run - fp64|, at least
    max(CHANNEL_FLOOR_SHARE x `value`, one ulp of the output's scale); `value` where the channel has
    fewer than MIN_CHANNEL_ELEMENTS non-zero elements. None for outputs without channels."""
    precision: str = "fp32"
    float32: float | None = None
    """The float32 per-output floor, when `precision` is not fp32: verdicts quote both ratios."""
    rms: np.ndarray | None = None
    """Per channel: RMS of |run - fp64| (recorded for calibration and reports; verdicts use `channels`)."""
    ignored: int = 0
    """Non-finite elements left out of the measurement (a NaN in the reference itself)."""
    bulk: np.ndarray | None = None
    """Per group (each channel; one group for an output without channels): the floor of the elements at most
    `bulk_limits` in magnitude, measured on those elements alone (never above the group's floor). None where no
    element is a peak (PEAK_FACTOR): then every element is judged on the group's floor."""
    bulk_limits: np.ndarray | None = None
    """Per group: the magnitude up to which an element is judged on `bulk` (PEAK_FACTOR x its typical magnitude)."""

    def __post_init__(self) -> None:
        """Fail closed: a floor of zero, NaN or Inf (a tampered manifest, a bad caller) judges nothing."""
        import numpy as np

        from exporter.errors import UsageError

        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) \
                or not (math.isfinite(self.value) and self.value > 0):
            raise UsageError(f"A noise floor must be a finite number > 0, got {self.value!r}")
        if self.channels is not None and not (np.isfinite(self.channels).all() and (self.channels > 0).all()):
            raise UsageError("Per-channel noise floors must be finite numbers > 0")
        if self.precision not in EPS:
            raise UsageError(f"Unknown precision {self.precision!r} for a noise floor; use one of {', '.join(EPS)}")
        if (self.bulk is None) != (self.bulk_limits is None) or self.bulk is not None and not (
                self.bulk.shape == self.bulk_limits.shape == (self.groups,)
                and np.isfinite(self.bulk).all() and (self.bulk > 0).all()
                and (self.bulk <= self.group_floors * (1 + 1e-12)).all()
                and np.isfinite(self.bulk_limits).all() and (self.bulk_limits >= 0).all()):
            raise UsageError("Bulk noise floors must come with their limits, one per channel (or one per output), "
                             "finite, > 0 and at most the channel's floor")

    @property
    def groups(self) -> int:
        """How many groups the floor has: its channels, or 1 (the whole output)."""
        return 1 if self.channels is None else int(self.channels.shape[0])

    @property
    def group_floors(self) -> np.ndarray:
        """Each group's floor over all its elements: `channels`, or `value` as one group."""
        import numpy as np

        return np.asarray([self.value]) if self.channels is None else self.channels

    def in_bulk(self, magnitude: np.ndarray) -> np.ndarray | None:
        """Where `magnitude` (an output's shape) is within its group's bulk limit; None without a bulk floor or where
        the shape does not fit the groups. NaN is not in the bulk."""
        if self.bulk is None or not magnitude.size:
            return None
        if self.channels is not None:
            if not channelled(magnitude.shape) or magnitude.shape[CHANNEL_AXIS] != self.groups:
                return None
            return magnitude <= self.bulk_limits.reshape(channel_view(magnitude.ndim))
        return magnitude <= self.bulk_limits.reshape((1,) * magnitude.ndim)

    def element_floors(self, actual: np.ndarray, desired: np.ndarray) -> np.ndarray | None:
        """Each element's floor where the bulk rule applies (`bulk`), in the outputs' shape; None where it does not
        (no peak was measured, or the shape does not fit: the caller uses the group floors). An element is judged
        on its group's bulk floor when the smaller of its two magnitudes is within the group's limit: a side that
        drops a peak is judged on the tighter floor, never a side that invents one."""
        import numpy as np

        if self.bulk is None or actual.shape != desired.shape:  # no peak: no per-element work (every comparison)
            return None
        with np.errstate(invalid="ignore"):
            magnitude = np.minimum(np.abs(actual.astype(np.float64)), np.abs(desired.astype(np.float64)))
            mask = self.in_bulk(magnitude)
        if mask is None:
            return None
        shape = channel_view(magnitude.ndim) if self.channels is not None else (1,) * magnitude.ndim
        return np.where(mask, self.bulk.reshape(shape), self.group_floors.reshape(shape))

    @classmethod
    def of(cls, value: NoiseFloor | float | None) -> NoiseFloor | None:
        """Accept a plain per-output float (manifests record those) as a floor without channels."""
        if value is None or isinstance(value, NoiseFloor):
            return value
        return cls(float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | float) -> NoiseFloor:
        """Read back `to_dict()`, or a plain per-output float (what older manifests record); anything
        malformed (a null, a NaN, a string) is refused rather than judged against."""
        import numpy as np

        from exporter.errors import UsageError

        if not isinstance(data, dict):
            return cls.of(data)
        try:
            channels = data.get("channels")
            if channels is not None:
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in channels):
                    raise TypeError("channels")
                channels = np.asarray(channels, dtype=np.float64)
            float32 = data.get("float32")
            bulk, limits = (_numbers(data.get(key)) for key in ("bulk", "bulk_limits"))
            return cls(data["value"], channels, data.get("precision", "fp32"),
                       None if float32 is None else float(float32), bulk=bulk, bulk_limits=limits)
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"Malformed noise floor record ({exc}); re-export the artifact") from None

    def channel_floor(self, channel: int | None) -> float:
        return self.value if channel is None or self.channels is None else float(self.channels[channel])

    def combine(self, other: NoiseFloor | None) -> NoiseFloor:
        """The larger floor of two measurements, channel by channel where both have channels."""
        import numpy as np

        if other is None:
            return self
        channels = None
        if self.channels is not None and other.channels is not None and self.channels.shape == other.channels.shape:
            channels = np.maximum(self.channels, other.channels)
        bulk = limits = None
        if (channels is not None or self.channels is None and other.channels is None) \
                and (self.bulk is not None or other.bulk is not None):
            # the larger bulk floor, up to the smaller limit: an element either measurement called a peak is judged
            # on the larger group floor (a floor without peaks is a bulk floor reaching every magnitude)
            sides = [(f.bulk, f.bulk_limits) if f.bulk is not None else (f.group_floors, None) for f in (self, other)]
            bulk = np.maximum(sides[0][0], sides[1][0])
            limits = np.minimum(*[lim for _, lim in sides if lim is not None]) if all(
                lim is not None for _, lim in sides) else next(lim for _, lim in sides if lim is not None)
        float32 = max((f.value if f.precision == "fp32" else f.float32 for f in (self, other)
                       if f.precision == "fp32" or f.float32 is not None), default=None)
        precision = max(self.precision, other.precision, key=lambda p: EPS.get(p, 0.0))  # the coarser one
        return replace(self, value=max(self.value, other.value), channels=channels, precision=precision,
                       float32=float32 if precision != "fp32" else None, rms=None,
                       ignored=self.ignored + other.ignored, bulk=bulk, bulk_limits=limits)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: every number finite, or null with the reason beside it."""
        data: dict[str, Any] = {"value": _finite(self.value), "precision": self.precision}
        if self.float32 is not None:
            data["float32"] = _finite(self.float32)
        if self.channels is not None:
            data["channels"] = [_finite(v) for v in self.channels.tolist()]
            worst = int(self.channels.argmin())
            data["quietest_channel"] = {"channel": worst, "floor": _finite(float(self.channels[worst]))}
        if self.bulk is not None:
            data["bulk"] = [_finite(v) for v in self.bulk.tolist()]
            data["bulk_limits"] = [_finite(v) for v in self.bulk_limits.tolist()]
        if self.ignored:
            data["ignored_nonfinite"] = self.ignored
        nulls = [k for k, v in data.items() if v is None] + \
            [k for k in ("channels", "bulk", "bulk_limits") if None in (data.get(k) or [])]
        if nulls:
            data["null_reason"] = f"{', '.join(nulls)}: not finite (a NaN or Inf in the measurement)"
        return data

    def describe(self) -> str:
        return f"{describe(self.precision)} noise floor"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _numbers(values: Any) -> np.ndarray | None:
    """A list of plain numbers as a float64 array (None for None); anything else is refused (TypeError)."""
    import numpy as np

    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise TypeError("bulk")
    return np.asarray(values, dtype=np.float64)
