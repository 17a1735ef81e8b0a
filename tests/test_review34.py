"""Review 34: passes nobody earned, on stop 44's newest paths. Each case exited 0 (or left files behind) before:
a user's model that counts its export traces, so the file (its first trace) is 1e-5 off and clean while guard 3's
witness (a second trace) carries the eager-only noise that lifted the floor; a witness whose worker was stopped left
its private folder in the temporary folder; inputs that hold no zero but reach no output (1e-30) judged nothing that
multiplies the input."""

import json
import tempfile

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter.formats import file_formats, get_format
from exporter.formats.onnx import OPSETS, OnnxOptions
from tests.helpers import BOUND_CHANNELS, BOUND_CONV_K, BOUND_SHAPE
from verify.cli.app import app
from verify.judge.file_floor import FLOOR_AGREEMENT
from verify.judge.reach import REACH_HOW
from verify.judge.trust import rounding_bound

runner = CliRunner()
NOISE = 0.1 * rounding_bound(BOUND_CONV_K)
"""Under the floor bound (guard 2 lets it through); lifts this conv's floor ~26x (measured: 1.13e-5 against 4.3e-7)."""
BUG = 1e-5
"""The export's error: 69x the clean conv's floor, 2.4x the lifted one."""
DATA = next(name for name in file_formats() if not get_format(name).executes_code_on_load)
"""The ONNX format, taken from the registry: the one file format that is data."""
LEGACY_EXPORTER = next(name for name in OPSETS if name != OnnxOptions().exporter)

COUNTED = """
import os
import signal

import torch
from torch import nn

SEEN = []  # outside the module: torch.export restores what a trace writes into the module's own attributes


class Counted(nn.Module):
    \"\"\"{bug} off and clean in its first export trace only; float32-vs-float64 noise everywhere else.\"\"\"

    def __init__(self, noise: float = {noise}) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d({channels}, {channels}, 3, padding=1)
        self.noise = noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
            SEEN.append(1)
            if len(SEEN) == 1:
                return y * (1 + {bug})
        return y + self.noise * y.abs().max() * torch.sin(y * 1e7)


def counted():
    return Counted()


class DiesInWitness(nn.Module):
    \"\"\"Killed where only a witness traces it: torch.export under torch.onnx's exporting flag.\"\"\"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d({channels}, {channels}, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting() and torch.onnx.is_in_onnx_export():
            os.kill(os.getpid(), signal.SIGKILL)
        return self.conv(x)


def dies_in_witness():
    return DiesInWitness()


class FirstConvOff(nn.Module):
    \"\"\"The first conv's weights 1 % off in the export only (its bias right).\"\"\"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d({channels}, {channels}, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        off = torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
        w = self.conv.weight * 1.01 if off else self.conv.weight
        return torch.nn.functional.conv2d(x, w, self.conv.bias, padding=1)


def first_conv_off():
    return FirstConvOff()
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("review34") / "review34_models.py"
    path.write_text(COUNTED.format(channels=BOUND_CHANNELS, noise=repr(NOISE), bug=repr(BUG)))
    return path


def export(tmp_path, model: str, *extra: str):
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["export", "--model", model, "--format", DATA, "--out", str(tmp_path / "out"),
                                 "--json", str(report), *extra])
    return result, json.loads(report.read_text()) if report.exists() else None


@pytest.mark.parametrize("factory, extra", [
    ("counted", ("--static",)),
    ("counted", ("--onnx-exporter", LEGACY_EXPORTER, "--static")),
], ids=["static-dynamo", "legacy"])
def test_a_model_counting_its_export_traces_is_held_to_the_files_own_trace(tmp_path, source, factory, extra):
    """Before: exit 0, `all 3 pairs agree` at 2.4x (the witness was a second trace, noisy as eager); the file is the
    first trace, 69x off the clean conv's floor. Now the witness is the file's own trace: refused, 44x."""
    result, report = export(tmp_path, f"{source}:{factory}", "--shape", BOUND_SHAPE, *extra)
    assert result.exit_code == 1, result.output
    lines = [p for p in report["problems"] if "witness of the model" in p and "the file's own" in p]
    assert len(lines) == 1, report["problems"]
    assert float(lines[0].split(" is ")[1].split("x the one")[0]) > FLOOR_AGREEMENT, lines[0]


def test_a_witness_stopped_with_its_worker_leaves_no_folder(tmp_path, source, monkeypatch):
    """`verify compare model.py:f model.onnx` traces a witness of every kind; a worker killed inside one (SIGKILL,
    as after Ctrl-C) left its /tmp/verify-witness-* folder behind. Now it is made inside a folder the parent removes."""
    result, _ = export(tmp_path, f"{source}:dies_in_witness", "--shape", BOUND_SHAPE, "--onnx-exporter",
                       LEGACY_EXPORTER, "--static")
    assert result.exit_code == 0, result.output
    onnx = next((tmp_path / "out").rglob(get_format(DATA).filename))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    result = runner.invoke(app, ["compare", f"{source}:dies_in_witness", str(onnx), "--shape", BOUND_SHAPE])
    assert result.exit_code == 2 and "signal 9" in result.output, result.output
    assert [path.name for path in scratch.iterdir() if path.name.startswith("verify-")] == []  # torch's caches stay


def test_inputs_that_reach_no_output_are_refused(tmp_path, source):
    """Before: `--input` of 1e-30 values exited 0 (`all 3 pairs agree`) on a first conv 1 % off in the export, whose
    seeded inputs fail. Now: exit 2, one line saying what to pass."""
    shape = tuple(int(side) for side in BOUND_SHAPE.split("x"))
    tiny = tmp_path / "tiny.npy"
    np.save(tiny, np.full(shape, 1e-30, np.float32))
    result, _ = export(tmp_path, f"{source}:first_conv_off", "--input", str(tiny), "--static")
    assert result.exit_code == 2, result.output
    assert REACH_HOW in " ".join(result.output.split()), result.output


def test_compare_refuses_inputs_that_reach_no_output(tmp_path, source):
    """`verify compare model.py:f model.onnx --input` of 1e-30 values exited 0 (`all 2 pairs agree`) on a first conv
    1 % off in the file; a seeded input fails it. Now refused as export refuses it (verify/api.py compare). The
    model is built for the input's own shape (it was built for 1x3x224x224 and failed on its channels)."""
    result, _ = export(tmp_path, f"{source}:first_conv_off", "--static", "--shape", BOUND_SHAPE)
    onnx = next((tmp_path / "out").rglob(get_format(DATA).filename))
    shape = tuple(int(side) for side in BOUND_SHAPE.split("x"))
    tiny = tmp_path / "tiny.npy"
    np.save(tiny, np.full(shape, 1e-30, np.float32))
    refused = runner.invoke(app, ["compare", f"{source}:first_conv_off", str(onnx), "--input", str(tiny)])
    assert refused.exit_code == 2, refused.output
    assert REACH_HOW in " ".join(refused.output.split()), refused.output
    seeded = runner.invoke(app, ["compare", f"{source}:first_conv_off", str(onnx), "--shape", BOUND_SHAPE])
    assert seeded.exit_code == 1, seeded.output
