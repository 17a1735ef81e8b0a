"""Per-channel noise floors: measured per channel, judged per channel, shown per channel, JSON-safe."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from exporter.api import get_backbone
from exporter.errors import UsageError
from exporter.export import ExportOptions, export_model
from exporter.formats.eager import eager_artifact
from exporter.formats.onnx import OnnxOptions
from tests.conftest import SMALL
from verify.api import RunSettings, compare
from verify.judge.compare import AUTO_FACTOR, DECIMAL_RANGE, Tolerance, compare_arrays, compare_outputs
from verify.judge.measure import measure_floor, measure_floors, noise_floors
from verify.judge.noise_floor import CHANNEL_FLOOR_SHARE, FLOAT32_EPS, MIN_CHANNEL_ELEMENTS, NoiseFloor
from verify.report import Report, render_pairs

STAGE_SHAPE = (1, 3, 128, 128)
"""Large enough that every stage's output channel has >= MIN_CHANNEL_ELEMENTS elements up to layer3."""


def rounding(shape, seed: int) -> np.ndarray:
    """Rounding-like noise: 1e-3 in the loud channel 0, 1e-6 in the quiet channel 1, 1e-5 in channel 2."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape) * np.array([1e-3, 1e-6, 1e-5]).reshape(1, 3, 1, 1)


def loud_and_quiet(seed: int = 0, side: int = 8):
    """An NCHW reference with a loud channel 0 and a quiet channel 1, and a run rounded off it."""
    ref = np.random.default_rng(seed).uniform(1.0, 2.0, (1, 3, side, side))
    ref[:, 0] *= 1000.0
    return ref, ref + rounding(ref.shape, seed + 100)


# ------------------------------------------------------------------------------------------------
# measuring
# ------------------------------------------------------------------------------------------------


def test_channel_floors_are_each_channels_own_max():
    ref, run = loud_and_quiet()
    floor = measure_floor(run, ref)
    err = np.abs(run - ref)
    assert floor.value == err.max()
    assert floor.channels.shape == (3,)
    share = CHANNEL_FLOOR_SHARE * floor.value
    for c in range(3):
        assert floor.channels[c] == max(err[:, c].max(), share, FLOAT32_EPS * np.abs(ref).max())
    assert floor.channels[1] < floor.value / 4  # the quiet channel's floor is far below the output's
    assert np.allclose(floor.rms, np.sqrt((err ** 2).mean(axis=(0, 2, 3))))


def test_a_zero_channel_gets_a_floor_that_rounding_never_trips_and_a_real_error_does():
    ref, run = loud_and_quiet()
    ref[:, 2] = 0.0  # a channel a ReLU zeroed: no rounding to measure there
    run[:, 2] = 0.0
    floor = measure_floor(run, ref)
    assert floor.channels[2] == floor.value  # fewer than MIN_CHANNEL_ELEMENTS non-zero: the output's floor
    other = run.copy()
    other[0, 2, 0, 0] = floor.value  # a sign flip at rounding size
    assert compare_arrays("x", other, ref, Tolerance(), floor).passed
    other[0, 2, 0, 0] = AUTO_FACTOR * floor.value * 1.01
    result = compare_arrays("x", other, ref, Tolerance(), floor)
    assert not result.passed and result.channel == 2


def test_channels_with_few_non_zero_elements_keep_the_outputs_floor():
    ref, run = loud_and_quiet(side=8)
    ref[:, 1].flat[MIN_CHANNEL_ELEMENTS - 1:] = 0.0  # one element short
    run[:, 1].flat[MIN_CHANNEL_ELEMENTS - 1:] = 0.0
    floor = measure_floor(run, ref)
    assert floor.channels[1] == floor.value
    ref[:, 1].flat[MIN_CHANNEL_ELEMENTS - 1] = run[:, 1].flat[MIN_CHANNEL_ELEMENTS - 1] = 1.0  # exactly enough
    assert measure_floor(run, ref).channels[1] < floor.value


def test_outputs_without_channels_have_a_per_output_floor_only():
    ref = np.linspace(1.0, 2.0, 40).reshape(4, 10)
    floor = measure_floor(ref + 1e-6, ref)
    assert floor.channels is None and floor.value == pytest.approx(1e-6)
    assert compare_arrays("x", ref + 3e-6, ref, Tolerance(), floor).channel is None


def test_plain_float_floors_still_work():
    ref, run = loud_and_quiet()
    floors = noise_floors({"x": run}, {"x": ref})
    assert isinstance(floors["x"], float)
    pair = compare_outputs("a", {"x": run}, "b", {"x": ref}, Tolerance(), floors)
    assert pair.passed and pair.worst.channel is None and pair.worst.ratio == pair.worst.output_ratio


# ------------------------------------------------------------------------------------------------
# judging
# ------------------------------------------------------------------------------------------------


def test_an_error_in_a_quiet_channel_fails_per_channel_though_it_hides_under_the_output_floor():
    ref, run = loud_and_quiet()
    floors = measure_floors({"x": run}, {"x": ref})
    broken = run.copy()
    broken[:, 1] += 2 * floors["x"].channels[1] * AUTO_FACTOR  # far beyond the quiet channel's rounding
    assert np.abs(broken - ref).max() < AUTO_FACTOR * floors["x"].value  # the per-output rule passes it
    result = compare_outputs("a", {"x": broken}, "b", {"x": ref}, Tolerance(), floors).worst
    assert not result.passed
    assert result.channel == 1 and result.where == "x[c=1]"
    assert result.ratio > AUTO_FACTOR > result.output_ratio
    assert result.channel_floor == floors["x"].channels[1]
    assert result.allowed == AUTO_FACTOR * floors["x"].channels[1]
    assert result.needed == f"factor>={result.ratio:.3g}"


def test_rounding_in_every_channel_passes():
    ref, run = loud_and_quiet(seed=1)
    floors = measure_floors({"x": run}, {"x": ref})
    other = ref + rounding(ref.shape, seed=2)  # another rounding sample of the same size
    result = compare_outputs("a", {"x": other}, "b", {"x": ref}, Tolerance(), floors).worst
    assert result.passed and result.ratio < AUTO_FACTOR


def test_combine_takes_the_larger_floor_channel_by_channel():
    a = NoiseFloor(2.0, np.array([1.0, 0.5]))
    b = NoiseFloor(1.0, np.array([0.25, 1.0]))
    both = a.combine(b)
    assert both.value == 2.0 and both.channels.tolist() == [1.0, 1.0]
    assert a.combine(None) is a


def test_a_floor_survives_json_and_a_malformed_record_is_refused():
    ref, run = loud_and_quiet()
    floor = measure_floor(run, ref)
    back = NoiseFloor.from_dict(json.loads(json.dumps(floor.to_dict())))
    assert back.value == floor.value and back.channels.tolist() == floor.channels.tolist()
    assert NoiseFloor.from_dict(2.5e-6).value == 2.5e-6 and NoiseFloor.from_dict(2.5e-6).channels is None
    for bad in ({"value": None}, {"channels": [1.0]}, {"value": 1.0, "channels": [1.0, None]},
                {"value": 1.0, "channels": [1.0, "x"]}, {"value": 1.0, "precision": "fp8"}, "1e-6"):
        with pytest.raises(UsageError):
            NoiseFloor.from_dict(bad)


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_a_floor_that_judges_nothing_is_refused(value):
    with pytest.raises(UsageError, match="noise floor must be a finite number > 0"):
        compare_arrays("x", np.ones(3), np.ones(3), Tolerance(), value)


def test_channel_floors_that_judge_nothing_are_refused():
    with pytest.raises(UsageError, match="finite numbers > 0"):
        NoiseFloor(1.0, np.array([1.0, math.nan]))


# ------------------------------------------------------------------------------------------------
# reporting: JSON-safe, table
# ------------------------------------------------------------------------------------------------


def test_floors_and_comparisons_are_json_safe():
    ref, run = loud_and_quiet()
    ref[0, 0, 0, 0] = math.nan  # a NaN in the reference itself
    floors = measure_floors({"x": run}, {"x": ref})
    assert floors["x"].ignored == 1
    text = json.dumps(floors["x"].to_dict(), allow_nan=False)
    assert json.loads(text)["ignored_nonfinite"] == 1
    run[0, 0, 0, 0] = math.inf
    pair = compare_outputs("a", {"x": run}, "b", {"x": ref}, Tolerance(), floors)
    assert not pair.passed
    json.dumps(pair.to_dict(), allow_nan=False)
    report = Report("export", {"tolerance": Tolerance().to_dict()}, {}, pairs=[pair], floors=floors)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["noise_floor"]["per_output"]["x"] == floors["x"].value
    assert len(data["noise_floor"]["detail"]["x"]["channels"]) == 3


def test_a_non_finite_statistic_becomes_null_with_a_reason():
    result = compare_arrays("x", np.array([math.nan]), np.array([math.nan]), Tolerance(), 1.0)
    data = result.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["worst_a"] is None and "worst_a: NaN" in data["null_reason"]


def test_the_table_names_the_worst_channel():
    from rich.console import Console

    ref, run = loud_and_quiet()
    floors = measure_floors({"x": run}, {"x": ref})
    broken = run.copy()
    broken[:, 1] += 10 * floors["x"].channels[1] * AUTO_FACTOR
    pair = compare_outputs("ort", {"x": broken}, "eager", {"x": ref}, Tolerance(), floors)
    report = Report("export", {"tolerance": Tolerance().to_dict(), "tolerance_text": Tolerance().describe()},
                    {}, pairs=[pair], floors=floors)
    console = Console(record=True, width=160)
    render_pairs(report, console)
    text = console.export_text()
    assert "x[c=1]" in text and f"{pair.worst.ratio:.1f}" in text
    assert pair.to_dict()["worst"] == {"output": "x", "channel": 1, "ratio": pair.worst.ratio}


# ------------------------------------------------------------------------------------------------
# Tolerance fails closed
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"factor": math.nan}, "--factor must be a finite number"),
    ({"factor": math.inf}, "--factor must be a finite number"),
    ({"factor": 0.0}, "--factor must be > 0"),
    ({"factor": -2.0}, "--factor must be > 0"),
    ({"mode": "allclose", "rtol": math.nan}, "--rtol must be a finite number"),
    ({"mode": "allclose", "atol": math.inf}, "--atol must be a finite number"),
    ({"mode": "allclose", "atol": math.nan}, "--atol must be a finite number"),
    ({"mode": "allclose", "rtol": -1e-7}, ">= 0"),
    ({"mode": "decimal", "decimal": None}, "--decimal must be an integer"),
    ({"mode": "decimal", "decimal": DECIMAL_RANGE[1] + 1}, "--decimal must be an integer"),
    ({"mode": "decimal", "decimal": DECIMAL_RANGE[0] - 1}, "--decimal must be an integer"),
    ({"mode": "decimal", "decimal": 2.5}, "--decimal must be an integer"),
    ({"mode": "decimal", "decimal": True}, "--decimal must be an integer"),
    ({"mode": "exact"}, "Unknown tolerance mode"),
])
def test_tolerance_refuses_what_could_pass_anything(kwargs, match):
    with pytest.raises(UsageError, match=match) as info:
        Tolerance(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs", [{"factor": math.nan}, {"rtol": math.nan}, {"atol": math.inf},
                                    {"decimal": DECIMAL_RANGE[1] + 1}])
def test_from_options_refuses_them_too(kwargs):
    with pytest.raises(UsageError):
        Tolerance.from_options(**kwargs)


def test_the_decimal_range_ends_are_accepted():
    for decimal in DECIMAL_RANGE:
        assert Tolerance.from_options(decimal=decimal).decimal == decimal


# ------------------------------------------------------------------------------------------------
# a 0.1 % error in one output channel of a convolution, in every stage of resnet18
# ------------------------------------------------------------------------------------------------

STAGES = {"stem": "conv1", "layer1": "layer1.0.conv1", "layer2": "layer2.1.conv2", "layer3": "layer3.0.conv2",
          "layer4 (last block)": "layer4.1.conv1", "downsample": "layer4.0.downsample.0"}


@pytest.fixture(scope="module")
def stage_exports(module_tmp):
    """One legacy ONNX export per stage, each with a 0.1 % error in a seeded output channel of
    one convolution of that stage; and a clean export as the control."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(STAGE_SHAPE).astype(np.float32))
    exports = {}
    for stage, layer in [("clean", None), *STAGES.items()]:
        built = get_backbone(SMALL, "frozen", "body")
        if layer is not None:
            conv = built.model.get_submodule(layer)
            with torch.no_grad():
                conv.weight[int(rng.integers(conv.out_channels))] *= 1.001
        folder = module_tmp(stage.split()[0])
        exports[stage] = export_model(built, eager_artifact(built, STAGE_SHAPE).meta, x, folder,
                                      ExportOptions(format_options=(OnnxOptions(exporter="torchscript"),)), "onnx")
    return exports


@pytest.mark.parametrize("stage", list(STAGES))
def test_auto_fails_a_thousandth_in_one_channel_of_every_stage(stage, stage_exports):
    report = compare(str(stage_exports[stage].path), f"{SMALL}:frozen:body", RunSettings(shape=STAGE_SHAPE))
    pair = report.pairs[0]
    assert not pair.passed, (stage, pair.worst.ratio)
    assert pair.worst.ratio > AUTO_FACTOR
    assert any("beyond rounding" in note for note in report.notes)


def test_the_clean_export_passes_the_same_check(stage_exports):
    report = compare(str(stage_exports["clean"].path), f"{SMALL}:frozen:body", RunSettings(shape=STAGE_SHAPE))
    assert report.passed, [(p.a, p.b, p.worst.where, p.worst.ratio) for p in report.pairs]
