"""The few full-size checks: ResNet-50 at 1x3x224x224, as the product's main job runs it, and the
measured case behind per-channel floors (resnet34 at 320x256)."""

import numpy as np
import pytest
import torch

from exporter.backbones import build_model
from exporter.export import ExportOptions, export_model
from exporter.formats.eager import eager_artifact
from exporter.formats.onnx import OnnxOptions
from exporter.spec import ModelSpec
from exporter.weights import load_weights
from verify.api import RunSettings, compare, verify_export
from verify.judge.compare import AUTO_FACTOR

SPEC = ModelSpec("resnet50", "frozen", "body")
SHAPE = (1, 3, 224, 224)


@pytest.fixture(scope="module")
def main_job(module_tmp):
    """`verify_export` of SPEC at SHAPE with the default formats: the main job, and its correct dynamo ONNX file
    that the seeded-bug cases edit (one export of ResNet-50 at 224 for the module, not three)."""
    return verify_export(SPEC, RunSettings(shape=SHAPE), out=module_tmp("main-job"))


def with_one_channel_scaled(onnx_path, weight: str, channel: int, factor: float, out):
    """The ONNX file with one output channel of one weight scaled, as exporting the model so changed writes it:
    the exporter keeps every convolution weight as an initializer under its module's name."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    found = [init for init in model.graph.initializer if init.name == weight]
    assert len(found) == 1, f"{weight} is not one initializer of {onnx_path}"
    array = numpy_helper.to_array(found[0]).copy()
    array[channel] *= np.float32(factor)
    found[0].CopyFrom(numpy_helper.from_array(array, weight))
    onnx.save(model, str(out))
    return out


def test_main_job_passes_under_every_runtime(main_job):
    report = main_job
    assert report.passed, [(p.a, p.b, p.worst.ratio) for p in report.pairs if not p.passed]
    from exporter.formats import default_formats
    from verify.runtimes import runtimes_for_formats

    assert {r.label for r in report.runs} == set(runtimes_for_formats(["eager", *default_formats()]))
    assert max(p.worst.ratio for p in report.pairs) < AUTO_FACTOR / 1.5  # margin, not a near miss


@pytest.mark.parametrize(("layer", "channel"), [("layer3.0.conv2", 255), ("layer2.2.conv2", 78)])
def test_auto_fails_an_export_with_one_channel_off_by_a_thousandth(layer, channel, main_job, tmp_path):
    """The bar for `auto`: 0.1 % weight error on one output channel of one mid-network conv, in the main job's
    dynamo ONNX file. layer3.0.conv2[255] is the least visible of 30 seeded picks in bench/calibrate_auto.py."""
    onnx = with_one_channel_scaled(main_job.artifacts["onnx"], f"{layer}.weight", channel, 1.001,
                                   tmp_path / "model.onnx")
    report = compare(str(onnx), str(SPEC), RunSettings(shape=SHAPE))
    pair = report.pairs[0]
    assert not pair.passed
    assert pair.worst.ratio > AUTO_FACTOR
    assert any("beyond rounding" in note for note in report.notes)


def test_auto_fails_a_thousandth_in_one_channel_of_resnet34s_last_block(tmp_path):
    """Issue 8's measured case: 0.1 % weight error in one output channel of a convolution in the last
    block of resnet34 (fused norm, 320x256 input). Under one floor per output it stays below the factor
    (the per-output rule passed it); against each channel's own floor it is far beyond. Channel 416 of
    layer4.2.conv1 is the least visible of 40 seeded picks in that block (bench/calibrate_auto.py)."""
    spec, shape = ModelSpec("resnet34", "fused", "body"), (1, 3, 320, 256)
    broken = build_model(spec, load_weights("synthetic", "resnet34"))
    with torch.no_grad():
        broken.model.get_submodule("layer4.2.conv1").weight[416] *= 1.001
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    onnx = export_model(broken, eager_artifact(broken, shape).meta, x, tmp_path,
                        ExportOptions(format_options=(OnnxOptions(exporter="torchscript"),)), "onnx")
    report = compare(str(onnx.path), str(spec), RunSettings(shape=shape))
    pair = report.pairs[0]
    assert not pair.passed
    assert pair.worst.output_ratio < AUTO_FACTOR < pair.worst.ratio
    assert pair.worst.channel is not None
    assert any("beyond rounding" in note for note in report.notes)
