"""Statistics and verdicts for one pair of outputs. Results are data; rendering is elsewhere.

Three tolerance modes:
- `auto` (default): pass when |a - b| <= AUTO_FACTOR x the noise floor everywhere, the floor being
  |eager - eager fp64| measured on this model and this input, per channel where the output has
  channels (verify/judge/measure.py), per output otherwise. The ratio is the worst channel's.
- `decimal`: exactly `numpy.testing.assert_array_almost_equal(actual, desired, decimal)`.
- `allclose`: exactly `numpy.testing.assert_allclose(actual, desired, rtol, atol)`.
In every mode a NaN or Inf fails, even where numpy would accept matching NaNs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError
from verify.bounds import DECIMAL_RANGE
from verify.judge.noise_floor import CHANNEL_AXIS, NoiseFloor, channel_view, channelled, other_axes
from verify.judge.precision import describe as describe_precision

if TYPE_CHECKING:
    import numpy as np

AUTO_FACTOR = 5.0
"""Measured with bench/calibrate_auto.py (bench/results/calibrate-cpu-perchannel.log; CPU, synthetic
weights, 1x3x224x224, judged per channel): correct float32 runs of resnet18/34/50 x every norm (and
resnet50's three views) under eager, TorchScript and ONNX Runtime at all four optimisation levels, both
ONNX exporters, on standard normal, uniform [0, 1] and constant inputs, every run against the oracle
and every pair of runs (1,770 in 60 model x input configurations), stay within 4.52x; 86 visible 0.1 %
one-channel weight errors from every stage, and ReLU / residual / eps / channel-order bugs, are at least
5.57x (the next least 11.5x). 5 is their geometric mean: no correct run over it and no visible bug under
it, but the separation is only 1.23 (the least visible bug, in resnet50's last-block conv1, is 1.8x the
per-output floor: at the limit of what one input can show)."""
MODES = ("auto", "decimal", "allclose")


MODE_FIELDS = {"auto": ("factor",), "decimal": ("decimal",), "allclose": ("rtol", "atol")}
"""The fields each mode reads; every other field must keep its default (FIELD_DEFAULTS)."""
FIELD_DEFAULTS = {"decimal": None, "rtol": 1e-7, "atol": 0.0, "factor": AUTO_FACTOR}


@dataclass(frozen=True)
class Tolerance:
    mode: str = "auto"
    decimal: int | None = None
    rtol: float = 1e-7
    atol: float = 0.0
    factor: float = AUTO_FACTOR

    def __post_init__(self) -> None:
        """Fail closed: a tolerance that could pass anything (NaN, Inf, negative) never exists."""
        if self.mode not in MODES:
            raise UsageError(f"Unknown tolerance mode {self.mode!r}; use one of {', '.join(MODES)}")
        for name in ("rtol", "atol", "factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                # the library's wrong type, named as its field (surface 30: rtol="1e-3" was a UsageError naming the
                # CLI's --rtol); the CLI parses its options to numbers, so it never reaches this
                raise TypeError(f"{name} must be a number, e.g. {FIELD_DEFAULTS[name]!r}, not {type(value).__name__}")
            # a numpy scalar (rtol=np.float32(1e-3)) is a number too (review 31: "must be a number ... not float32")
            if type(value) not in (int, float):
                object.__setattr__(self, name, value := float(value))
            if not math.isfinite(value):
                raise UsageError(f"--{name} must be a finite number, got {value!r}")
        if self.rtol < 0 or self.atol < 0:
            raise UsageError("--rtol and --atol must be >= 0")
        if self.factor <= 0:
            raise UsageError(f"--factor must be > 0, got {self.factor!r}")
        if self.mode == "decimal" or self.decimal is not None:
            low, high = DECIMAL_RANGE
            if isinstance(self.decimal, numbers.Integral) and type(self.decimal) not in (bool, int):
                object.__setattr__(self, "decimal", int(self.decimal))  # np.int64(5): a whole number (review 31)
            if self.decimal is not None and not isinstance(self.decimal, int | float):
                raise TypeError(f"decimal must be a whole number of digits, e.g. 5, not {type(self.decimal).__name__}")
            if isinstance(self.decimal, bool) or not isinstance(self.decimal, int) \
                    or not low <= self.decimal <= high:
                raise UsageError(f"--decimal must be an integer from {low} to {high}, got {self.decimal!r}")
        ignored = [name for name, default in FIELD_DEFAULTS.items()
                   if name not in MODE_FIELDS[self.mode] and getattr(self, name) != default]
        if ignored:  # Tolerance(rtol=1e-3) would judge in auto mode, its rtol unread
            raise UsageError(f"The {self.mode} tolerance mode does not read {', '.join(ignored)}; use "
                             "Tolerance.from_options(...), which picks the mode from what is given")

    @classmethod
    def from_options(cls, decimal: int | None = None, rtol: float | None = None,
                     atol: float | None = None, factor: float | None = None) -> Tolerance:
        if decimal is not None and (rtol is not None or atol is not None):
            raise UsageError("Use either --decimal or --rtol/--atol, not both")
        if factor is not None and (decimal is not None or rtol is not None or atol is not None):
            raise UsageError("--factor sets the auto mode; it cannot go with --decimal or --rtol/--atol")
        if decimal is not None:
            return cls(mode="decimal", decimal=decimal)
        if rtol is not None or atol is not None:
            # numpy.testing.assert_allclose's own defaults: rtol=1e-7, atol=0
            return cls(mode="allclose", rtol=1e-7 if rtol is None else rtol, atol=0.0 if atol is None else atol)
        return cls(factor=AUTO_FACTOR if factor is None else factor)

    def describe(self) -> str:
        if self.mode == "decimal":
            return f"decimal={self.decimal} (|a-b| < {1.5 * 10.0 ** -self.decimal:.1e})"
        if self.mode == "allclose":
            return f"rtol={self.rtol:g}, atol={self.atol:g}"
        return f"auto: |a-b| <= {self.factor:g} x noise floor, per channel"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class OutputComparison:
    name: str
    shape_a: list[int]
    shape_b: list[int]
    passed: bool
    reason: str = ""
    max_abs: float | None = None
    max_rel: float | None = None
    """max |a-b| / max |b|: relative to the output's scale, finite near zero."""
    mean_abs: float | None = None
    mismatched: int = 0
    nonfinite: int = 0
    """NaN or Inf elements on either side (they never pass)."""
    total: int = 0
    worst_index: list[int] | None = None
    """Where |a-b| is largest, with both values."""
    worst_a: float | None = None
    worst_b: float | None = None
    floor: float | None = None
    """The output's floor (per output, at `precision`)."""
    ratio: float | None = None
    """How many noise floors apart: the worst channel's max |a-b| over its own floor where the floor
    has channels, else max_abs / floor."""
    channel: int | None = None
    """The worst channel (the one `ratio` comes from), where judged per channel."""
    channel_floor: float | None = None
    """The floor `ratio` divides by: the worst channel's, or, at an element in its group's bulk, the bulk floor."""
    away_from_peaks: bool = False
    """`channel_floor` is a bulk floor (oracle.PEAK_FACTOR): the worst element lies away from its group's peaks."""
    output_ratio: float | None = None
    """max_abs / the output's floor: the per-output figure, for comparison with `ratio`."""
    precision: str = "fp32"
    """The precision the floor was measured at."""
    float32_ratio: float | None = None
    """max_abs / the float32 floor, when `precision` is not fp32."""
    allowed: float | None = None
    """The absolute bound applied (auto and decimal modes; in auto, at the worst channel)."""
    needed: str = ""
    """The least tolerance in this mode that would have passed."""

    @property
    def mismatch_fraction(self) -> float:
        return self.mismatched / self.total if self.total else 0.0

    @property
    def where(self) -> str:
        """The output, and its worst channel where judged per channel: `layer4[c=17]`."""
        return self.name if self.channel is None else f"{self.name}[c={self.channel}]"

    def verdict(self) -> str:
        """One phrase: `agrees at BF16 precision (1.1x the BF16 floor; 900x the float32 floor)`."""
        word = "agrees" if self.passed else "differs"
        if self.ratio is None:
            return f"{word}{': ' + self.reason if self.reason else ''}"
        name = describe_precision(self.precision)
        text = f"{word} at {name} precision ({self.ratio:.1f}x the {name} floor"
        if self.float32_ratio is not None:
            text += f"; {self.float32_ratio:.0f}x the float32 floor"
        return text + ")"

    def to_dict(self) -> dict:
        data = _json_safe(asdict(self))
        data["mismatch_fraction"] = self.mismatch_fraction
        data["where"] = self.where
        data["verdict"] = self.verdict()
        return data


def _json_safe(data: dict[str, Any]) -> dict[str, Any]:
    """Non-finite numbers become null, with the reason in `null_reason` (JSON has no NaN)."""
    nulls = {key: "NaN" if math.isnan(value) else "Inf" for key, value in data.items()
             if isinstance(value, float) and not math.isfinite(value)}
    if nulls:
        data.update(dict.fromkeys(nulls))
        data["null_reason"] = ", ".join(f"{key}: {why}" for key, why in nulls.items())
    return data


@dataclass
class PairResult:
    a: str
    b: str
    outputs: list[OutputComparison] = field(default_factory=list)
    kind: str = "runtime"
    """`runtime` (two runs) or `oracle` (a run against the float64 reference)."""

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs)

    @property
    def worst(self) -> OutputComparison:
        return max(self.outputs, key=lambda o: (not o.passed, o.ratio or 0.0, o.max_abs or 0.0))

    def to_dict(self) -> dict:
        worst = self.worst if self.outputs else None
        return {"a": self.a, "b": self.b, "kind": self.kind, "passed": self.passed,
                "worst": None if worst is None else {"output": worst.name, "channel": worst.channel,
                                                      "ratio": _finite_or_none(worst.ratio)},
                "outputs": [o.to_dict() for o in self.outputs]}


def _finite_or_none(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def compare_arrays(name: str, actual: np.ndarray, desired: np.ndarray, tolerance: Tolerance,
                   floor: NoiseFloor | float | None = None) -> OutputComparison:
    """Judge `actual` against `desired` (the reference side) under `tolerance`. `floor` is a
    NoiseFloor (per channel where it has channels) or a plain per-output float."""
    import numpy as np

    noise = NoiseFloor.of(floor)
    if np.iscomplexobj(actual) or np.iscomplexobj(desired):  # widening to float64 would judge the real parts only
        raise UsageError(f"Output {name} is complex ({actual.dtype} vs {desired.dtype}); verdicts judge real "
                         "outputs, so return torch.view_as_real(output) from the model to judge both parts")
    discrete = not (np.issubdtype(actual.dtype, np.floating) and np.issubdtype(desired.dtype, np.floating))
    exact = None
    if discrete:
        kinds = f"{actual.dtype}" if actual.dtype == desired.dtype else f"{actual.dtype} vs {desired.dtype}"
        if actual.shape == desired.shape and np.result_type(actual, desired).kind in "biu":
            exact = np.not_equal(actual, desired)  # in their common integer dtype: float64 holds 53 bits (review 24)
        actual, desired = actual.astype(np.float64), desired.astype(np.float64)  # no integer wrap-around
    result = OutputComparison(name, list(actual.shape), list(desired.shape), passed=False,
                              total=int(desired.size), floor=noise.value if noise else None,
                              precision=noise.precision if noise else "fp32")
    if actual.shape != desired.shape:
        result.reason = f"shape {tuple(actual.shape)} vs {tuple(desired.shape)}"
        result.mismatched = result.total
        return result
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.asarray(np.subtract(actual, desired, dtype=np.float64))  # both widened first, as float64 copies were
    np.abs(diff, out=diff)
    # a NaN or Inf on either side makes |a-b| NaN or Inf (argmax finds a NaN first): where the largest |a-b| is
    # finite both sides are, and the two passes of a finiteness mask are spared (the common case)
    worst = int(np.argmax(diff)) if diff.size else 0
    finite = _finite_mask(actual, desired) if diff.size and not math.isfinite(diff.flat[worst]) else None
    if finite is not None:
        diff[~finite] = 0.0
        worst = int(np.argmax(diff))
    if diff.size:
        result.worst_index = [int(i) for i in np.unravel_index(worst, diff.shape)]
        result.worst_a, result.worst_b = float(actual.flat[worst]), float(desired.flat[worst])
        result.max_abs = float(diff.flat[worst])
        result.mean_abs = float(diff.mean())
        kept = desired if finite is None else np.where(finite, desired, 0)
        scale = float(max(-kept.min(), kept.max()))  # max |b|, without an |b| copy
        result.max_rel = result.max_abs / scale if scale > 0 else (0.0 if result.max_abs == 0 else None)
    else:
        result.max_abs = result.mean_abs = result.max_rel = 0.0
    bound = _floor_ratios(diff, noise, tolerance, result, actual, desired)
    if discrete and bound is not None:  # an index or a mask: rounding moves no value, it flips one (or none)
        bound = np.zeros(())

    mismatch, passed = _judge(actual, desired, diff, tolerance, bound, result)
    if discrete and bound is not None:
        result.allowed = 0.0
        if exact is not None:  # int64 indices past 2**53 apart by less than a float64 ulp of theirs are not equal
            mismatch, passed = mismatch | exact, passed and not bool(exact.any())
    result.nonfinite = 0 if finite is None else int((~finite).sum())
    result.mismatched = int(np.count_nonzero(mismatch if finite is None else mismatch | ~finite))
    result.passed = passed and result.nonfinite == 0
    if result.nonfinite:
        counts = [f"{int(np.isnan(x).sum())} NaN, {int(np.isinf(x).sum())} Inf in {side}"
                  for side, x in (("a", actual), ("b", desired)) if not np.isfinite(x).all()]
        result.reason = "; ".join(counts)
    elif not result.passed and not result.reason and discrete and bound is not None:
        result.reason = (f"{result.mismatched} of {result.total} elements of this {kinds} output differ, judged "
                         f"exactly: {DISCRETE_NOTE}")
    elif not result.passed and not result.reason:
        result.reason = f"{result.mismatched} of {result.total} elements out of tolerance"
    return result


DISCRETE_NOTE = ("an integer or boolean output (an argmax, a mask) flips where the scores it is made from are within "
                 "rounding of a tie: return those scores to judge them on the float32 floor")
"""Why an auto verdict judges a non-float output exactly (sweep 27b): its floor is float32 vs float64 of an index, 0, or
a whole index where one element flipped, and 5x that passed any index off by up to 5 (a mask: anything)."""


def _finite_mask(actual: np.ndarray, desired: np.ndarray) -> np.ndarray | None:
    """Where both sides are finite; None when every element of both is (the common case: no mask to apply)."""
    import numpy as np

    if np.isfinite(actual).all() and np.isfinite(desired).all():
        return None
    return np.isfinite(actual) & np.isfinite(desired)


def _floor_ratios(diff: np.ndarray, noise: NoiseFloor | None, tolerance: Tolerance, result: OutputComparison,
                  actual: np.ndarray, desired: np.ndarray) -> np.ndarray | None:
    """Fill the ratios to the floor; return auto mode's elementwise bound (per channel where the
    floor has channels that fit this output, per element where it has a bulk floor), or None without a floor."""
    import numpy as np

    if not noise:
        return None
    result.output_ratio = _finite_or_none(result.max_abs / noise.value)
    if noise.float32:
        result.float32_ratio = _finite_or_none(result.max_abs / noise.float32)
    elements = noise.element_floors(actual, desired)
    if elements is not None:  # peaks measured: the bulk is judged on its own floor (oracle.PEAK_FACTOR)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios = diff / elements
        worst = int(np.argmax(ratios))
        result.ratio = _finite_or_none(float(ratios.flat[worst]))
        if ratios.flat[worst] > 0:
            index = np.unravel_index(worst, diff.shape)
            result.channel = int(index[1]) if noise.channels is not None else None
            result.channel_floor = float(elements[index] if elements.ndim else elements)
            group = noise.group_floors[result.channel or 0]
            result.away_from_peaks = result.channel_floor < group
        return tolerance.factor * elements
    channels = noise.channels
    if channels is None or not channelled(diff.shape) or diff.shape[CHANNEL_AXIS] != channels.shape[0] \
            or not diff.size:
        result.ratio = result.output_ratio
        return np.asarray(tolerance.factor * noise.value)
    per_channel = diff.max(axis=other_axes(diff.ndim)) / channels
    worst = int(np.argmax(per_channel))
    result.ratio = _finite_or_none(float(per_channel[worst]))
    if per_channel[worst] > 0:  # no channel to name where the two are identical
        result.channel, result.channel_floor = worst, float(channels[worst])
    return tolerance.factor * channels.reshape(channel_view(diff.ndim))


def _judge(actual: np.ndarray, desired: np.ndarray, diff: np.ndarray, tolerance: Tolerance,
           bound: np.ndarray | None, result: OutputComparison) -> tuple[np.ndarray, bool]:
    """Elementwise mismatches and the verdict; numpy itself decides in its two modes."""
    import numpy as np

    if tolerance.mode == "decimal":
        assert tolerance.decimal is not None
        bound = 1.5 * 10.0 ** (-tolerance.decimal)
        result.allowed = bound
        # the same expression, in the same dtypes, as numpy's assert_array_almost_equal
        with np.errstate(invalid="ignore", over="ignore"):  # a difference beyond the dtype's range is a mismatch
            mismatch = ~(np.abs(desired - actual) < bound)
        if result.max_abs and math.isfinite(result.max_abs):  # float64 outputs 1e308 apart: no decimal passes
            result.needed = f"decimal={math.floor(-math.log10(result.max_abs / 1.5) - 1e-12)}"
        return mismatch, _numpy_passes(np.testing.assert_array_almost_equal, actual, desired,
                                       decimal=tolerance.decimal)
    if tolerance.mode == "allclose":
        with np.errstate(invalid="ignore", over="ignore"):
            mismatch = ~np.isclose(actual, desired, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True)
        b_abs = np.abs(np.nan_to_num(desired.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0))
        need_atol = float(np.max(diff - tolerance.rtol * b_abs, initial=0.0))
        result.needed = f"atol>={_round_up(need_atol):.3g} at rtol={tolerance.rtol:g}"
        return mismatch, _numpy_passes(np.testing.assert_allclose, actual, desired,
                                       rtol=tolerance.rtol, atol=tolerance.atol)
    if bound is None:
        raise UsageError("auto tolerance needs a measured noise floor; pass --decimal or --rtol/--atol")
    result.allowed = tolerance.factor * (result.floor if result.channel_floor is None else result.channel_floor)
    if result.ratio is not None:
        result.needed = f"factor>={result.ratio:.3g}"
    mismatch = diff > bound
    return mismatch, not bool(mismatch.any())


def _round_up(value: float, digits: int = 3) -> float:
    """Round up to `digits` significant digits, with room for float32 rounding of |a-b|."""
    from decimal import ROUND_CEILING, Decimal

    if not value > 0 or not math.isfinite(value):
        return max(value, 0.0) if math.isfinite(value) else value
    target = value * (1 + 1e-6)
    exact = Decimal(target)
    exponent = exact.adjusted() - digits + 1
    rounded = float(exact.scaleb(-exponent).to_integral_value(ROUND_CEILING).scaleb(exponent))
    return rounded if rounded >= target else math.nextafter(rounded, math.inf)


def _numpy_passes(check, actual: np.ndarray, desired: np.ndarray, **kwargs) -> bool:
    import numpy as np

    try:
        with np.errstate(over="ignore", invalid="ignore"):  # numpy's own |a-b| may overflow: it fails, quietly
            check(actual, desired, **kwargs)
    except AssertionError:
        return False
    return True


def compare_outputs(a_label: str, a: dict[str, np.ndarray], b_label: str, b: dict[str, np.ndarray],
                    tolerance: Tolerance, floors: Mapping[str, NoiseFloor | float] | None = None,
                    kind: str = "runtime", require_all: bool = False) -> PairResult:
    """Compare the outputs both sides share, in `b`'s order; `b` is the reference side.
    With `require_all` (two runs of one model, or a run against its goldens) an output missing
    on either side is a failure, not something to skip."""
    shared = [name for name in b if name in a]
    if not shared and not require_all:
        raise UsageError(f"{a_label} and {b_label} share no output ({', '.join(a)} vs {', '.join(b)})")
    floors = floors or {}
    outputs = [compare_arrays(name, a[name], b[name], tolerance, floors.get(name)) for name in shared]
    if require_all:
        for name in [n for n in a if n not in b] + [n for n in b if n not in a]:
            shape_a = list(a[name].shape) if name in a else []
            shape_b = list(b[name].shape) if name in b else []
            outputs.append(OutputComparison(name, shape_a, shape_b, passed=False,
                                            reason=f"output missing in {'b' if name in a else 'a'}"))
    return PairResult(a_label, b_label, outputs, kind=kind)
