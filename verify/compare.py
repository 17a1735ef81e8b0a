"""Statistics and verdicts for one pair of outputs. Results are data; rendering is elsewhere.

Three tolerance modes:
- `auto` (default): pass when max |a - b| <= AUTO_FACTOR x the float32 noise floor, the
  floor being max |eager fp32 - eager fp64| measured on this model and this input.
- `decimal`: exactly `numpy.testing.assert_array_almost_equal(actual, desired, decimal)`.
- `allclose`: exactly `numpy.testing.assert_allclose(actual, desired, rtol, atol)`.
In every mode a NaN or Inf fails, even where numpy would accept matching NaNs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from exporter.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

AUTO_FACTOR = 4.0
"""Measured with bench/calibrate_auto.py on this project's synthetic weights, 1x3x224x224
(bench/results/): correct float32 runs (eager, TorchScript, ORT with all or no graph
optimisations, both ONNX exporters; every backbone x norm, every view of resnet50) stay within
1.83x the floor on CPU and 2.2x on an H100 without TF32, pair against pair; a 0.1 % weight error
in one output channel of one layer2/layer3 convolution of ResNet-50 gives 7.9x at the least and
39x at the median over 30 seeded picks. 4 sits between, about 2x from each."""


@dataclass(frozen=True)
class Tolerance:
    mode: str = "auto"
    decimal: int | None = None
    rtol: float = 1e-7
    atol: float = 0.0
    factor: float = AUTO_FACTOR

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
            if (rtol or 0) < 0 or (atol or 0) < 0:
                raise UsageError("--rtol and --atol must be >= 0")
            # numpy.testing.assert_allclose's own defaults: rtol=1e-7, atol=0
            return cls(mode="allclose", rtol=1e-7 if rtol is None else rtol, atol=atol or 0.0)
        if factor is not None and factor <= 0:
            raise UsageError("--factor must be > 0")
        return cls(factor=factor or AUTO_FACTOR)

    def describe(self) -> str:
        if self.mode == "decimal":
            return f"decimal={self.decimal} (|a-b| < {1.5 * 10.0 ** -self.decimal:.1e})"
        if self.mode == "allclose":
            return f"rtol={self.rtol:g}, atol={self.atol:g}"
        return f"auto: |a-b| <= {self.factor:g} x float32 noise floor"

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
    worst_a: float | None = None
    worst_b: float | None = None
    floor: float | None = None
    ratio: float | None = None
    """max_abs / floor: how many float32 noise floors apart."""
    allowed: float | None = None
    """The absolute bound applied (auto and decimal modes)."""
    needed: str = ""
    """The least tolerance in this mode that would have passed."""

    @property
    def mismatch_fraction(self) -> float:
        return self.mismatched / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mismatch_fraction"] = self.mismatch_fraction
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
        return {"a": self.a, "b": self.b, "kind": self.kind, "passed": self.passed,
                "outputs": [o.to_dict() for o in self.outputs]}


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def compare_arrays(name: str, actual: np.ndarray, desired: np.ndarray, tolerance: Tolerance,
                   floor: float | None = None) -> OutputComparison:
    """Judge `actual` against `desired` (the reference side) under `tolerance`."""
    import numpy as np

    if not (np.issubdtype(actual.dtype, np.floating) and np.issubdtype(desired.dtype, np.floating)):
        actual, desired = actual.astype(np.float64), desired.astype(np.float64)  # no integer wrap-around
    result = OutputComparison(name, list(actual.shape), list(desired.shape), passed=False,
                              total=int(desired.size), floor=floor)
    if actual.shape != desired.shape:
        result.reason = f"shape {tuple(actual.shape)} vs {tuple(desired.shape)}"
        result.mismatched = result.total
        return result
    a64, b64 = actual.astype(np.float64), desired.astype(np.float64)
    finite = np.isfinite(a64) & np.isfinite(b64)
    diff = np.where(finite, np.abs(a64 - b64), 0.0)
    if diff.size:
        worst = int(np.argmax(diff))
        result.worst_index = [int(i) for i in np.unravel_index(worst, diff.shape)]
        result.worst_a, result.worst_b = float(a64.flat[worst]), float(b64.flat[worst])
        result.max_abs = float(diff.max())
        result.mean_abs = float(diff.mean())
        scale = float(np.abs(np.where(finite, b64, 0.0)).max())
        result.max_rel = result.max_abs / scale if scale > 0 else (0.0 if result.max_abs == 0 else None)
    else:
        result.max_abs = result.mean_abs = result.max_rel = 0.0
    if floor:
        result.ratio = _finite_or_none(result.max_abs / floor)

    mismatch, passed = _judge(actual, desired, diff, tolerance, floor, result)
    result.nonfinite = int((~finite).sum())
    result.mismatched = int((mismatch | ~finite).sum())
    result.passed = passed and result.nonfinite == 0
    if result.nonfinite:
        counts = [f"{int(np.isnan(x).sum())} NaN, {int(np.isinf(x).sum())} Inf in {side}"
                  for side, x in (("a", actual), ("b", desired)) if not np.isfinite(x).all()]
        result.reason = "; ".join(counts)
    elif not result.passed and not result.reason:
        result.reason = f"{result.mismatched} of {result.total} elements out of tolerance"
    return result


def _judge(actual: np.ndarray, desired: np.ndarray, diff: np.ndarray, tolerance: Tolerance,
           floor: float | None, result: OutputComparison) -> tuple[np.ndarray, bool]:
    """Elementwise mismatches and the verdict; numpy itself decides in its two modes."""
    import numpy as np

    if tolerance.mode == "decimal":
        assert tolerance.decimal is not None
        bound = 1.5 * 10.0 ** (-tolerance.decimal)
        result.allowed = bound
        # the same expression, in the same dtypes, as numpy's assert_array_almost_equal
        with np.errstate(invalid="ignore"):
            mismatch = ~(np.abs(desired - actual) < bound)
        if result.max_abs:
            result.needed = f"decimal={math.floor(-math.log10(result.max_abs / 1.5) - 1e-12)}"
        return mismatch, _numpy_passes(np.testing.assert_array_almost_equal, actual, desired,
                                       decimal=tolerance.decimal)
    if tolerance.mode == "allclose":
        with np.errstate(invalid="ignore"):
            mismatch = ~np.isclose(actual, desired, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True)
        b_abs = np.abs(np.nan_to_num(desired.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0))
        need_atol = float(np.max(diff - tolerance.rtol * b_abs, initial=0.0))
        result.needed = f"atol>={_round_up(need_atol):.3g} at rtol={tolerance.rtol:g}"
        return mismatch, _numpy_passes(np.testing.assert_allclose, actual, desired,
                                       rtol=tolerance.rtol, atol=tolerance.atol)
    if floor is None:
        raise UsageError("auto tolerance needs a measured noise floor; pass --decimal or --rtol/--atol")
    bound = tolerance.factor * floor
    result.allowed = bound
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
    try:
        check(actual, desired, **kwargs)
    except AssertionError:
        return False
    return True


def compare_outputs(a_label: str, a: dict[str, np.ndarray], b_label: str, b: dict[str, np.ndarray],
                    tolerance: Tolerance, floors: dict[str, float] | None = None,
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
