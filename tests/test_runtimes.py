"""The runtime contract, for every registered runtime on a small backbone."""

import numpy as np
import pytest
import torch

from exporter.artifacts import eager_artifact
from exporter.backbones import get_backbone
from exporter.errors import UsageError
from exporter.export import ExportOptions, export_model
from tests.conftest import SMALL, SMALL_SHAPE
from verify.compare import Tolerance, compare_outputs
from verify.inputs import make_input
from verify.oracle import measure_oracle
from verify.runtimes import RUNTIMES, Runtime, RuntimeOptions, make_runtime


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("contract")
    built = get_backbone(SMALL, "frozen", "body")
    eager = eager_artifact(built, SMALL_SHAPE)
    x = make_input(SMALL_SHAPE, 0)
    artifacts = {"eager": eager}
    for fmt in ("torchscript", "onnx"):
        artifacts[fmt] = export_model(built, eager.meta, torch.from_numpy(x), folder, ExportOptions(), fmt)
    inputs = {"input": x}
    reference = make_runtime("eager").load(eager).run(inputs)
    return artifacts, inputs, reference, measure_oracle(eager, inputs, reference)


@pytest.mark.parametrize("name", RUNTIMES.names())
def test_runtime_contract(name, exported):
    artifacts, inputs, reference, oracle = exported
    runtime = make_runtime(name)
    assert isinstance(runtime, Runtime) and runtime.name == name
    artifact = next(a for a in artifacts.values() if a.format in runtime.formats)
    assert runtime.load(artifact) is runtime
    outputs = runtime.run(inputs)
    assert list(outputs) == ["layer1", "layer2", "layer3", "layer4"]
    for key, value in outputs.items():
        assert isinstance(value, np.ndarray) and value.dtype == np.float32
        assert value.shape == reference[key].shape
    # agrees with the float64 oracle within the auto tolerance
    assert compare_outputs(name, outputs, "oracle", oracle.outputs, Tolerance(), oracle.floors).passed
    # a second shape inside the dynamic axes runs too
    other = runtime.run({"input": make_input((2, 3, 96, 64), 1)})
    assert other["layer1"].shape == (2, 64, 24, 16)


@pytest.mark.parametrize("name", RUNTIMES.names())
def test_runtime_rejects_bad_inputs(name, exported):
    artifacts, inputs, _, _ = exported
    runtime = make_runtime(name)
    runtime.load(next(a for a in artifacts.values() if a.format in runtime.formats))
    with pytest.raises(UsageError, match="one input named 'input'"):
        runtime.run({"x": inputs["input"]})
    with pytest.raises(UsageError, match="float32 NCHW"):
        runtime.run({"input": inputs["input"][0]})


@pytest.mark.parametrize("name", RUNTIMES.names())
def test_runtime_refuses_other_formats(name, exported):
    artifacts, _, _, _ = exported
    runtime = make_runtime(name)
    other = next(a for a in artifacts.values() if a.format not in runtime.formats)
    with pytest.raises(UsageError, match="cannot run"):
        runtime.load(other)


def test_float64_runtimes_are_exact_references(exported):
    artifacts, inputs, _, oracle = exported
    ts64 = make_runtime("torchscript", RuntimeOptions(dtype="float64")).load(artifacts["torchscript"])
    for key, value in ts64.run(inputs).items():
        assert value.dtype == np.float64
        np.testing.assert_allclose(value, oracle.outputs[key], rtol=1e-12, atol=1e-12)


def test_unknown_device_and_opt_level(exported):
    artifacts, _, _, _ = exported
    with pytest.raises(UsageError, match="Unknown device"):
        make_runtime("eager", RuntimeOptions(device="tpu"))
    with pytest.raises(UsageError, match="optimisation level"):
        make_runtime("onnxruntime", RuntimeOptions(ort_opt_level="max")).load(artifacts["onnx"])
