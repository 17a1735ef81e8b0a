"""More evidence per verdict (issue 17): the seeded input set, each channel's floor pooled over it, every input
judged on the pooled floor and the verdict on the worst; `--samples 1` is the single seeded input of before."""

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from typer.testing import CliRunner

from exporter.backbones import build_model
from exporter.errors import UsageError
from exporter.export import ExportOptions
from exporter.formats.eager import eager_artifact
from exporter.spec import ModelSpec
from exporter.weights import load_weights
from verify.cli import app
from verify.inputs import (
    DEFAULT_SAMPLES,
    IMAGE_BLOCK,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_SAMPLES,
    SAMPLE_KINDS,
    SAMPLE_PATTERN,
    SAMPLES_ENV,
    make_input,
    sample_kinds,
    seeded_inputs,
)
from verify.judge.compare import AUTO_FACTOR, Tolerance
from verify.judge.noise_floor import FLOAT32_EPS, NoiseFloor
from verify.judge.oracle import measure_oracle, measure_oracles, pooled_floors
from verify.pipeline.stages import (
    CellRequest,
    oracles_stage,
    pooled_judge_stage,
    run_cell,
    run_stage,
    worst_over_inputs,
)
from verify.report import Report
from verify.runtimes import RuntimeOptions
from verify.settings import RunSettings, default_inputs, sample_count

SHAPE = (1, 3, 32, 32)
BUG_SHAPE = (1, 3, 64, 64)
WEIGHT_ERROR = 1.001
"""The seeded bug: a 0.1 % error in one output channel's weights."""
HIDDEN_BUG = ("layer4.0.conv2", 352)
"""Found by measurement (resnet18 frozen, synthetic seed 0, 64 px): the seeded normal input leaves this channel's
error at 1.0x its floor (it passes), the default set shows it at ~34x on an image-like input."""


def kind_of(label: str) -> str:
    return label.split(",")[0].rstrip("0123456789")


def test_default_set_has_the_pattern_kinds_and_count():
    named = seeded_inputs(SHAPE, 7)
    assert len(named) == DEFAULT_SAMPLES
    assert [kind_of(item.label) for item in named] == sample_kinds(DEFAULT_SAMPLES) == list(SAMPLE_PATTERN)
    assert Counter(kind_of(item.label) for item in named) == Counter(SAMPLE_PATTERN)
    assert len({item.label for item in named}) == DEFAULT_SAMPLES
    np.testing.assert_array_equal(named[0].array, make_input(SHAPE, 7))  # normal0 is the seeded input of before
    assert len({item.array.tobytes() for item in named}) == DEFAULT_SAMPLES
    again = seeded_inputs(SHAPE, 7)
    assert all(np.array_equal(a.array, b.array) for a, b in zip(named, again))
    other = seeded_inputs(SHAPE, 8)
    assert not any(np.array_equal(a.array, b.array) for a, b in zip(named, other))
    assert all(item.array.dtype == np.float32 and item.array.shape == SHAPE for item in named)
    for item in named:
        if kind_of(item.label) == "uniform":
            assert item.array.min() >= 0 and item.array.max() < 1


def test_samples_one_is_the_single_seeded_input():
    (only,) = seeded_inputs(SHAPE, 3, 1)
    np.testing.assert_array_equal(only.array, make_input(SHAPE, 3))
    assert len(seeded_inputs(SHAPE, 3, 2 * DEFAULT_SAMPLES)) == 2 * DEFAULT_SAMPLES


def test_image_like_input_is_a_smooth_normalised_image():
    shape = (2, 3, 64, 48)
    images = [item.array for item in seeded_inputs(shape, 0) if kind_of(item.label) == "image"]
    assert images
    mean, std = (np.array(v).reshape(1, -1, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    for x in images:
        pixels = x * std + mean  # back to [0, 1]
        assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
        # bilinear upsampling by s moves at most 1/s of a [0, 1] step from one pixel to the next
        for axis, size in ((2, shape[2]), (3, shape[3])):
            step = 1 / (size / max(size // IMAGE_BLOCK, 2))
            assert np.abs(np.diff(pixels, axis=axis)).max() <= step + 1e-6


floor_channels = st.integers(1, 6).flatmap(lambda c: st.lists(
    arrays(np.float64, c, elements=st.floats(1e-9, 1.0, allow_nan=False)), min_size=1, max_size=8))


@settings(max_examples=60, deadline=None)
@given(floor_channels)
def test_pooled_floor_is_the_channel_max_over_inputs(channels):
    floors = [{"out": NoiseFloor(float(c.max()), c)} for c in channels]
    pooled = pooled_floors(floors)["out"]
    np.testing.assert_array_equal(pooled.channels, np.max(np.stack(channels), axis=0))
    assert pooled.value == max(float(c.max()) for c in channels)
    for floor in floors:  # no input's floor is lowered by pooling
        assert (pooled.channels >= floor["out"].channels).all()


@pytest.fixture(scope="module")
def resnet18_64():
    return build_model(ModelSpec("resnet18", "frozen", "body"), load_weights("synthetic", "resnet18", 0), 0)


def test_batched_oracle_is_the_per_input_oracle(resnet18_64):
    eager = eager_artifact(resnet18_64, SHAPE)
    feeds = [{eager.meta.input_name: item.array} for item in seeded_inputs(SHAPE, 0, len(SAMPLE_KINDS))]
    batched = measure_oracles(eager, feeds, [None] * len(feeds), batch=True)
    for feed, oracle in zip(feeds, batched):
        alone = measure_oracle(eager, feed, None)
        for name, floor in alone.noise.items():  # float64 rounding of a batch is far below what a floor can tell
            # (the batch may take other float64 kernels: on two threads an element differs by ~1e-16 absolute,
            # which is large relative only to an element that cancelled to near zero)
            scale = float(np.abs(alone.outputs[name]).max())
            np.testing.assert_allclose(oracle.outputs[name], alone.outputs[name], rtol=0, atol=FLOAT32_EPS ** 2 * scale)
            np.testing.assert_allclose(oracle.noise[name].channels, floor.channels, rtol=0,
                                       atol=FLOAT32_EPS ** 2 * scale)


class CountingRuntime:
    """Doubles its input: each call's batch size recorded."""

    def __init__(self):
        self.calls = []

    def run(self, feed):
        (array,) = feed.values()
        self.calls.append(array.shape[0])
        return {"out": array * 2}


@pytest.mark.parametrize("side", [8, 256])
def test_float64_feeds_run_as_one_batch_only_while_small(side):
    """Below BATCH_MAX_ELEMENTS together the feeds run as one batch (per-call overhead dominates there); above it,
    one by one (the batch's float64 activations outgrow the caches), each with its own outputs either way."""
    from verify.judge.oracle import BATCH_MAX_ELEMENTS, _batched_run

    feeds = [{"x": np.full((1, 3, side, side), i, np.float64)} for i in range(8)]
    small = sum(f["x"].size for f in feeds) <= BATCH_MAX_ELEMENTS
    runtime = CountingRuntime()
    outputs = _batched_run(runtime, feeds)
    if small:
        assert runtime.calls == [len(feeds)]
        for i, out in enumerate(outputs):
            np.testing.assert_array_equal(out["out"], feeds[i]["x"] * 2)
    else:
        assert outputs is None and runtime.calls == []


def verdict(built, named, bug=None):
    """An eager run with `bug` judged against the clean eager run and the oracle, as `verify export` judges."""
    import torch

    eager = eager_artifact(built, named[0].array.shape)
    feeds = [{eager.meta.input_name: item.array} for item in named]
    clean = run_stage("eager", eager, feeds, RuntimeOptions())
    conv = built.model.get_submodule(bug[0])
    saved = conv.weight[bug[1]].clone()
    with torch.no_grad():
        conv.weight[bug[1]].mul_(WEIGHT_ERROR)
    try:
        broken = replace(run_stage("eager", eager, feeds, RuntimeOptions()), label="broken")
    finally:
        with torch.no_grad():
            conv.weight[bug[1]].copy_(saved)
    oracles = oracles_stage(eager, feeds, [clean], batch=True)
    _, judged = pooled_judge_stage([clean, broken], oracles, Tolerance())
    return worst_over_inputs(judged, named, Report("export", {}, {}))


def test_a_bug_one_input_misses_the_default_set_catches(resnet18_64):
    single = verdict(resnet18_64, seeded_inputs(BUG_SHAPE, 0, 1), HIDDEN_BUG)
    assert all(pair.passed for pair in single)
    assert max(pair.worst.ratio for pair in single) <= AUTO_FACTOR
    several = verdict(resnet18_64, seeded_inputs(BUG_SHAPE, 0), HIDDEN_BUG)
    failed = [pair for pair in several if not pair.passed]
    assert {pair.a for pair in failed} == {"broken"}
    assert min(pair.worst.ratio for pair in failed) > AUTO_FACTOR


@pytest.fixture(scope="module")
def reports(module_tmp):
    folder = module_tmp("evidence")
    request = CellRequest(ModelSpec("resnet18", "frozen", "body"), RunSettings(shape=SHAPE, seed=0),
                          ExportOptions(formats=("torchscript",)))
    found = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(SAMPLES_ENV, raising=False)  # the product's default, not the suite's (tests/conftest.py)
        for samples in (1, None):
            (folder / f"s{samples}").mkdir()
            found[samples] = run_cell(replace(request, settings=replace(request.settings, samples=samples)),
                                      folder / f"s{samples}").report
    return found


def test_samples_one_reports_the_single_input_floors(reports, resnet18_64):
    report = reports[1]
    eager = eager_artifact(resnet18_64, SHAPE)
    alone = measure_oracle(eager, {eager.meta.input_name: make_input(SHAPE, 0)}, None)
    assert set(report.floors) == set(alone.noise)
    for name, floor in alone.noise.items():
        np.testing.assert_array_equal(report.floors[name].channels, floor.channels)
    assert report.floor_source == alone.source
    assert "inputs" not in report.input and "worst_input" not in report.input
    assert report.passed


def test_default_report_judges_every_input_on_pooled_floors(reports, resnet18_64):
    report = reports[None]
    assert len(report.input["inputs"]) == DEFAULT_SAMPLES
    assert set(report.input["worst_input"]) == {f"{p.a} vs {p.b}" for p in report.pairs}
    eager = eager_artifact(resnet18_64, SHAPE)
    own = [measure_oracle(eager, {eager.meta.input_name: item.array}, None) for item in seeded_inputs(SHAPE, 0)]
    for name, floor in report.floors.items():  # the report's float64 runs went as one batch: equal to its rounding
        scale = max(float(np.abs(o.outputs[name]).max()) for o in own)
        np.testing.assert_allclose(floor.channels, np.max([o.noise[name].channels for o in own], axis=0), rtol=0,
                                   atol=FLOAT32_EPS ** 2 * scale)
    assert str(DEFAULT_SAMPLES) in report.floor_source
    assert len(report.trust["inputs"]) == DEFAULT_SAMPLES  # the floor bound is checked on every input
    assert report.passed


@pytest.mark.parametrize("value", [0, MAX_SAMPLES + 1])
def test_samples_out_of_range_is_refused(value):
    with pytest.raises(UsageError, match="samples"):
        RunSettings(samples=value)
    result = CliRunner().invoke(app, ["export", "--samples", str(value), "--out", "unused"])
    assert result.exit_code == 2 and "samples" in result.output


def test_samples_beside_input_is_refused(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, make_input(SHAPE, 0))
    with pytest.raises(UsageError, match="--samples"):
        RunSettings(input_file=path, samples=2)
    result = CliRunner().invoke(app, ["export", "--input", str(path), "--samples", "2", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "--samples" in result.output and "Traceback" not in result.output


def test_the_environment_sets_the_default_count_and_is_checked(monkeypatch):
    monkeypatch.delenv(SAMPLES_ENV, raising=False)
    assert sample_count(RunSettings()) == DEFAULT_SAMPLES
    monkeypatch.setenv(SAMPLES_ENV, "2")
    assert sample_count(RunSettings()) == 2 and len(default_inputs(RunSettings(), SHAPE)) == 2
    assert sample_count(RunSettings(samples=5)) == 5  # --samples wins
    for bad in ("0", str(MAX_SAMPLES + 1), "two", "nan", "-1", "1.5"):
        monkeypatch.setenv(SAMPLES_ENV, bad)
        with pytest.raises(UsageError, match=SAMPLES_ENV) as refused:
            sample_count(RunSettings())
        assert "\n" not in str(refused.value)

