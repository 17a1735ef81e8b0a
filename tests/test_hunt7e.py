"""Defects found by attacking the formats and runtimes as users and attackers would (compare between files of every
kind, precisions, devices, ONNX Runtime's failures): each test fails without its fix."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from exporter.errors import ArtifactError
from exporter.formats import open_artifact
from verify.cli.app import app
from verify.runtimes import make_runtime

runner = CliRunner()
SIDE = 16
"""Height and width of the hand-made ONNX files (small: each file runs in milliseconds)."""
CHANNELS = 4


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code: int = 2) -> str:
    """The output of a refused command: exit `code`, one error line, no traceback."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def conv_onnx(path, shape=(1, 3, SIDE, SIDE), location: str | None = None):
    """A one-Conv ONNX file of input `shape` (strings: dynamic axes); with `location`, its weight as external data
    in that file (which is not written)."""
    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((CHANNELS, 3, 3, 3)).astype(np.float32), "w")
    out_shape = [shape[0], CHANNELS, *shape[2:]]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if location is not None:
        weight = model.graph.initializer[0]
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        weight.external_data.add(key="location", value=location)
        weight.external_data.add(key="offset", value="4096")
        weight.external_data.add(key="length", value=str(CHANNELS * 3 * 3 * 3 * 4))
    onnx.save(model, str(path))
    return path


def scripted(path, forward):
    """A TorchScript file (no metadata of ours, as one from elsewhere) of a module whose forward is `forward`."""
    module = type(f"Module{forward.__name__}", (torch.nn.Module,), {"forward": forward})()
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def _empty(self, x: torch.Tensor) -> torch.Tensor:
    return x[:, :0]


def _identity(self, x: torch.Tensor) -> torch.Tensor:
    return x


def _nested(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    return x, (x, x)


@pytest.mark.parametrize("tolerance", [["--decimal", "3"], ["--atol", "0.1"], []])
def test_an_empty_output_is_never_judged_equal(tmp_path, tolerance):
    """An output with no element passed any explicit tolerance (exit 0, "all 3 pairs agree" on nothing), and auto
    mode said to pass --decimal instead."""
    empty = scripted(tmp_path / "empty.pt", _empty)
    line = one_line_error(invoke("compare", empty, empty, "--shape", f"1x3x{SIDE}x{SIDE}", "--samples", 1,
                                 *tolerance))
    assert "empty" in line and "nothing to compare" in line


def test_a_nested_output_is_a_one_line_artifact_error_not_an_unexpected_crash(tmp_path):
    runtime = make_runtime("torchscript").load(open_artifact(scripted(tmp_path / "nested.pt", _nested)))
    with pytest.raises(ArtifactError, match="'output1' is a tuple, not a tensor"):
        runtime.run({runtime.artifact.meta.input_name: np.zeros((1, 3, SIDE, SIDE), np.float32)})
    line = one_line_error(invoke("compare", tmp_path / "nested.pt", tmp_path / "nested.pt", "--samples", 1))
    assert "unexpected" not in line and "not a tensor" in line


@pytest.mark.parametrize("flag", ["--tf32", "--no-tf32"])
@pytest.mark.parametrize("command", ["export", "matrix"])
def test_a_tf32_flag_on_the_cpu_is_refused_not_ignored(tmp_path, flag, command):
    """--tf32 on the CPU was accepted and silently ignored (exit 0), though no option the run does not apply may be."""
    out = tmp_path / "out"
    args = ["--out", out] if command == "export" else ["--json", out]
    line = one_line_error(invoke(command, "-b", "resnet18", "--shape", "1x3x32x32", flag, *args))
    assert f"drop {flag}" in line and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["export", "compare"])
def test_device_cuda_without_a_gpu_is_refused_before_any_work(tmp_path, command):
    """Without a GPU, `export --device cuda` exported the ONNX file (6 s) and `compare` built both sides before the
    first CUDA run said CUDA is missing."""
    out = tmp_path / "out"
    args = ["-b", "resnet18", "--out", out] if command == "export" else ["resnet18:batch", "resnet18:frozen"]
    result = invoke(command, *args, "--shape", "1x3x32x32", "--device", "cuda")
    line = one_line_error(result)
    assert "drop --device cuda" in line and "✓" not in result.output and not out.exists()


def test_a_precision_onnx_runtime_cannot_honour_is_refused_before_either_side_runs(tmp_path):
    conv = conv_onnx(tmp_path / "conv.onnx")
    module = scripted(tmp_path / "identity.pt", _identity)
    result = invoke("compare", module, conv, "--precision", "bf16", "--samples", 1)
    assert "cannot run it at bf16" in one_line_error(result) and "Running" not in result.output


def test_a_dynamic_file_against_a_fixed_one_runs_at_the_fixed_shape(tmp_path):
    """The dynamic side came first and filled its free axes from 1x3x224x224, which the fixed side cannot take."""
    fixed = conv_onnx(tmp_path / "fixed.onnx")
    dynamic = conv_onnx(tmp_path / "dynamic.onnx", shape=("batch", 3, "height", "width"))
    result = invoke("compare", dynamic, fixed, "--samples", 1)
    assert result.exit_code == 0, result.output


def test_two_files_of_different_fixed_shapes_are_refused_before_either_runs(tmp_path):
    small = conv_onnx(tmp_path / "small.onnx")
    large = conv_onnx(tmp_path / "large.onnx", shape=(1, 3, 2 * SIDE, 2 * SIDE))
    result = invoke("compare", small, large, "--samples", 1)
    assert "no input fits both" in one_line_error(result) and "Running" not in result.output


def test_onnx_runtimes_failure_is_its_reason_in_one_line_and_nothing_else(tmp_path, capfd):
    """ORT logged its own coloured error line to stderr beside the tool's, and the tool's line kept ORT's source
    locations, cut before the reason."""
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    path = conv_onnx(tmp_path / "outside.onnx", location="weights.bin")  # its offset lies past the file's end
    capfd.readouterr()
    with pytest.raises(ArtifactError) as caught:
        make_runtime("onnxruntime").load(open_artifact(path))
    message = str(caught.value)
    assert "out of bounds" in message and ".cc:" not in message and "[ONNXRuntimeError]" not in message
    assert capfd.readouterr().err == ""


def test_files_whose_outputs_are_named_apart_are_told_how_to_compare(tmp_path):
    module = scripted(tmp_path / "identity.pt", _identity)
    line = one_line_error(invoke("compare", module, conv_onnx(tmp_path / "conv.onnx"), "--samples", 1))
    assert "share no output (output0 vs y)" in line and "name them alike" in line


def test_a_pt2_marked_as_an_aoti_package_fails_in_one_line_without_torchs_log(tmp_path, caplog, monkeypatch):
    """A .pt2 holding an AOTInductor entry is claimed by the aoti format; its load failed in one line, but torch also
    logged "Loading outdated pt2 file" (a W... line on stderr) beside it."""
    # the load runs here, not in the worker whose temporary folder is removed with it: torch's loader extracts
    # into $TMPDIR (a /tmp/aotinductor_* folder per run of this test was left behind)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import logging
    import zipfile

    from verify.runtimes.aoti import LoadedAoti

    path = tmp_path / "marked.pt2"
    conv = torch.nn.Conv2d(3, CHANNELS, 3, padding=1)
    torch.export.save(torch.export.export(conv, (torch.zeros(1, 3, SIDE, SIDE),)), str(path))
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(f"{archive.namelist()[0].split('/')[0]}/data/aotinductor/model/note.txt", "not code")
    artifact = open_artifact(path)
    assert artifact.format == "aoti"
    caplog.set_level(logging.WARNING)
    with pytest.raises(ArtifactError, match="cannot be loaded by torch._inductor.aoti_load_package"):
        LoadedAoti().load(artifact)  # what the worker runs
    assert not [r for r in caplog.records if r.name.startswith("torch") and r.levelno >= logging.WARNING], caplog.text


@pytest.mark.parametrize(("given", "written"), [
    (["--opset", "17"], "torchscript"), (["--onnx-exporter", "torchscript"], "torchscript"),
    (["--trace"], "onnx"), (["--ort-opt-level", "basic"], "torchscript")])
def test_an_option_of_a_format_or_runtime_that_does_not_take_part_is_refused(tmp_path, given, written):
    """--opset with only TorchScript written, --trace with only ONNX, --ort-opt-level with no ONNX Runtime run: each
    was accepted and silently ignored (exit 0)."""
    out = tmp_path / "out"
    line = one_line_error(invoke("export", "--model", "tests/data/tiny.py:make", "--format", written, *given,
                                 "--out", out))
    assert f"{given[0]} applies to" in line and f"drop {given[0]}" in line and not out.exists()


def test_an_onnx_runtime_option_with_no_onnx_side_is_refused_by_compare(tmp_path):
    module = scripted(tmp_path / "identity.pt", _identity)
    result = invoke("compare", module, module, "--ort-opt-level", "basic", "--shape", f"1x3x{SIDE}x{SIDE}")
    assert "drop --ort-opt-level" in one_line_error(result) and "Running" not in result.output
