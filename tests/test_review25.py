"""Review 25: the public surface (CLI, `verify.api`, the pytest plugin) used as a new user and an attacker would.
Each test fails without its fix."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from exporter.errors import UsageError
from exporter.spec import ModelSpec
from tests.helpers import invoke

TINY = (1, 3, 16, 16)
TINY_MODEL = f"{Path(__file__).parent / 'data' / 'tiny.py'}:make"
"""tests/data/tiny.py's factory, found wherever the suite is run from."""


@pytest.fixture
def unreadable(monkeypatch):
    """Make files unreadable to this process: chmod 000, and, where this process is root (whom file modes do not
    bind), an open() of that path refused as the kernel refuses it to other users (EACCES). Removing such a file needs
    only its folder's permissions, so tmp_path's clean-up is unchanged."""
    paths: set[str] = set()
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)) in paths:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)

    def make(path: Path, data: bytes = b"x") -> Path:
        path.write_bytes(data)
        path.chmod(0)
        paths.add(os.path.abspath(path))
        return path

    return make


def one_error_line(result, unexpected: bool = False) -> str:
    """The one `error:` line of an exit 2 without a traceback; an "unexpected" (bug) line only where asked for."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and ("unexpected" in result.stderr) == unexpected, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_cli_weights_file_it_cannot_read_is_one_line_before_any_build(unreadable, tmp_path):
    """Before: `verify export --weights w.pt` with w.pt chmod 000 built resnet18 and ended with "unexpected
    PermissionError ... please report it"; now the option is refused while the command line is parsed."""
    weights = unreadable(tmp_path / "w.pt")
    result = invoke("export", "-b", "resnet18", "--shape", "1x3x16x16", "--weights", weights, "--out", tmp_path / "o")
    line = one_error_line(result)
    assert "'--weights'" in line and "cannot be read (Permission denied)" in line, line
    assert "Building" not in result.stderr


def test_library_weights_file_it_cannot_read_is_a_usage_error(unreadable, tmp_path):
    """Before: RunSettings(weights=...) took the file, and verify_export raised a bare PermissionError."""
    from verify.api import RunSettings

    weights = unreadable(tmp_path / "w.safetensors")
    with pytest.raises(UsageError, match="cannot be read \\(Permission denied\\)"):
        RunSettings(weights=str(weights), shape=TINY)


def test_compare_a_model_file_it_cannot_read_says_so(unreadable, tmp_path):
    """Before: an .onnx file chmod 000 was reported as "fails onnx.checker: Unable to open proto file ... check if
    it is a valid proto": a damaged file, not a permission; now its permissions are named, before any load."""
    side = unreadable(tmp_path / "m.onnx")
    other = tmp_path / "other.onnx"
    other.write_bytes(b"not onnx")
    result = invoke("compare", side, other, "--shape", "1x3x16x16")
    line = one_error_line(result)
    assert f"{side} cannot be read (Permission denied)" in line and "proto" not in line, line


def test_library_out_that_is_a_file_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    """Before: verify_export(..., out=<a file>) built the model, then failed as "Cannot write into the output folder
    ...: File exists"; it is checked as the CLI's --out is, before any work."""
    from verify.api import RunSettings, verify_export

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before out was checked")

    monkeypatch.setattr(ModelSpec, "build", no_build)
    out = tmp_path / "a_file"
    out.write_text("x")
    with pytest.raises(UsageError, match="is a file; give a folder"):
        verify_export(ModelSpec("resnet18", "frozen", "body"), RunSettings(shape=TINY), out=out, cache=None)


def test_explain_json_carries_the_exit_codes_verdict(tmp_path):
    """Before: `verify explain FILE MODEL --isolate --json r.json` on a file whose graph names no module exited 1
    (hunt 15a: no isolation done is no pass) with a report whose only verdict read `"equivalent": true`: a
    machine reading the report saw a pass. Now the report's `passed` is the exit code's verdict."""
    source = tmp_path / "bare.py"
    source.write_text("import torch\n\ndef conv():\n    return torch.nn.Conv2d(3, 4, 3)\n")
    factory = f"{source}:conv"
    onnx_file = tmp_path / "bare.onnx"
    torch.manual_seed(0)  # the factory's weights (the loader seeds torch with --seed 0)
    torch.onnx.export(nn.Conv2d(3, 4, 3).eval(), (torch.randn(TINY),), onnx_file, dynamo=False,
                      input_names=["input"], output_names=["output0"])  # the name the factory's output gets
    report = tmp_path / "explain.json"
    result = invoke("explain", onnx_file, factory, "--shape", "1x3x16x16", "--isolate", "--json", report)
    data = json.loads(report.read_text())
    assert result.exit_code == 1, result.output
    assert data["equivalent"] is True and data["passed"] is False and data["command"] == "explain", data


def test_plugin_failure_names_the_plugins_argument_not_the_clis_flag(tmp_path):
    """Before: a model whose output does not follow the batch failed the test with "...: pass --static", a flag the
    plugin does not take; it now says dynamic=False."""
    from verify.pytest_plugin import assert_exports_agree

    class Summed(nn.Module):
        def forward(self, x):
            return x.sum()

    with pytest.raises(pytest.fail.Exception) as failed:
        assert_exports_agree(Summed(), torch.randn(TINY), out=tmp_path, formats=["onnx"])
    message = str(failed.value)
    assert "pass dynamic=False" in message and "--static" not in message, message


def test_plugin_example_of_the_wrong_dtype_names_its_dtype(tmp_path):
    """An integer example was refused as "got Tensor (1, 3, 16, 16)": what was wrong with it was not said."""
    from verify.pytest_plugin import assert_exports_agree

    with pytest.raises(pytest.fail.Exception, match=r"got Tensor \(1, 3, 16, 16\) int64"):
        assert_exports_agree(nn.Conv2d(3, 4, 3), torch.ones(TINY, dtype=torch.int64), out=tmp_path)


@pytest.mark.parametrize("args", [
    ("export", "--model", "", "--shape", "1x3x16x16", "--format", "onnx", "--no-layers", "--no-cache"),
    ("export", "-b", "resnet18", "--shape", "1x3x16x16", "--input", ""),
    ("export", "-b", "resnet18", "--shape", "1x3x16x16", "--out", ""),
    ("artifact", ""),
], ids=["model", "input", "out", "artifact-path"])
def test_an_empty_value_is_refused_not_taken_for_the_default_or_the_working_folder(args, tmp_path, monkeypatch):
    """Before: `--model ""` (an unset variable in a CI script) verified the default resnet50 and could exit 0,
    `--out ""` wrote into the working folder, `--input ""` read it as an input folder and `verify artifact ""` checked
    it; each is now one line and exit 2 while the command line is parsed."""
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    line = one_error_line(result)
    assert "was given an empty value" in line and "Building" not in result.stderr, line
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_a_failure_while_the_command_line_is_parsed_is_one_line_and_exit_2(monkeypatch):
    """A bug in a parse-time check (here forced) escaped OneLineErrors as a traceback and exit 1, the code of a
    disagreement; it is now the one `unexpected ...` line and exit 2, as inside a command."""
    from verify.cli import base

    def broken(*args, **kwargs):
        raise RuntimeError("a check that broke")

    monkeypatch.setattr(base, "_refuse_empty_values", broken)
    line = one_error_line(invoke("list"), unexpected=True)
    assert line.startswith("error: unexpected RuntimeError: a check that broke"), line


def test_an_input_the_model_cannot_take_is_refused_at_the_build_not_blamed_on_the_export(tmp_path):
    """`--input` without `--shape`: the model is built on the input's own shape (verify/pipeline/stages.py
    build_stage), so a 1-channel array for a 3-channel model is refused there; it was blamed on the dynamic export
    ("fails at batch 2 ... pass --static"), and with --static on torch.export's raw message."""
    import numpy as np

    array = tmp_path / "gray.npy"
    np.save(array, np.full((1, 1, 32, 32), 0.5, dtype=np.float32))
    result = invoke("export", "--model", TINY_MODEL, "--input", array, "--out", tmp_path / "out",
                    "--no-cache")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "(1, 1, 32, 32)" in text and "--static" not in text, text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("manifest.json"))
