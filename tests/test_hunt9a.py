"""Hunt 9a: the bulk/peak rule (verify/judge/peaks.py PEAK_FACTOR) attacked from both sides: an exit 0 nobody earned,
and a correct export that fails. Each defect's test failed before its fix (its docstring says what it measured);
the others guard what the fixes added (a constant channel, the one-pass quick test)."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.helpers import masked_conv_source
from verify.cli.app import app
from verify.judge import trust
from verify.judge.compare import AUTO_FACTOR, Tolerance, compare_arrays
from verify.judge.measure import measure_floor
from verify.judge.noise_floor import MIN_CHANNEL_ELEMENTS
from verify.judge.peaks import (
    BULK_QUANTILE,
    PEAK_FACTOR,
    _mask_value,
    _no_peak,
    _no_peak_nor_mask,
    _typical,
    _typical_below_mask,
)

runner = CliRunner()


def _rounded(values: np.ndarray) -> np.ndarray:
    """What a correct float32 evaluation may return: the float64 value rounded to float32."""
    return values.astype(np.float32)


def _tie_row(count: int, value: float) -> list[float]:
    """`count` equal magnitudes and one exactly PEAK_FACTOR times them: on the limit, not a peak."""
    return [value] * count + [PEAK_FACTOR * value]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=MIN_CHANNEL_ELEMENTS, max_size=60))
@example(_tie_row(24, 246.97574856302268))
@example(_tie_row(33, 0.8315059454253216))
@example(_tie_row(38, 96824.69280253998))
@example(_tie_row(MIN_CHANNEL_ELEMENTS, 2.0 ** -1060))  # below float64's normal range: top / 16 rounds
def test_the_quick_test_never_skips_a_row_the_exact_rule_calls_a_peak(row):
    """`_no_peak` lets `_with_bulk` skip the sort; it must never skip a row in which an element is over
    PEAK_FACTOR x `_typical` (the limit `_with_bulk` and `NoiseFloor.in_bulk` apply). Before: the interpolated
    quantile of a tie of x rounded one ulp below x, so 16x read as a peak to the exact rule and as none to the quick
    test (5,743 of 200,000 random tie rows)."""
    rows = np.asarray([row], dtype=np.float64)
    typical = float(_typical(rows)[0])
    if bool(_no_peak(rows)[0]) and not np.isnan(typical):
        assert (rows <= PEAK_FACTOR * typical).all()


def test_a_tie_at_the_limit_is_judged_the_same_with_and_without_the_quick_test():
    """The verdict must not depend on which path `_with_bulk` took: a channel whose 90th percentile is a tie of x
    holds its 16x element in its bulk (no peak), so the output keeps the rule it had (no bulk floor)."""
    rng = np.random.default_rng(0)
    reference = np.full((1, 2, 5, 5), 246.97574856302268)
    reference[:, :, 0, 0] = PEAK_FACTOR * 246.97574856302268
    reference *= rng.choice([-1.0, 1.0], size=reference.shape)
    floor = measure_floor(reference.astype(np.float32), reference)
    rows = np.abs(reference).transpose(1, 0, 2, 3).reshape(2, -1)
    assert (rows <= PEAK_FACTOR * _typical(rows)[:, None]).all()
    assert floor.bulk is None


def _bordered(rng: np.random.default_rng, mask_value: float, shape=(1, 4, 16, 16)) -> tuple[np.ndarray, np.ndarray]:
    """A normal output whose whole border holds `mask_value`: 60 of 256 elements per channel, more than the
    1 - BULK_QUANTILE share a quantile can step over."""
    values = rng.standard_normal(shape)
    mask = np.zeros(shape, dtype=bool)
    mask[..., [0, -1], :] = True
    mask[..., :, [0, -1]] = True
    values[mask] = mask_value
    return values, mask


@pytest.mark.parametrize("mask_value", [1e6, -1e9])
@pytest.mark.parametrize("channels", [True, False])
def test_a_mask_over_more_than_a_tenth_of_the_output_is_a_peak_too(mask_value, channels):
    """Before: with a mask value on more than 1 - BULK_QUANTILE of a group's elements, the typical magnitude was the
    mask value itself, no element was a peak, and every element kept a floor of u x the mask value: an export that
    shifted every other element by 0.05 passed at 0.0004x its floor (hunt 8b's attack, on a whole border)."""
    rng = np.random.default_rng(5)
    reference, mask = _bordered(rng, mask_value)
    if not channels:  # (N, tokens, features): one group
        reference, mask = reference.reshape(1, 64, 16), mask.reshape(1, 64, 16)
    assert mask.mean() > 1 - BULK_QUANTILE
    floor = measure_floor(_rounded(reference + 1e-9 * rng.standard_normal(reference.shape)), reference)
    assert floor.bulk is not None
    assert compare_arrays("y", _rounded(reference), reference, Tolerance(), floor).passed
    shift = 10 * AUTO_FACTOR * float(floor.bulk.max())
    assert shift < float(floor.group_floors.min()), "the shift hides under the floor the mask value sets"
    shifted = compare_arrays("y", _rounded(np.where(mask, reference, reference + shift)), reference, Tolerance(),
                             floor)
    assert not shifted.passed and shifted.ratio > AUTO_FACTOR


def test_a_constant_or_mostly_masked_channel_keeps_the_rule_it_had():
    """Copies of the maximum are a mask only where enough other elements remain to measure a typical magnitude."""
    constant = np.full((1, 2, 8, 8), 3.0)
    assert measure_floor(_rounded(constant), constant).bulk is None
    rng = np.random.default_rng(6)
    mostly = rng.standard_normal((1, 2, 8, 8))
    mostly[..., 1:, :] = 1e6  # 8 elements per channel left: fewer than MIN_CHANNEL_ELEMENTS
    assert measure_floor(_rounded(mostly), mostly).bulk is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=MIN_CHANNEL_ELEMENTS, max_size=60),
       st.integers(0, 40), st.floats(1, 1e9))
def test_the_quick_test_never_skips_a_mask(row, copies, mask_value):
    """`_with_bulk` skips the sort where `_no_peak` holds and no mask value sits at the quantile: then no element is
    over PEAK_FACTOR x the typical magnitude it would have measured (`_typical_below_mask`)."""
    rows = np.asarray([row + [mask_value] * copies], dtype=np.float64)
    typical = float(_typical_below_mask(rows)[0])
    if bool((_no_peak(rows) & ~_mask_value(rows))[0]) and not np.isnan(typical):
        assert (rows <= PEAK_FACTOR * typical).all()




def test_an_export_that_shifts_everything_inside_a_masked_border_fails(tmp_path):
    """Before: exit 0 for the shifted export (every element's floor u x 1e9 = 119); now 1, and the correct one 0."""
    source = tmp_path / "bordered.py"
    source.write_text(masked_conv_source("-1e9", border=True))
    for factory, code in (("correct", 0), ("shifted", 1)):
        result = runner.invoke(app, ["export", "--model", f"{source}:{factory}", "--shape", "1x3x16x16",
                                     "--format", "onnx", "--samples", "2", "--out", str(tmp_path / factory)])
        assert result.exit_code == code, result.output
        assert ("FAIL onnxruntime vs eager" in result.output) == bool(code), result.output  # the shift disagrees
        assert "ok   eager vs oracle" in result.output and "not judged" not in result.output, result.output


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.integers(1, 24), st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0, 1e6]), min_size=96,
                                                        max_size=96), st.floats(0, 1e3))
def test_the_one_pass_skip_is_both_quick_tests_on_rows_and_whole(groups, size, values, scale):
    """`_with_bulk` skips through `_no_peak_nor_mask` (one pass over the output): exactly `_no_peak` without a
    `_mask_value`, on each group and on the whole output, so it never skips an output with a peak."""
    rows = (np.asarray(values[:groups * size]) * scale).reshape(groups, size)
    flat = rows.reshape(1, -1)
    assert _no_peak_nor_mask(flat, rows) == all(bool((_no_peak(r) & ~_mask_value(r)).all()) for r in (flat, rows))
    if _no_peak_nor_mask(flat, rows):
        for r in (flat, rows):
            typical = _typical_below_mask(r)
            for row, value in zip(r, typical):
                assert np.isnan(value) or (row <= PEAK_FACTOR * value).all()


def _peaked_record(k: int = 36) -> tuple[dict, float]:
    """The evidence of an output whose bulk is another function (1e-2 off) beside one peak of 1e6 per channel: the
    bulk bound refuses it."""
    rng = np.random.default_rng(4)
    reference = rng.standard_normal((1, 4, 12, 12))
    reference[:, :, 0, 0] = 1e6
    noisy = reference + np.where(np.abs(reference) < PEAK_FACTOR, 1e-2, 0.0)
    floor = measure_floor(_rounded(noisy), reference)
    return trust.evidence([trust.RepeatCheck("eager", {"y": 0.0}, [])], "cpu", k, "auto",
                          [({"y": floor}, {"y": reference})]), trust.output_scale(reference)


@pytest.mark.parametrize("edit", ["raise the bulk scale", "drop the bulk floor", "drop the bulk scale"])
def test_an_edited_bulk_record_does_not_pass_the_floor_bound(edit):
    """Before: a record whose bulk floor the bound refuses passed `evidence_problems` once its bulk_scale alone was
    raised over the output's own scale (impossible: the bulk is part of the output), or once one of the two bulk
    fields was deleted. Now such a record is malformed evidence (deleting both reads as an output without peaks)."""
    record, scale = _peaked_record()
    assert any("away from its peaks" in line for line in trust.evidence_problems(record))
    output = record["inputs"][0]["y"]
    if edit == "raise the bulk scale":
        output["bulk_scale"] = 2 * scale
    else:
        del output["bulk_floor" if edit == "drop the bulk floor" else "bulk_scale"]
    assert trust.evidence_problems(record) and "no usable" in trust.evidence_problems(record)[0]
