"""The contract every format and runtime keeps, built from the registries: one small backbone is
exported through every registered file format, and every runtime runs every format it declares.
A new format or runtime without a working export or run fails here without a line added."""

import numpy as np
import pytest

from exporter.errors import UsageError
from exporter.formats import FORMATS, get_format
from verify.inputs import make_input
from verify.judge.compare import Tolerance, compare_outputs
from verify.runtimes import RUNTIMES, Runtime, RuntimeOptions, make_runtime, runtime_class

PAIRS = [(fmt, name) for name in RUNTIMES for fmt in runtime_class(name).formats]


@pytest.mark.parametrize(("fmt", "name"), PAIRS, ids=[f"{f}-{n}" for f, n in PAIRS])
def test_runtime_contract(fmt, name, exported_small):
    case = exported_small[fmt]
    runtime = make_runtime(name)
    assert isinstance(runtime, Runtime) and runtime.name == name
    assert runtime.load(case.artifact) is runtime
    outputs = runtime.run(case.inputs)
    assert list(outputs) == list(case.reference)
    for key, value in outputs.items():
        assert isinstance(value, np.ndarray) and value.dtype == np.float32
        assert value.shape == case.reference[key].shape
    # agrees with the float64 oracle within the auto tolerance
    assert compare_outputs(name, outputs, "oracle", case.oracle.outputs, Tolerance(), case.oracle.floors).passed
    # a second shape inside the dynamic axes runs too, and follows it
    n, c, h, w = case.shape
    other = runtime.run({"input": make_input((n + 1, c, h + 32, w), 1)})
    first = next(iter(other.values()))
    assert first.shape[0] == n + 1 and first.shape[2] > next(iter(case.reference.values())).shape[2]


@pytest.mark.parametrize(("fmt", "name"), PAIRS, ids=[f"{f}-{n}" for f, n in PAIRS])
def test_runtime_rejects_bad_inputs(fmt, name, exported_small):
    case = exported_small[fmt]
    inputs = case.inputs
    runtime = make_runtime(name).load(case.artifact)
    with pytest.raises(UsageError, match="one input named 'input'"):
        runtime.run({"x": inputs["input"]})
    with pytest.raises(UsageError, match="float32 NCHW"):
        runtime.run({"input": inputs["input"][0]})


@pytest.mark.parametrize("name", RUNTIMES.names())
def test_runtime_refuses_other_formats(name, exported_small):
    others = [case.artifact for fmt, case in exported_small.items() if fmt not in runtime_class(name).formats]
    assert others
    for other in others:
        with pytest.raises(UsageError, match="cannot run"):
            make_runtime(name).load(other)


@pytest.mark.parametrize(("fmt", "name"), [(f, n) for f, n in PAIRS if runtime_class(n).supports_float64])
def test_float64_runtimes_are_exact_references(fmt, name, exported_small):
    case = exported_small[fmt]
    exact = make_runtime(name, RuntimeOptions(dtype="float64")).load(case.artifact)
    outputs = exact.run(case.inputs)
    assert list(outputs) == list(case.oracle.outputs)  # every output, not those it happened to return
    for key, value in outputs.items():
        assert value.dtype == np.float64
        np.testing.assert_allclose(value, case.oracle.outputs[key], rtol=1e-12, atol=1e-12)


def test_unknown_device_and_opt_level():
    with pytest.raises(UsageError, match="Unknown device"):
        make_runtime("eager", RuntimeOptions(device="tpu"))
    with pytest.raises(UsageError, match="--ort-opt-level 'max' is not one of: disable, basic"):
        make_runtime("onnxruntime", RuntimeOptions().replacing(runtime_class("onnxruntime"), opt_level="max"))
    with pytest.raises(UsageError, match="options of runtime onnxruntime are a"):  # another runtime's options
        RuntimeOptions(plugins={"onnxruntime": runtime_class("eager").option_class()()})


# ------------------------------------------------------------------ registry properties

def test_every_format_has_a_runtime_and_every_runtime_format_is_registered():
    declared = {fmt for name in RUNTIMES for fmt in runtime_class(name).formats}
    assert declared == set(FORMATS.names())


@pytest.mark.parametrize("fmt", FORMATS.names())
def test_every_file_format_claims_its_own_files(fmt, exported_small):
    from exporter.formats import detect_format, open_artifact

    entry = get_format(fmt)
    if not entry.is_file:
        assert fmt in exported_small and exported_small[fmt].artifact.path is None
        return
    artifact = exported_small[fmt].artifact
    assert artifact.path.name == entry.filename and detect_format(artifact.path) is entry
    reopened = open_artifact(artifact.path)
    assert reopened.format == fmt and reopened.meta.output_names == list(exported_small[fmt].reference)  # eager's
    assert entry.executes and entry.Options().validate() is None


@pytest.mark.parametrize("fmt", FORMATS.names())
def test_every_format_names_a_registered_runtime_that_runs_it(fmt):
    """`Format.default_runtime` replaces 'the first registered runtime of the format' (registry order)."""
    from verify.runtimes import default_runtime, runtime_class

    name = default_runtime(fmt)
    assert name in RUNTIMES.names() and fmt in runtime_class(name).formats


def test_a_format_naming_an_unknown_runtime_is_refused(monkeypatch):
    from exporter.formats.onnx import OnnxFormat
    from verify.runtimes import default_runtime

    monkeypatch.setattr(OnnxFormat, "default_runtime", "no-such-runtime")
    with pytest.raises(UsageError, match="not a registered runtime of onnx"):
        default_runtime("onnx")
