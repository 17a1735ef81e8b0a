"""verify.judge.compare: verdicts and statistics for one pair of arrays.

`decimal` and `allclose` must agree with numpy.testing exactly (verdict and the mismatch count numpy
prints), except that NaN/Inf never pass, and a shape mismatch never passes, in any mode.
"""

from __future__ import annotations

import inspect
import math
import re

import numpy as np
import pytest

from exporter.errors import UsageError
from verify.judge.compare import (
    AUTO_FACTOR,
    OutputComparison,
    PairResult,
    Tolerance,
    compare_arrays,
    compare_outputs,
)
from verify.judge.noise_floor import NoiseFloor

F32, F64 = np.float32, np.float64
MISMATCH = re.compile(r"Mismatched elements: (\d+) / (\d+)")


def numpy_verdict(check, actual, desired, **kwargs) -> tuple[bool, int | None, int | None]:
    """(passed, mismatched, total) as numpy.testing reports them; no count for a NaN/Inf mismatch."""
    try:
        with np.errstate(over="ignore"):
            check(actual, desired, **kwargs)
    except AssertionError as exc:
        found = MISMATCH.search(str(exc))
        if found is None:
            assert re.search(r"(nan|inf) (location|values) mismatch", str(exc)), str(exc)
            return False, None, None
        return False, int(found[1]), int(found[2])
    return True, 0, None


def judge(actual, desired, tolerance, floor=None) -> OutputComparison:
    with np.errstate(over="ignore"):
        return compare_arrays("out", np.asarray(actual), np.asarray(desired), tolerance, floor)


def assert_matches_numpy(result: OutputComparison, numpy_result) -> None:
    passed, mismatched, total = numpy_result
    assert result.passed is passed
    assert passed or mismatched is not None, "numpy failed on NaN/Inf, not on a count"
    if passed:
        assert result.mismatched == 0
    else:
        assert result.mismatched == mismatched
        assert result.total == total
        assert result.reason == f"{mismatched} of {total} elements out of tolerance"


def up(x, dtype):
    return np.nextafter(dtype(x), dtype(np.inf))


def down(x, dtype):
    return np.nextafter(dtype(x), dtype(0))


# ------------------------------------------------------------------------------------------------
# decimal mode == numpy.testing.assert_array_almost_equal
# ------------------------------------------------------------------------------------------------


def _decimal_cases():
    """(id, actual, desired, decimal, expected verdict or None, expected mismatched or None)."""
    cases = []
    for dtype in (F32, F64):
        tiny_sub = np.finfo(dtype).smallest_subnormal
        name = np.dtype(dtype).name
        for d in range(10):
            bound = 1.5 * 10.0**-d
            b_t = dtype(bound)  # numpy compares in the array's dtype: the bound is cast to it
            zero = np.zeros(1, dtype)
            # |a-b| < bound is strict: exactly the bound fails, one ulp below passes
            cases.append((f"{name}-d{d}-at-bound", np.array([b_t]), zero, d, False, 1))
            cases.append((f"{name}-d{d}-ulp-below", np.array([down(b_t, dtype)]), zero, d, True, 0))
            cases.append((f"{name}-d{d}-ulp-above", np.array([up(b_t, dtype)]), zero, d, False, 1))
            cases.append((f"{name}-d{d}-neg-at-bound", np.array([-b_t]), zero, d, False, 1))
            # mixed signs whose difference is exactly the bound (halving is exact), or one ulp less
            h, hb = b_t / dtype(2), down(b_t, dtype) / dtype(2)
            cases.append((f"{name}-d{d}-mixed-signs-at-bound", np.array([h, -h, 0, -h], dtype),
                          np.array([-h, h, 0, -h], dtype), d, False, 2))
            cases.append((f"{name}-d{d}-mixed-signs-below", np.array([hb, -hb, 0], dtype),
                          np.array([-hb, hb, 0], dtype), d, True, 0))
            # straddling the bound around 1.0 (the subtraction is exact by Sterbenz)
            one = np.ones(1, dtype)
            for label, a in (("above", up(dtype(1 + bound), dtype)), ("near", dtype(1 + bound)),
                             ("below", down(dtype(1 + bound), dtype))):
                expect = abs(float(a) - 1.0) < float(b_t)
                cases.append((f"{name}-d{d}-one-plus-bound-{label}", np.array([a]), one, d, expect,
                               int(not expect)))
            # float32 actual against float64 desired: compared in float64 against the exact bound
            if dtype is F64:
                a32 = np.array([F32(bound)])
                expect = float(F32(bound)) < bound
                cases.append((f"f32-vs-f64-d{d}-f32-bound", a32, zero, d, expect, int(not expect)))
                a32 = np.array([down(F32(bound), F32), up(F32(bound), F32)])
                cases.append((f"f32-vs-f64-d{d}-straddle", a32, np.zeros(2), d, False, 1))
        for d in (0, 3, 6, 9):
            cases += [
                (f"{name}-d{d}-zeros", np.zeros((2, 3), dtype), np.zeros((2, 3), dtype), d, True, 0),
                (f"{name}-d{d}-signed-zeros", np.array([-0.0, 0.0], dtype), np.array([0.0, -0.0], dtype),
                 d, True, 0),
                (f"{name}-d{d}-tiny", np.array([1e-30, -1e-30, 3e-30], dtype),
                 np.array([-1e-30, 1e-30, 0], dtype), d, True, 0),
                (f"{name}-d{d}-denormal", np.array([tiny_sub, -tiny_sub, 7 * tiny_sub], dtype),
                 np.array([-tiny_sub, 0, tiny_sub], dtype), d, True, 0),
                (f"{name}-d{d}-huge-equal", np.array([1e30, -1e30], dtype), np.array([1e30, -1e30], dtype),
                 d, True, 0),
                (f"{name}-d{d}-huge-one-ulp", np.array([up(1e30, dtype), -1e30], dtype),
                 np.array([1e30, -1e30], dtype), d, False, 1),
                (f"{name}-d{d}-huge-vs-tiny", np.array([1e30, 1e-30], dtype), np.array([1e-30, 1e30], dtype),
                 d, False, 2),
                (f"{name}-d{d}-binary-steps", np.array([0, 0.125, 0.25, 0.5, -0.125, -1.0], dtype),
                 np.zeros(6, dtype), d, d == 0, {0: 0, 1: 3}.get(d, 5)),
            ]
    # float32 opposite huge values: numpy's float32 subtraction overflows to inf -> mismatch
    cases.append(("f32-overflowing-difference", np.array([3e38, 1.0], F32), np.array([-3e38, 1.0], F32),
                  0, False, 1))
    cases.append(("f32-2d-some-mismatched", np.array([[0.0, 0.5], [1e-3, -2.0]], F32),
                  np.array([[0.0, 0.0], [0.0, -2.0]], F32), 1, False, 1))
    cases.append(("negative-decimal", np.array([10.0, 140.0]), np.array([0.0, 0.0]), -2, True, 0))
    return cases


DECIMAL_CASES = _decimal_cases()


@pytest.mark.parametrize(("actual", "desired", "decimal", "expect", "expect_mismatched"),
                         [pytest.param(*c[1:], id=c[0]) for c in DECIMAL_CASES])
def test_decimal_matches_numpy(actual, desired, decimal, expect, expect_mismatched):
    result = judge(actual, desired, Tolerance(mode="decimal", decimal=decimal))
    numpy_result = numpy_verdict(np.testing.assert_array_almost_equal, actual, desired, decimal=decimal)
    assert_matches_numpy(result, numpy_result)
    # and both agree with the verdict worked out by hand
    assert result.passed is expect
    if expect_mismatched is not None:
        assert result.mismatched == expect_mismatched
    assert result.allowed == 1.5 * 10.0**-decimal


def test_decimal_cases_cover_both_verdicts():
    verdicts = [c[4] for c in DECIMAL_CASES]
    assert verdicts.count(True) > 30 and verdicts.count(False) > 30


@pytest.mark.parametrize("decimal", range(10))
def test_decimal_needed_is_the_least_passing_decimal(decimal):
    rng = np.random.default_rng(decimal)
    for _ in range(20):
        b = rng.standard_normal(8).astype(F32)
        a = (b + rng.standard_normal(8) * 10.0 ** -rng.integers(0, 8)).astype(F32)
        result = judge(a, b, Tolerance(mode="decimal", decimal=decimal))
        needed = int(re.fullmatch(r"decimal=(-?\d+)", result.needed)[1])
        assert numpy_verdict(np.testing.assert_array_almost_equal, a, b, decimal=needed)[0]
        assert not numpy_verdict(np.testing.assert_array_almost_equal, a, b, decimal=needed + 1)[0]


# ------------------------------------------------------------------------------------------------
# allclose mode == numpy.testing.assert_allclose
# ------------------------------------------------------------------------------------------------

NUMPY_ALLCLOSE = inspect.signature(np.testing.assert_allclose).parameters


def test_from_options_defaults_are_numpys():
    assert NUMPY_ALLCLOSE["rtol"].default == 1e-7 and NUMPY_ALLCLOSE["atol"].default == 0
    rtol_only = Tolerance.from_options(rtol=1e-3)
    numpy_rtol, numpy_atol = NUMPY_ALLCLOSE["rtol"].default, NUMPY_ALLCLOSE["atol"].default
    assert (rtol_only.mode, rtol_only.rtol, rtol_only.atol) == ("allclose", 1e-3, numpy_atol)
    atol_only = Tolerance.from_options(atol=1e-5)
    assert (atol_only.mode, atol_only.rtol, atol_only.atol) == ("allclose", numpy_rtol, 1e-5)
    both_zero = Tolerance.from_options(rtol=0.0, atol=0.0)
    assert (both_zero.mode, both_zero.rtol, both_zero.atol) == ("allclose", 0.0, 0.0)


# (id, Tolerance.from_options kwargs): what the user typed; numpy gets the same kwargs, so an omitted
# rtol/atol falls back on numpy's own default on the numpy side.
ALLCLOSE_OPTIONS = [
    ("rtol0-atol0", {"rtol": 0.0, "atol": 0.0}),
    ("rtol1e-7-only", {"rtol": 1e-7}),
    ("rtol1e-5-only", {"rtol": 1e-5}),
    ("rtol0.5-only", {"rtol": 0.5}),
    ("atol1e-6-only", {"atol": 1e-6}),
    ("atol2^-10-only", {"atol": 2.0**-10}),
    ("rtol0-atol2^-10", {"rtol": 0.0, "atol": 2.0**-10}),
    ("rtol1e-3-atol1e-5", {"rtol": 1e-3, "atol": 1e-5}),
]


def _allclose_arrays():
    rng = np.random.default_rng(7)
    base = rng.standard_normal((3, 4))
    arrays = []
    for dtype in (F32, F64):
        name = np.dtype(dtype).name
        sub = np.finfo(dtype).smallest_subnormal
        b = base.astype(dtype)
        arrays += [
            (f"{name}-identical", b.copy(), b),
            (f"{name}-zeros", np.zeros(5, dtype), np.zeros(5, dtype)),
            (f"{name}-one-ulp", np.array([up(1.0, dtype), 1.0], dtype), np.ones(2, dtype)),
            (f"{name}-noise-1e-6", (b + 1e-6 * rng.standard_normal(b.shape)).astype(dtype), b),
            (f"{name}-noise-1e-3", (b + 1e-3 * rng.standard_normal(b.shape)).astype(dtype), b),
            (f"{name}-tiny-vs-zero", np.array([1e-30, -1e-30, 0], dtype), np.zeros(3, dtype)),
            (f"{name}-denormals", np.array([sub, 3 * sub, -sub], dtype), np.array([0, sub, sub], dtype)),
            (f"{name}-huge", np.array([1e30, -up(1e30, dtype)], dtype), np.array([1e30, -1e30], dtype)),
            (f"{name}-huge-1e-6-rel", np.array([1e30 * (1 + 1e-6)], dtype), np.array([1e30], dtype)),
            (f"{name}-atol-boundary", np.array([1 + 2.0**-10, 1 - 2.0**-10], dtype), np.ones(2, dtype)),
            (f"{name}-atol-boundary-ulp-above", np.array([up(1 + 2.0**-10, dtype), 1.0], dtype),
             np.ones(2, dtype)),
            (f"{name}-rtol-half-boundary", np.array([1.5, -3.0, 0.5], dtype),
             np.array([1.0, -2.0, 1.0], dtype)),
            (f"{name}-rtol-half-ulp-above", np.array([up(1.5, dtype)], dtype), np.array([1.0], dtype)),
            (f"{name}-mixed-signs", np.array([1e-4, -1e-4, 2.0], dtype),
             np.array([-1e-4, 1e-4, -2.0], dtype)),
        ]
    arrays.append(("f32-vs-f64", base.astype(F32), base))
    return arrays


@pytest.mark.parametrize("options", [pytest.param(o, id=i) for i, o in ALLCLOSE_OPTIONS])
@pytest.mark.parametrize(("actual", "desired"), [pytest.param(a, b, id=i) for i, a, b in _allclose_arrays()])
def test_allclose_matches_numpy(actual, desired, options):
    tolerance = Tolerance.from_options(**options)
    assert tolerance.mode == "allclose"
    result = judge(actual, desired, tolerance)
    assert_matches_numpy(result, numpy_verdict(np.testing.assert_allclose, actual, desired, **options))
    assert result.needed.startswith("atol>=")


def test_numpy_default_tolerance_constructor_matches_numpy_defaults():
    a, b = np.array([1.0 + 5e-8, 2.0]), np.array([1.0, 2.0])
    assert judge(a, b, Tolerance(mode="allclose")).passed is True
    a = np.array([1.0 + 2e-7, 2.0])
    result = judge(a, b, Tolerance(mode="allclose"))
    assert result.passed is False and result.mismatched == 1
    assert_matches_numpy(result, numpy_verdict(np.testing.assert_allclose, a, b))


@pytest.mark.parametrize(("actual", "desired", "rtol", "atol", "expect"), [
    # |a-b| <= atol + rtol*|b| is inclusive (decimal's bound is strict)
    pytest.param([1 + 2.0**-10], [1.0], 0.0, 2.0**-10, True, id="atol-exact"),
    pytest.param([up(1 + 2.0**-10, F64)], [1.0], 0.0, 2.0**-10, False, id="atol-ulp-above"),
    pytest.param([1.5], [1.0], 0.5, 0.0, True, id="rtol-exact"),
    pytest.param([up(1.5, F64)], [1.0], 0.5, 0.0, False, id="rtol-ulp-above"),
    # rtol scales |desired|, not |actual|: asymmetric
    pytest.param([2.0], [1.0], 0.5, 0.0, False, id="rtol-of-desired"),
    pytest.param([1.0], [2.0], 0.5, 0.0, True, id="rtol-of-desired-swapped"),
    pytest.param([1e-30], [0.0], 1e-3, 0.0, False, id="rtol-nothing-at-zero"),
    pytest.param([5.0, 5.0], [5.0, 5.0], 0.0, 0.0, True, id="exact-at-zero-tolerance"),
    pytest.param([up(5.0, F64)], [5.0], 0.0, 0.0, False, id="one-ulp-at-zero-tolerance"),
])
def test_allclose_boundaries(actual, desired, rtol, atol, expect):
    actual, desired = np.array(actual, F64), np.array(desired, F64)
    result = judge(actual, desired, Tolerance.from_options(rtol=rtol, atol=atol))
    assert result.passed is expect
    expected = numpy_verdict(np.testing.assert_allclose, actual, desired, rtol=rtol, atol=atol)
    assert_matches_numpy(result, expected)


# ------------------------------------------------------------------------------------------------
# property: random finite float32 arrays, verdict and count always numpy's
# ------------------------------------------------------------------------------------------------


def _random_pair(rng):
    shape = tuple(int(n) for n in rng.integers(1, 5, size=rng.integers(1, 4)))
    scale = 10.0 ** rng.uniform(-30, 30)
    desired = (rng.standard_normal(shape) * scale).astype(F32)
    noise = rng.standard_normal(shape) * scale * 10.0 ** rng.uniform(-9, 1)
    noise[rng.random(shape) < 0.3] = 0.0
    actual = (desired.astype(F64) + noise).astype(F32)
    if rng.random() < 0.2:  # values exactly on a decimal bound
        d = int(rng.integers(0, 10))
        actual.flat[0] = desired.flat[0] + F32(1.5 * 10.0**-d)
    return actual, desired


@pytest.mark.parametrize("seed", range(40))
def test_property_decimal_and_allclose_agree_with_numpy(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        actual, desired = _random_pair(rng)
        assert np.isfinite(actual).all() and np.isfinite(desired).all()
        decimal = int(rng.integers(-2, 12))
        result = judge(actual, desired, Tolerance.from_options(decimal=decimal))
        assert_matches_numpy(result, numpy_verdict(np.testing.assert_array_almost_equal, actual, desired,
                                                   decimal=decimal))
        rtol = float(rng.choice([0.0, 1e-7, 1e-6, 1e-4, 1e-2]))
        atol = float(rng.choice([0.0, 1e-30, 1e-8, 1e-3])) * (10.0 ** rng.uniform(-2, 2))
        result = judge(actual, desired, Tolerance.from_options(rtol=rtol, atol=atol))
        assert_matches_numpy(result, numpy_verdict(np.testing.assert_allclose, actual, desired,
                                                   rtol=rtol, atol=atol))


# ------------------------------------------------------------------------------------------------
# NaN / Inf never pass
# ------------------------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
MODES = [
    pytest.param(Tolerance(), 1e-3, id="auto"),
    pytest.param(Tolerance.from_options(decimal=3), None, id="decimal"),
    pytest.param(Tolerance.from_options(rtol=1e-5, atol=1e-8), None, id="allclose"),
]
NONFINITE = [
    # id, actual, desired, numpy passes (under both numpy checks), word in reason, count in a, count in b
    ("nan-same-positions", [1.0, NAN, 2.0, NAN], [1.0, NAN, 2.0, NAN], True, "NaN", 2, 2),
    ("inf-equal", [INF, 1.0, -INF], [INF, 1.0, -INF], True, "Inf", 2, 2),
    ("nan-one-side", [1.0, NAN, 2.0], [1.0, 1.0, 2.0], False, "NaN", 1, 0),
    ("nan-other-side", [1.0, 1.0, 2.0], [1.0, NAN, 2.0], False, "NaN", 0, 1),
    ("inf-one-side", [1.0, INF], [1.0, 1e30], False, "Inf", 1, 0),
    ("inf-opposite-signs", [INF], [-INF], False, "Inf", 1, 1),
]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize(("tolerance", "floor"), MODES)
@pytest.mark.parametrize(("actual", "desired", "numpy_passes", "word", "in_a", "in_b"),
                         [pytest.param(*c[1:], id=c[0]) for c in NONFINITE])
def test_nan_and_inf_never_pass(tolerance, floor, actual, desired, numpy_passes, word, in_a, in_b, dtype):
    actual, desired = np.array(actual, dtype), np.array(desired, dtype)
    # numpy accepts matching NaN/Inf; the product rule is stricter on purpose
    assert numpy_verdict(np.testing.assert_array_almost_equal, actual, desired, decimal=3)[0] is numpy_passes
    assert numpy_verdict(np.testing.assert_allclose, actual, desired)[0] is numpy_passes
    with np.errstate(invalid="ignore"):
        result = judge(actual, desired, tolerance, floor)
    assert result.passed is False
    assert word in result.reason
    if in_a:
        assert re.search(rf"\b{in_a} {word}\b.*in a", result.reason)
    if in_b:
        assert re.search(rf"\b{in_b} {word}\b[^;]*in b", result.reason)
    nonfinite = int((~(np.isfinite(actual) & np.isfinite(desired))).sum())
    assert result.mismatched >= nonfinite > 0
    # statistics ignore the non-finite elements and stay finite
    assert math.isfinite(result.max_abs) and math.isfinite(result.mean_abs)


@pytest.mark.parametrize(("tolerance", "floor"), MODES)
def test_nan_fails_even_when_every_finite_element_matches(tolerance, floor):
    actual = np.array([[0.5, NAN], [0.25, 0.0]], F32)
    result = judge(actual, actual.copy(), tolerance, floor)
    assert (result.passed, result.mismatched, result.total) == (False, 1, 4)
    assert result.max_abs == 0.0
    assert "1 NaN" in result.reason


# ------------------------------------------------------------------------------------------------
# shape mismatch
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tolerance", "floor"),
                         MODES + [pytest.param(Tolerance(), None, id="auto-no-floor")])
@pytest.mark.parametrize(("shape_a", "shape_b"), [((2, 3), (3, 2)), ((6,), (2, 3)), ((1, 3), (3,)),
                                                  ((), (3,)), ((2, 0), (0, 2))])
def test_shape_mismatch_never_passes(tolerance, floor, shape_a, shape_b):
    actual, desired = np.zeros(shape_a, F32), np.zeros(shape_b, F32)
    result = judge(actual, desired, tolerance, floor)
    assert result.passed is False
    assert str(tuple(shape_a)) in result.reason and str(tuple(shape_b)) in result.reason
    assert (result.shape_a, result.shape_b) == (list(shape_a), list(shape_b))
    assert result.mismatched == result.total == desired.size


def test_numpy_would_broadcast_a_scalar_but_the_product_does_not():
    actual, desired = np.array(1.0), np.array([1.0, 1.0])
    assert numpy_verdict(np.testing.assert_allclose, actual, desired)[0] is True
    assert judge(actual, desired, Tolerance.from_options(rtol=1e-7)).passed is False


# ------------------------------------------------------------------------------------------------
# auto mode
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize(("factor", "floor"), [(AUTO_FACTOR, 0.25), (2.0, 2.0**-20), (16.0, 2.0**-24)])
def test_auto_passes_at_the_bound_and_fails_beyond(dtype, factor, floor):
    tolerance = Tolerance.from_options(factor=None if factor == AUTO_FACTOR else factor)
    assert tolerance.mode == "auto" and tolerance.factor == factor
    bound = factor * floor
    desired = np.array([1.0, -3.0, 0.0], dtype)
    at = desired.astype(F64) + np.array([0.0, -bound, bound / 2])
    assert (at.astype(dtype).astype(F64) == at).all()  # exactly representable
    result = judge(at.astype(dtype), desired, tolerance, floor)
    assert result.passed is True and result.mismatched == 0
    assert result.max_abs == bound and result.ratio == factor == result.max_abs / floor
    assert result.allowed == bound and result.floor == floor
    assert result.needed == f"factor>={factor:.3g}"

    beyond = at.copy()
    beyond[1] = np.nextafter(at[1].astype(dtype), dtype(-np.inf))
    result = judge(beyond.astype(dtype), desired, tolerance, floor)
    assert result.passed is False and result.mismatched == 1
    assert result.ratio == result.max_abs / floor > factor
    assert result.needed.startswith("factor>=") and result.reason == "1 of 3 elements out of tolerance"


def test_auto_ratio_and_needed_when_well_within():
    result = judge(np.array([1.0, 2.0 + 3e-6]), np.array([1.0, 2.0]), Tolerance(), floor=1e-6)
    assert result.passed is True
    assert result.ratio == pytest.approx(3.0, rel=1e-6)
    assert result.ratio == result.max_abs / 1e-6
    assert result.allowed == AUTO_FACTOR * 1e-6
    assert result.needed == "factor>=3"


def test_auto_without_floor_raises():
    with pytest.raises(UsageError, match="noise floor"):
        judge(np.ones(3), np.ones(3), Tolerance())


@pytest.mark.parametrize("factor", [0.0, -1.0])
def test_factor_must_be_positive(factor):
    with pytest.raises(UsageError):
        Tolerance.from_options(factor=factor)


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------


def test_statistics_point_at_the_largest_difference():
    desired = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], F32)
    actual = desired + np.array([[0.0, 0.5, 0.0], [-0.75, 0.0, 0.125]], F32)
    result = judge(actual, desired, Tolerance.from_options(decimal=1))  # bound 0.15
    assert result.max_abs == 0.75
    assert result.max_rel == 0.75 / 5.0
    assert result.mean_abs == pytest.approx((0.5 + 0.75 + 0.125) / 6)
    assert result.worst_index == [1, 0]
    assert (result.worst_a, result.worst_b) == (2.25, 3.0)
    assert (result.mismatched, result.total) == (2, 6)
    assert result.mismatch_fraction == 2 / 6
    assert result.to_dict()["mismatch_fraction"] == 2 / 6
    assert result.needed == "decimal=0"


def test_max_rel_finite_when_some_desired_are_zero():
    result = judge(np.array([0.5, 0.0, 2.0]), np.array([0.0, 0.0, 2.0]), Tolerance(), floor=1.0)
    assert result.max_rel == 0.25 and math.isfinite(result.max_rel)
    assert result.worst_index == [0] and (result.worst_a, result.worst_b) == (0.5, 0.0)


@pytest.mark.parametrize(("tolerance", "floor"), MODES)
def test_statistics_of_identical_zeros(tolerance, floor):
    result = judge(np.zeros((2, 2), F32), np.zeros((2, 2), F32), tolerance, floor)
    assert result.passed is True
    assert (result.max_abs, result.max_rel, result.mean_abs) == (0.0, 0.0, 0.0)
    assert result.mismatch_fraction == 0.0 and result.reason == ""


def test_statistics_of_empty_arrays():
    result = judge(np.zeros((0, 3)), np.zeros((0, 3)), Tolerance.from_options(decimal=6))
    assert result.passed is True and result.total == 0 and result.mismatch_fraction == 0.0
    assert result.max_abs == 0.0


def test_mismatch_fraction_across_modes():
    desired = np.zeros(8)
    actual = np.array([0, 0, 0, 0, 0, 0, 1.0, -1.0])
    for tolerance, floor in ((Tolerance(), 0.01), (Tolerance.from_options(decimal=2), None),
                             (Tolerance.from_options(atol=0.5), None)):
        result = judge(actual, desired, tolerance, floor)
        assert (result.passed, result.mismatched, result.mismatch_fraction) == (False, 2, 0.25)


# ------------------------------------------------------------------------------------------------
# Tolerance.from_options
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"decimal": 3, "rtol": 1e-5}, {"decimal": 3, "atol": 1e-5},
                                    {"decimal": 0, "rtol": 0.0}, {"decimal": 3, "rtol": 1e-5, "atol": 1e-5}])
def test_decimal_with_rtol_or_atol_raises(kwargs):
    with pytest.raises(UsageError, match="--decimal"):
        Tolerance.from_options(**kwargs)


@pytest.mark.parametrize("kwargs", [{"rtol": -1e-7}, {"atol": -1e-9}, {"rtol": 1e-5, "atol": -1.0},
                                    {"rtol": -0.5, "atol": 0.0}])
def test_negative_rtol_or_atol_raises(kwargs):
    with pytest.raises(UsageError, match=">= 0"):
        Tolerance.from_options(**kwargs)


def test_from_options_modes():
    assert Tolerance.from_options() == Tolerance(mode="auto", factor=AUTO_FACTOR)
    assert Tolerance.from_options(decimal=5) == Tolerance(mode="decimal", decimal=5)
    assert Tolerance.from_options(decimal=0).decimal == 0


# ------------------------------------------------------------------------------------------------
# compare_outputs
# ------------------------------------------------------------------------------------------------


def test_compare_outputs_uses_shared_names_in_bs_order():
    a = {"x": np.zeros(2), "only_a": np.zeros(1), "y": np.ones(3)}
    b = {"z": np.zeros(4), "y": np.ones(3), "x": np.zeros(2)}
    pair = compare_outputs("ort", a, "eager", b, Tolerance.from_options(decimal=6), kind="oracle")
    assert [o.name for o in pair.outputs] == ["y", "x"]
    assert (pair.a, pair.b, pair.kind, pair.passed) == ("ort", "eager", "oracle", True)
    assert [o["name"] for o in pair.to_dict()["outputs"]] == ["y", "x"]


def test_compare_outputs_without_shared_names_raises():
    with pytest.raises(UsageError, match="share no output"):
        compare_outputs("ort", {"x": np.zeros(1)}, "eager", {"y": np.zeros(1)},
                        Tolerance.from_options(decimal=3))


def test_compare_outputs_fails_if_any_output_fails():
    b = {"x": np.zeros(3), "y": np.zeros(3)}
    a = {"x": np.zeros(3), "y": np.array([0.0, 1e-2, 0.0])}
    pair = compare_outputs("ts", a, "eager", b, Tolerance.from_options(decimal=3))
    assert [o.passed for o in pair.outputs] == [True, False]
    assert pair.passed is False
    assert pair.worst.name == "y"
    assert compare_outputs("ts", b, "eager", b, Tolerance.from_options(decimal=3)).passed is True


def test_compare_outputs_applies_floors_per_output():
    b = {"x": np.zeros(2), "y": np.zeros(2)}
    a = {"x": np.array([0.0, 2e-6]), "y": np.array([0.0, 2e-6])}
    pair = compare_outputs("ts", a, "eager", b, Tolerance(factor=4.0), floors={"x": 1e-6, "y": 1e-7})
    assert [(o.name, o.passed, o.floor) for o in pair.outputs] == [("x", True, 1e-6), ("y", False, 1e-7)]
    with pytest.raises(UsageError):
        compare_outputs("ts", a, "eager", b, Tolerance(), floors={"x": 1e-6})


def test_pair_without_outputs_does_not_pass():
    assert PairResult("a", "b").passed is False


# ------------------------------------------------------------------------------------------------
# regressions: integer inputs, and the `needed` hint in allclose mode
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("actual", "desired"), [
    pytest.param(np.array([1], np.uint8), np.array([0], np.uint8), id="uint8-wraps"),
    pytest.param(np.array([2**62, -2**62]), np.array([-2**62, 2**62]), id="int64-overflows"),
])
def test_decimal_mismatch_count_on_integer_arrays(actual, desired):
    result = judge(actual, desired, Tolerance.from_options(decimal=0))
    expected = numpy_verdict(np.testing.assert_array_almost_equal, actual, desired, decimal=0)
    assert_matches_numpy(result, expected)


@pytest.mark.parametrize("seed", range(20))
def test_allclose_needed_atol_passes(seed):
    """The hint is a bound that numpy accepts, float32 rounding included."""
    rng = np.random.default_rng(seed)
    dtype = np.float32 if seed % 2 else np.float64
    desired = rng.standard_normal(50).astype(dtype)
    actual = (desired + rng.standard_normal(50) * 10.0 ** -rng.integers(2, 7)).astype(dtype)
    for rtol in (0.0, 1e-6):
        result = judge(actual, desired, Tolerance.from_options(rtol=rtol, atol=0.0))
        atol = float(re.match(r"atol>=(\S+) ", result.needed)[1])
        assert numpy_verdict(np.testing.assert_allclose, actual, desired, rtol=rtol, atol=atol)[0]


def test_require_all_fails_an_output_missing_on_either_side():
    a = {"x": np.zeros(2), "extra": np.zeros(1)}
    b = {"x": np.zeros(2), "y": np.zeros(3)}
    assert compare_outputs("a", a, "b", b, Tolerance(), floors={"x": 1.0}).passed  # shared only
    pair = compare_outputs("a", a, "b", b, Tolerance(), floors={"x": 1.0}, require_all=True)
    assert not pair.passed
    reasons = {o.name: o.reason for o in pair.outputs if not o.passed}
    assert reasons == {"extra": "output missing in b", "y": "output missing in a"}


def test_factor_only_goes_with_auto():
    with pytest.raises(UsageError, match="--factor"):
        Tolerance.from_options(decimal=3, factor=2.0)
    assert Tolerance.from_options(factor=2.0).factor == 2.0


def test_nan_failure_is_not_explained_as_rounding():
    from verify.judge.notes import explain_pair
    from verify.report import Report

    tolerance = Tolerance()
    pair = compare_outputs("onnxruntime", {"x": np.array([np.nan, 1.0])}, "eager", {"x": np.array([0.5, 1.0])},
                           tolerance, floors={"x": 1e-6})
    report = Report("export", {"tolerance": tolerance.to_dict(), "tolerance_text": tolerance.describe()}, {})
    note = explain_pair(pair, report)
    assert "NaN" in note and "rounding" not in note


def test_a_report_without_pairs_does_not_pass():
    from verify.report import Report

    assert Report("export", {}, {}).passed is False


# The pipeline's judge (verify/pipeline/stages.py judge_stage): what `verify export` and `verify compare` share.
def _run(label: str, **outputs: np.ndarray):
    from verify.pipeline.stages import RunResult

    return RunResult(label, label, "", [outputs], 0.0)


def test_judge_stage_reference_is_the_earlier_run_or_the_later():
    from verify.pipeline.stages import PAIR_REFERENCES, judge_stage

    first, second = _run("first", x=np.array([1.0, 0.0])), _run("second", x=np.array([2.0, 0.0]))
    floors = {"x": NoiseFloor(1e-6)}
    pairs = {ref: judge_stage([first, second], floors, Tolerance(), reference=ref)[0] for ref in PAIR_REFERENCES}
    assert (pairs["earlier"].a, pairs["earlier"].b) == ("second", "first")
    assert (pairs["later"].a, pairs["later"].b) == ("first", "second")
    # the reference is compare_outputs' `b`: relative errors divide by its scale
    assert pairs["earlier"].outputs[0].worst_b == 1.0 and pairs["earlier"].outputs[0].max_rel == 1.0
    assert pairs["later"].outputs[0].worst_b == 2.0 and pairs["later"].outputs[0].max_rel == 0.5
    with pytest.raises(ValueError, match="reference"):
        judge_stage([first, second], floors, Tolerance(), reference="first")


def test_judge_stage_fails_an_output_one_side_lacks():
    from verify.pipeline.stages import judge_stage

    a, b = _run("A", x=np.zeros(3), y=np.zeros(2)), _run("B", x=np.zeros(3))
    [pair] = judge_stage([a, b], {"x": NoiseFloor(1e-6), "y": NoiseFloor(1e-6)}, Tolerance(), reference="later")
    assert not pair.passed
    assert {o.name: o.reason for o in pair.outputs if not o.passed} == {"y": "output missing in b"}


def test_judge_stage_judges_each_run_on_its_own_oracles_floors():
    """compare: A against B on the larger floor, each side against its own oracle on that oracle's floor."""
    from verify.pipeline.stages import OracleCheck, judge_stage

    floor = 1e-3
    fp64 = np.zeros(4)
    drift = floor * (AUTO_FACTOR + 1)  # beyond the allowed multiple of the tight floor, within the loose one's
    a, b = _run("A", x=fp64 + drift), _run("B", x=fp64)
    tight, loose = {"x": NoiseFloor(floor)}, {"x": NoiseFloor(floor * (AUTO_FACTOR + 2))}
    checks = [OracleCheck("oracle(A)", {"x": fp64}, tight), OracleCheck("oracle(B)", {"x": fp64}, loose)]
    pair, a_oracle, b_oracle = judge_stage([a, b], loose, Tolerance(), oracles=checks, reference="later")
    assert pair.passed and b_oracle.passed and not a_oracle.passed
    assert [(p.a, p.b, p.kind) for p in (a_oracle, b_oracle)] == [("A", "oracle(A)", "oracle"),
                                                                   ("B", "oracle(B)", "oracle")]
    assert a_oracle.outputs[0].floor == floor and pair.outputs[0].floor == floor * (AUTO_FACTOR + 2)
    # no oracle made (None, or one without outputs): no pair against it
    assert len(judge_stage([a, b], loose, Tolerance(), oracles=[None, OracleCheck("o", {}, loose)])) == 1


def test_compare_judges_every_input_on_floors_pooled_over_inputs_and_sides():
    """`verify compare` through the pipeline's stages: A against B on the floors of both sides pooled over every
    input (B the reference), each side against its own oracle on its own pooled floors, each pair on its worst
    input."""
    from verify.api import compare
    from verify.settings import RunSettings

    samples = 3
    report = compare("tests/data/tiny.py:make", "tests/data/tiny.py:make_perturbed", RunSettings(samples=samples),
                     isolate=False)
    assert len(report.input["inputs"]) == samples and report.floor_source.count(f"over {samples} inputs") == 1 \
        and report.floor_source.startswith("A and B: ")  # both sides' floors measured alike: said once
    pair, a_oracle, b_oracle = report.pairs
    assert (pair.a, pair.b) == ("A", "B") and [(p.a, p.b) for p in (a_oracle, b_oracle)] == [
        ("A", "oracle(A)"), ("B", "oracle(B)")]
    assert set(report.input["worst_input"]) == {"A vs B", "A vs oracle(A)", "B vs oracle(B)"}
    for name, floor in report.floors.items():
        [output] = [o for o in pair.outputs if o.name == name]
        assert output.floor == floor.value  # the pair is judged on the pooled floor of both sides
        for own in (a_oracle, b_oracle):  # each side's own floor: at most the pair's
            assert next(o.floor for o in own.outputs if o.name == name) <= floor.value
    # pooled: the first input's floors alone (--samples 1) are never larger, and here smaller somewhere
    single = compare("tests/data/tiny.py:make", "tests/data/tiny.py:make_perturbed", RunSettings(samples=1),
                     isolate=False)
    assert all(single.floors[name].value <= floor.value for name, floor in report.floors.items())
    assert any(single.floors[name].value < floor.value for name, floor in report.floors.items())


def test_sides_sharing_no_output_are_refused_before_either_oracle_runs(monkeypatch):
    """Two models whose outputs share no name are a usage error said once both have run, not after each side's
    float64 oracle (the CLI took 15 s to print this one line)."""
    import verify.api as api
    from verify.settings import RunSettings

    def no_oracle(*args, **kwargs):
        raise AssertionError("an oracle ran for sides that cannot be compared")

    monkeypatch.setattr(api, "side_oracles", no_oracle)
    with pytest.raises(UsageError, match="share no output"):
        api.compare("resnet18:frozen:body", "resnet18:frozen:fpn", RunSettings(shape=(1, 3, 32, 32), samples=1))
