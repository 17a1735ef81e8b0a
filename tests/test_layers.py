"""The layer verdict (`--layers`, verify/judge/layers.py): every layer of a file re-run alone on the torch model's
float64 inputs and judged on its own float32 floor. A one-channel weight error too small to move the outputs beyond
rounding passes the output verdict and fails this one, naming the layer; a correct export passes it; a run that asked
for it and could not reach it never exits 0."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from onnx import numpy_helper

import exporter.export
from tests.conftest import SMALL, SMALL_SHAPE
from tests.helpers import ONE_CHANNEL_ERROR, invoke
from verify.judge.compare import AUTO_FACTOR
from verify.pipeline.overlap import MODE_ENV

SPEC = f"{SMALL}:frozen:body"
SHAPE = "x".join(map(str, SMALL_SHAPE))
LAYER, CHANNEL = "layer2.0.conv2", 5
BELOW_ROUNDING = ONE_CHANNEL_ERROR / 100
"""A one-channel weight error whose effect on the outputs is within their float32 rounding (asserted below: the
output verdict passes it), while the layer's own output moves far beyond its own floor."""


def scaled_onnx(path, out, error: float = BELOW_ROUNDING) -> None:
    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if i.name.endswith(f"{LAYER}.weight"))
    weight = numpy_helper.to_array(init).copy()
    weight[CHANNEL] *= 1 + error
    init.CopyFrom(numpy_helper.from_array(weight, init.name))
    onnx.save(model, str(out))


def scaled_torchscript(path, out, error: float = BELOW_ROUNDING) -> None:
    module = torch.jit.load(str(path))
    with torch.no_grad():
        dict(module.named_parameters())[f"{LAYER}.weight"][CHANNEL] *= 1 + error
    torch.jit.save(module, str(out))


def report_of(tmp_path, *args) -> tuple[int, dict, str]:
    path = tmp_path / "report.json"
    result = invoke(*args, "--json", path)
    return result.exit_code, json.loads(path.read_text()), result.output


@pytest.mark.parametrize("name, scale", [("model.onnx", scaled_onnx), ("model.pt", scaled_torchscript)])
def test_an_error_within_the_outputs_rounding_passes_them_and_fails_its_layer(default_export, tmp_path, name, scale):
    bad = tmp_path / f"bad{default_export.joinpath(name).suffix}"
    scale(default_export / name, bad)
    code, report, _ = report_of(tmp_path, "compare", bad, SPEC, "--shape", SHAPE, "--samples", "1")
    assert code == 0 and report["passed"] and "layers" not in report, "the outputs alone cannot see it"

    code, report, output = report_of(tmp_path, "compare", bad, SPEC, "--shape", SHAPE, "--samples", "1", "--layers")
    assert code == 1 and not report["passed"]
    assert all(pair["passed"] for pair in report["pairs"]), "the outputs still agree: the layers fail the report"
    (check,) = report["layers"]
    assert check["candidate"] == str(bad) and not check["passed"] and check["named"] == [LAYER]
    worst = check["layers"][0]
    assert worst["module"] == LAYER and worst["channel"] == CHANNEL and worst["ratio"] > AUTO_FACTOR
    assert "layers that differ on their own" in output and LAYER in output


def test_the_same_file_unchanged_passes_its_layers(default_export, tmp_path):
    code, report, output = report_of(tmp_path, "compare", default_export / "model.onnx", SPEC, "--shape", SHAPE,
                                     "--samples", "1", "--layers")
    assert code == 0 and report["passed"]
    (check,) = report["layers"]
    assert check["passed"] and check["layers"] and max(layer["ratio"] for layer in check["layers"]) <= AUTO_FACTOR
    assert "every layer of 1 files" in output


@pytest.fixture
def quietly_buggy_onnx_exporter(monkeypatch):
    """The ONNX exporter writes LAYER's channel off by BELOW_ROUNDING (exported in this process, where it runs)."""
    original = exporter.export.export_model

    def buggy(built, base, example, folder, options, fmt, context=None):
        artifact = original(built, base, example, folder, options, fmt, context)
        if fmt == "onnx":
            scaled_onnx(artifact.path, artifact.path)
        return artifact

    monkeypatch.setattr(exporter.export, "export_model", buggy)
    monkeypatch.setenv(MODE_ENV, "off")


def test_export_judges_every_files_layers_and_names_the_one_off(tmp_path, quietly_buggy_onnx_exporter):
    junit = tmp_path / "junit.xml"
    code, report, _ = report_of(tmp_path, "export", "-b", SMALL, "--shape", SHAPE, "--samples", "1", "--layers",
                                "--out", tmp_path / "out", "--junit", junit, "--no-cache")
    assert code == 1 and all(pair["passed"] for pair in report["pairs"])
    checks = {check["candidate"]: check for check in report["layers"]}
    assert set(checks) == {"model.onnx", "model.pt2", "model.pt"}, "every file by its name in the folder"
    assert checks["model.onnx"]["named"] == [LAYER] and not checks["model.onnx"]["passed"]
    assert checks["model.pt2"]["passed"] and checks["model.pt"]["passed"]
    assert report["settings"]["layers"] is True
    assert "isolated" not in report, "the layers are already named: no second isolation"
    text = junit.read_text()
    assert 'name="layers model.onnx"' in text and text.count("<failure") == 1


def test_layers_need_a_torch_model_on_one_side(default_export, tmp_path):
    result = invoke("compare", default_export / "model.onnx", default_export / "model.pt", "--layers")
    assert result.exit_code == 2
    assert "--layers" in result.output and "both files" in result.output


def test_a_file_whose_layers_cannot_be_rerun_fails_the_layer_verdict(default_export, tmp_path):
    """An ONNX file whose nodes carry no module scope (renamed, their metadata dropped) has no layer that maps back
    to the model: the verdict asked for was not reached, never a pass."""
    model = onnx.load(str(default_export / "model.onnx"))
    for index, node in enumerate(model.graph.node):
        node.name = f"n{index}"
        del node.metadata_props[:]
    anonymous = tmp_path / "anonymous.onnx"
    onnx.save(model, str(anonymous))
    code, report, output = report_of(tmp_path, "compare", anonymous, SPEC, "--shape", SHAPE, "--samples", "1",
                                     "--layers")
    assert code == 1 and all(pair["passed"] for pair in report["pairs"])
    (check,) = report["layers"]
    assert not check["passed"] and not check["layers"]
    assert "no layer was re-run" in output


def test_the_matrix_and_whole_detectors_refuse_layers(tmp_path):
    from verify.matrix.request import MatrixRequest
    from verify.settings import RunSettings

    with pytest.raises(Exception, match="--layers"):
        MatrixRequest.create(backbones=[SMALL], settings=RunSettings(layers=True))
    result = invoke("export", "-b", "fasterrcnn_mobilenet_v3_large_320_fpn", "--layers", "--out", tmp_path)
    assert result.exit_code == 2 and "--layers" in result.output
    with pytest.raises(TypeError, match="layers"):
        RunSettings(layers="yes")


def test_a_workers_layer_checks_are_judged_again_on_this_processs_factor():
    """A user's model runs in a worker (verify/pipeline/isolation.py): its recorded factor is not the verdict, and a
    worker that returns no check where one was asked for reaches no verdict."""
    from verify.api import rejudged_layers
    from verify.judge.layers import NO_LAYER_VERDICT, Isolation, LayerError
    from verify.report import Report
    from verify.settings import RunSettings

    lifted = Isolation("model.py:make (eager)", "model.onnx", factor=1e30,
                       layers=[LayerError("conv", 0, ratio=AUTO_FACTOR * 10, max_abs=1.0, floor=0.1)])
    report = rejudged_layers(Report("export", {}, {}, layers=[lifted]), RunSettings(layers=True))
    assert report.layers[0].factor == AUTO_FACTOR and not report.layers[0].passed and not report.passed
    empty = rejudged_layers(Report("export", {}, {}), RunSettings(layers=True))
    assert empty.problems == [NO_LAYER_VERDICT]
    assert rejudged_layers(Report("export", {}, {}), RunSettings()).problems == []


def test_the_pytest_plugin_judges_layers_when_asked(tmp_path, quietly_buggy_onnx_exporter):
    """`assert_exports_agree(..., layers=True)` fails on the quiet error the outputs pass, naming the layer."""
    from exporter.backbones import build_model
    from exporter.spec import ModelSpec
    from exporter.weights import load_weights
    from verify.pytest_plugin import assert_exports_agree

    module = build_model(ModelSpec(SMALL, "frozen", "body"), load_weights("synthetic", SMALL)).model
    example = torch.randn(SMALL_SHAPE, generator=torch.Generator().manual_seed(0))
    report = assert_exports_agree(module, example, out=tmp_path / "plain", formats=["onnx"])
    assert report.passed and not report.layers
    with pytest.raises(AssertionError) as failed:
        assert_exports_agree(module, example, out=tmp_path / "layers", formats=["onnx"], layers=True)
    assert LAYER in str(failed.value) and "differ on their own" in str(failed.value)


def test_a_norm_the_legacy_exporter_folds_into_its_conv_is_judged_with_it(tmp_path):
    """The legacy ONNX exporter folds an eval-mode BatchNorm into the Conv before it and names the node after the
    conv, leaving no node under the norm. Before: the folded conv was judged against the conv's unfolded output (and
    the ReLU after it on the conv's value): a correct file at 1e7x its floor. Now the node stands for the norm's
    output, computed with the conv."""
    code, report, _ = report_of(tmp_path, "export", "-b", SMALL, "--norm", "batch", "--shape", SHAPE, "--samples", "1",
                                "--format", "onnx", "--onnx-exporter", "torchscript", "--layers", "--no-cache",
                                "--out", tmp_path / "out")
    assert code == 0 and report["passed"]
    (check,) = report["layers"]
    assert check["passed"] and max(layer["ratio"] for layer in check["layers"]) <= AUTO_FACTOR
    folded = {layer["module"]: layer["fused_with"] for layer in check["layers"]}
    assert folded["conv1"] == ["bn1"] and folded[LAYER] == [LAYER.replace("conv", "bn")]
