"""Hunt 20b: what hunts 19b, 19f and sweep 19e left for users' models. A 2x2 input whose stages reach 1x1
(exporter/formats/program.py `accepted_ranges`), a size read whose trace warning the model silenced, and the tracing
flags a model binds at import (exporter/formats/torchscript.py `_traced_reads`)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from tests.helpers import invoke, quiet_branch_source, trace_context

TINY = "tests/data/tiny.py:make"


def test_a_model_whose_stages_reach_1x1_is_judged_at_a_second_shape_its_files_take(tmp_path):
    """Before: `verify export --model tests/data/tiny.py:make --shape 1x3x2x2` exited 1 ("model.pt2 ... at 2x3x34x34,
    inside the dynamic axes it declares ... Guard failed: x.size()[2] == 2"): torch.export fixed height and width at 2
    (two stride-2 stages reach 1x1 there, a size it specialises) but left them SymInts whose expression is the number 2,
    which `accepted_ranges` read as unbounded. Now such an axis is recorded as [2, 2], the second shape keeps it (a
    batch of 2 only), and the note names the bound."""
    result = invoke("export", "--model", TINY, "--shape", "1x3x2x2", "--format", "pt2", "--samples", "1",
                    "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "2x3x2x2" in result.output and "height 2..2, width 2..2" in result.output


def test_an_axis_torch_export_fixed_is_recorded_as_that_size():
    from exporter.formats.program import accepted_ranges, export_program

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1)).eval()
    ranges = accepted_ranges(export_program(model, torch.randn(1, 3, 2, 2), True, "two strided convs"))
    assert ranges["2"] == ranges["3"] == [2, 2]


class QuietSizeBranch(nn.Module):
    """Negates its output below 16 px wide, the trace's warning silenced: a trace at 32 px keeps `y` for every width,
    and a second shape 32 px wider never crosses the threshold."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        warnings.simplefilter("ignore")
        y = self.conv(x)
        return y if x.shape[-1] >= 16 else -y


class QuietValueRead(QuietSizeBranch):
    def forward(self, x):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peak = float(x.abs().max())
        return self.conv(x / 255.0 if peak > 50 else x)


QUIET_SIZE = quiet_branch_source("x.shape[-1]")


def test_a_size_read_whose_warning_the_model_silenced_is_refused_a_dynamic_trace(tmp_path):
    """Before: the model above exported by trace with exit 0 ("all pairs agree", the second shape 2x3x64x64 too) and a
    folder claiming a dynamic width, its model.pt computing y at 8 px where the model computes -y: the silenced-read
    check ran the model eagerly, where a size is a Python int and no read shows. Now it watches a real trace, where a
    size is a tensor, and tells a size from a value by what the tensor read is made of."""
    path = tmp_path / "quiet.py"
    path.write_text(QUIET_SIZE)
    result = invoke("export", "--model", f"{path}:make", "--shape", "1x3x32x32", "--samples", "1", "--trace",
                    "--format", "torchscript", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "read the input's size as a Python number" in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("model, reads", [(QuietSizeBranch, {"sizes"}), (QuietValueRead, {"values"})])
def test_a_watched_trace_tells_a_size_read_from_a_value_read(model, reads):
    from exporter.formats.torchscript import _traced_reads

    assert _traced_reads(trace_context(model())) == reads


def test_a_silenced_size_read_is_right_in_a_static_trace():
    """The guard of the refusal above: a static file takes only the example's size, where the size it keeps is right."""
    from exporter.formats.torchscript import refuse_traced_reads

    refuse_traced_reads([], trace_context(QuietSizeBranch(), dynamic=False))  # no ExportError


class BoundAtImport(nn.Module):
    """Checks its input's values only outside a trace, asking through a name bound at import."""

    def __init__(self, tracing):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.tracing = tracing

    def forward(self, x):
        if not self.tracing() and float(x.abs().max()) > 1e6:
            raise ValueError("input out of range")
        return self.conv(x)


@pytest.mark.parametrize("flag", ["is_tracing", "_get_tracing_state"])
def test_a_check_outside_a_trace_asked_through_a_name_bound_at_import_is_no_read(flag):
    """Before: `from torch.jit import is_tracing` (or `torch._C._get_tracing_state`) bound at import was not the
    patched `torch.jit.is_tracing`, so the watched run took the eager branch, saw its check of values and refused a
    correct model (exit 2; hunt 19b's "Left"). Now the watched run is a real trace: every flag says so."""
    from torch._C import _get_tracing_state
    from torch.jit import is_tracing

    from exporter.formats.torchscript import refuse_traced_reads

    asks = {"is_tracing": is_tracing, "_get_tracing_state": lambda: _get_tracing_state() is not None}[flag]
    torch.manual_seed(0)
    refuse_traced_reads([], trace_context(BoundAtImport(asks)))  # no ExportError


FLAGGED = """
import torch
from torch import nn
from torch._C import _get_tracing_state
from torch.compiler import is_compiling
from torch.jit import is_tracing
from torch.onnx import is_in_onnx_export


class Flagged(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if is_tracing() or _get_tracing_state() is not None or is_compiling() or is_in_onnx_export():
            return -y
        return y


def make():
    torch.manual_seed(0)
    return Flagged()
"""


def test_a_model_computing_otherwise_while_traced_or_exported_fails_in_every_file(tmp_path):
    """Each flag a model can ask, bound at import (torch.jit.is_tracing and torch._C._get_tracing_state in
    torch.jit.trace, torch.compiler.is_compiling in torch.export and torch.onnx.export, torch.onnx.is_in_onnx_export in
    the latter), makes each file compute -y where the model computes y: every file's run against the eager model
    disagrees (exit 1), none passes."""
    path = tmp_path / "flagged.py"
    path.write_text(FLAGGED)
    result = invoke("export", "--model", f"{path}:make", "--shape", "1x3x16x16", "--samples", "1", "--trace",
                    "--static", "--json", tmp_path / "r.json", "--out", tmp_path / "out")
    assert result.exit_code == 1, result.output
    import json

    failed = {(p["a"], p["b"]) for p in json.loads((tmp_path / "r.json").read_text())["pairs"] if not p["passed"]}
    assert {("torchscript", "eager"), ("exported", "eager"), ("onnxruntime", "eager")} <= failed, failed


def test_a_least_size_torch_export_put_on_an_axis_is_named_in_the_report():
    """Hunt 20b left: `y if x.shape[-1] >= 16 else -y` exported at 32 px records width [16, None]; the .pt2 refuses
    8 px, the ONNX file runs it with the traced branch, and no note said so (only axes bounded from above were
    named). Now a least size above torch.export's own (2) is a bound the report names, with what to do."""
    from pathlib import Path

    from exporter.artifacts import LEAST_DYNAMIC_SIZE, Artifact, ArtifactMeta
    from verify.pipeline.stages import bounds_notes

    least = LEAST_DYNAMIC_SIZE + 14
    meta = ArtifactMeta(input_shape=[1, 3, 32, 32], dynamic_axes={"0": "batch", "2": "height", "3": "width"},
                        dynamic_ranges={"0": [LEAST_DYNAMIC_SIZE, None], "2": [LEAST_DYNAMIC_SIZE, None],
                                        "3": [least, None]})
    assert meta.bounded_axes() == f"width {least}.."
    [note] = bounds_notes([Artifact("onnx", meta, Path("model.onnx"))])
    assert note.startswith(f"model.onnx accepts width {least}.. only") and "at least that size" in note
    assert "largest size" not in note
    unbounded = ArtifactMeta(dynamic_ranges={"0": [LEAST_DYNAMIC_SIZE, None], "3": [LEAST_DYNAMIC_SIZE, None]})
    assert unbounded.bounded_axes() == "" and not bounds_notes([Artifact("onnx", unbounded, Path("m.onnx"))])
