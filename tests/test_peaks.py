"""A few loud elements (a mask value, a sentinel, a border) no longer set the floor of every other element.

Before: an output holding one element of 1e6 per channel got channel floors of ~0.1 (u x 1e6), so an export that
shifted every other value (~1) by 0.05 exited 0. Now each channel's bulk (elements within oracle.PEAK_FACTOR of its
typical magnitude) has a floor of its own; peaks keep the channel's floor."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from exporter.errors import UsageError
from tests.helpers import masked_conv_source
from verify.cli.app import app
from verify.judge import trust
from verify.judge.compare import AUTO_FACTOR, Tolerance, compare_arrays
from verify.judge.measure import measure_floor
from verify.judge.noise_floor import CHANNEL_FLOOR_SHARE, MIN_CHANNEL_ELEMENTS, NoiseFloor
from verify.judge.oracle import pooled_floors
from verify.judge.peaks import BULK_QUANTILE, PEAK_FACTOR, _no_peak, _typical
from verify.judge.precision import EPS

runner = CliRunner()


def _rounded(values: np.ndarray) -> np.ndarray:
    """What a correct float32 evaluation may return: the float64 value rounded to float32."""
    return values.astype(np.float32)


def _output(rng: np.random.Generator, peak: float, shape=(1, 4, 12, 12)) -> np.ndarray:
    values = rng.standard_normal(shape)
    values[:, :, 0, 0] = peak  # one loud element per channel, as a border or a mask writes it
    return values


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), peak=st.sampled_from([1e4, -1e6, 3e7, -1e9]),
       channels=st.booleans())
def test_a_shift_of_the_bulk_fails_and_rounding_passes_whatever_the_peaks(seed, peak, channels):
    rng = np.random.default_rng(seed)
    reference = _output(rng, peak) if channels else _output(rng, peak).reshape(4, 144)
    floor = measure_floor(_rounded(reference + 1e-9 * rng.standard_normal(reference.shape)), reference)
    assert floor.bulk is not None, "every channel holds a peak"
    correct = _rounded(reference)
    assert compare_arrays("y", correct, reference, Tolerance(), floor).passed
    bulk = np.abs(reference) < PEAK_FACTOR
    shift = 10 * AUTO_FACTOR * float(floor.bulk.max())
    assert shift < float(floor.group_floors.min()), "the shift hides under the floor a peak sets"
    shifted = _rounded(np.where(bulk, reference + shift, reference))
    result = compare_arrays("y", shifted, reference, Tolerance(), floor)
    assert not result.passed and result.ratio > AUTO_FACTOR
    assert result.channel_floor == pytest.approx(float(floor.bulk[result.channel or 0])) and result.away_from_peaks
    # the old rule (every element on its group's floor) let it through
    old = NoiseFloor(floor.value, floor.channels)
    assert compare_arrays("y", shifted, reference, Tolerance(), old).passed


def test_a_side_that_drops_a_peak_is_judged_on_the_bulk_floor_and_one_that_invents_one_fails():
    rng = np.random.default_rng(1)
    reference = _output(rng, 1e6)
    floor = measure_floor(_rounded(reference), reference)
    dropped = _rounded(np.where(np.abs(reference) > PEAK_FACTOR, 0.0, reference))
    assert not compare_arrays("y", dropped, reference, Tolerance(), floor).passed
    invented = reference.copy()
    invented[0, 0, 5, 5] = 1e6
    assert not compare_arrays("y", _rounded(invented), reference, Tolerance(), floor).passed


def test_outputs_without_peaks_keep_the_rule_they_had(tmp_path):
    rng = np.random.default_rng(2)
    reference = rng.standard_normal((1, 8, 16, 16))
    floor = measure_floor(_rounded(reference), reference)
    assert floor.bulk is None and floor.bulk_limits is None
    assert "bulk" not in floor.to_dict()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=40), min_size=1, max_size=6)
       .filter(lambda rows: len({len(r) for r in rows}) == 1))
def test_the_sorted_quantile_is_numpys_and_the_quick_test_never_misses_a_peak(rows):
    rows = np.asarray(rows, dtype=np.float64)
    typical = _typical(rows)
    for row, value, quick in zip(rows, typical, _no_peak(rows)):
        nonzero = row[row != 0]
        if nonzero.size < MIN_CHANNEL_ELEMENTS:
            assert np.isnan(value)
            continue
        assert value == pytest.approx(np.quantile(nonzero, BULK_QUANTILE), rel=1e-12)
        if quick:
            assert row.max() <= PEAK_FACTOR * value


def test_pooled_floors_take_the_larger_bulk_floor_up_to_the_smaller_limit():
    one = NoiseFloor(1.0, np.array([1.0, 0.5]), bulk=np.array([0.1, 0.2]), bulk_limits=np.array([10.0, 40.0]))
    two = NoiseFloor(2.0, np.array([0.25, 1.0]), bulk=np.array([0.2, 0.05]), bulk_limits=np.array([20.0, 30.0]))
    plain = NoiseFloor(2.0, np.array([0.3, 0.1]))
    pooled = pooled_floors([{"y": one}, {"y": two}])["y"]
    assert pooled.bulk.tolist() == [0.2, 0.2] and pooled.bulk_limits.tolist() == [10.0, 30.0]
    with_plain = one.combine(plain)  # no peaks there: its whole channel floor bounds the bulk
    assert with_plain.bulk.tolist() == [0.3, 0.2] and with_plain.bulk_limits.tolist() == [10.0, 40.0]


def test_a_bulk_floor_survives_json_and_a_malformed_one_is_refused():
    floor = NoiseFloor(1.0, np.array([1.0, 0.5]), bulk=np.array([0.1, 0.2]), bulk_limits=np.array([10.0, 40.0]))
    back = NoiseFloor.from_dict(json.loads(json.dumps(floor.to_dict())))
    assert back.bulk.tolist() == [0.1, 0.2] and back.bulk_limits.tolist() == [10.0, 40.0]
    for bad in ({"bulk": [0.1, 2.0]}, {"bulk": [0.1]}, {"bulk": ["0.1", 0.2]}, {"bulk_limits": None},
                {"bulk_limits": [10.0, -1.0]}, {"bulk": [0.0, 0.2]}):
        data = {**floor.to_dict(), **bad}
        with pytest.raises(UsageError):
            NoiseFloor.from_dict(data)


def test_the_bulk_floor_has_the_channel_floors_lower_bounds():
    rng = np.random.default_rng(3)
    reference = _output(rng, 1e6, shape=(1, 3, 8, 8))
    floor = measure_floor(reference.copy(), reference)  # no measured error at all
    bulk_scale = float(np.abs(reference[np.abs(reference) < PEAK_FACTOR]).max())
    assert floor.bulk.min() >= EPS["fp32"] * bulk_scale
    assert floor.bulk.min() >= CHANNEL_FLOOR_SHARE * float(floor.bulk.max()) * (1 - 1e-12)


def test_a_floor_bound_lifted_by_a_peak_still_holds_for_the_bulk():
    rng = np.random.default_rng(4)
    reference = _output(rng, 1e6)
    noisy = reference + np.where(np.abs(reference) < PEAK_FACTOR, 1e-2, 0.0)  # another function in the bulk
    floor = measure_floor(_rounded(noisy), reference)
    k = 36
    scale = trust.output_scale(reference)
    assert floor.value <= trust.rounding_bound(k) * scale, "the peak lifts the output's bound over the error"
    [line] = trust.floor_problems({"y": floor}, {"y": reference}, k)
    assert "away from its peaks" in line
    record = trust.evidence([trust.RepeatCheck("eager", {"y": 0.0}, [])], "cpu", k, "auto", [({"y": floor},
                                                                                               {"y": reference})])
    assert any("away from its peaks" in p for p in trust.evidence_problems(record))
    record["inputs"][0]["y"]["bulk_floor"] = 2 * floor.value  # an edit over the output's floor
    assert "no usable" in trust.evidence_problems(record)[0]




@pytest.mark.parametrize("peak", ["1e6", "-1e9"])
def test_an_export_that_shifts_everything_but_the_peaks_fails(tmp_path, peak):
    source = tmp_path / "bordered.py"
    source.write_text(masked_conv_source(peak))
    for factory, code in (("correct", 0), ("shifted", 1)):
        result = runner.invoke(app, ["export", "--model", f"{source}:{factory}", "--shape", "1x3x16x16",
                                     "--format", "pt2", "--samples", "2", "--out", str(tmp_path / factory)])
        assert result.exit_code == code, result.output
        assert ("noise floor away from its peaks:" in result.output) == bool(code), result.output
    assert "away from its peaks) (per output" in result.output, "the footer quotes the bulk floor beside the output's"
