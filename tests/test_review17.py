"""Review 17 of the change 9ac63f3..9e6ecdd (hunt 17a/17b: the second shape inside the dynamic axes, the summation
floor of a user's few-value head per channel and in the manifest, the trace's Python values refused, reduce's 'not
re-run'): what was confirmed by running it. Each test failed at 9e6ecdd (or, the last, on a review-time draft of its
fix) and passes with the fixes made during the review (exporter/formats/onnx.py, exporter/formats/torchscript.py)."""

from __future__ import annotations

import pytest

from tests.helpers import invoke

SHAPE = "1x3x32x32"

SIZE_AS_FLOAT = """
import math

import torch
from torch import nn


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y / math.sqrt(y.size(1))  # the attention idiom: a size (the channels, never dynamic), read as a float


def make():
    torch.manual_seed(0)
    return Scaled()
"""


@pytest.mark.parametrize("how", [["--trace", "--format", "torchscript"],
                                 ["--format", "onnx", "--onnx-exporter", "torchscript"]],
                         ids=["traced-torchscript", "legacy-onnx"])
def test_a_size_read_as_a_float_by_a_trace_is_not_refused(tmp_path, how):
    """Before (measured at 9e6ecdd): `y / math.sqrt(y.size(1))` (the scaling of "The Annotated Transformer",
    `math.sqrt(query.size(-1))`, here the channel count) exported with `--trace` or `--onnx-exporter torchscript`
    exited 2, also --static: "torch.jit.trace of ... read the input's values as a Python value (Converting a tensor to
    a Python float ...)". Before hunt 17b it exported with exit 0 (only a Python boolean was refused). The value is a
    size, the same in every file of the example's shape (the trace's graph holds it as a constant made by
    prim::NumToTensor of aten::size, not from the input's values). A dynamic export of it is refused by design
    (review 17's fix: a number read in a dynamic trace is refused whatever it is, --static is the way out)."""
    path = tmp_path / "scaled.py"
    path.write_text(SIZE_AS_FLOAT)
    result = invoke("export", "--model", f"{path}:make", "--shape", SHAPE, "--samples", "1", *how, "--static",
                    "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output


def test_a_dynamo_onnx_file_bounded_by_torch_export_is_judged_and_named_as_the_pt2_is(default_export_run):
    """Before (measured at 9e6ecdd): `verify export -b mobilenet_v3_small --shape 1x3x32x32` (default formats) exited 1:
    "model.onnx in onnxruntime: at 2x3x64x64, inside the dynamic axes it declares ..., it differs from the model (c4:
    768 of 768 elements out of tolerance, 8.4e+05x its floor there); its batch and height and width do not hold (a
    size fixed inside the file, e.g. a shape traced as a number)". The cause is none of those: torch.export bounded
    the axes tracing the 1x1 maps of the example ("model.pt2 accepts height 2..32, width 17..32 only"), the dynamo ONNX
    file is translated from that same ExportedProgram (its value_info holds 1x1 maps: ONNX Runtime without graph
    optimisations refuses 2x3x64x64, "Shape mismatch attempting to re-use buffer {2,96,1,1} != {2,96,2,2}"), but
    its meta recorded no ranges, so it alone was judged outside them. Now the .onnx records the .pt2's ranges, which
    the second shape keeps inside (shown on the suite's shared export: a mobilenet export costs 14 s here)."""
    from exporter.formats import get_format

    folder, _, _ = default_export_run
    onnx_meta = get_format("onnx").read_meta(folder / "model.onnx")
    pt2_meta = get_format("pt2").read_meta(folder / "model.pt2")
    assert pt2_meta.dynamic_ranges and onnx_meta.dynamic_ranges == pt2_meta.dynamic_ranges, onnx_meta


BRANCH_ON_WIDTH = """
import torch
from torch import nn


class BranchOnWidth(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return -y if int(y.shape[-1]) > 100 else y  # a Python integer: not refused; the second shape does not cross 100


def make():
    return BranchOnWidth()
"""


def test_a_trace_that_branches_on_a_dynamic_size_read_as_an_integer_does_not_pass(tmp_path, monkeypatch):
    """Before (measured at 9e6ecdd): `-y if int(y.shape[-1]) > 100 else y` exported with `--onnx-exporter torchscript`
    at 1x3x16x16 exited 0 ("each dynamic file was judged at a second shape inside its axes too (2x3x48x48 ...)", "all 3
    pairs agree") and published a folder whose manifest declares dynamic batch, height and width, with a model.onnx
    of one Conv node (no Neg): at any width above 100 it returns y where the model returns -y; `verify artifact` of
    the folder passes too. A trace freezes every Python value it reads, a size as well: one second shape cannot
    show a threshold it does not cross."""
    (tmp_path / "branch.py").write_text(BRANCH_ON_WIDTH)
    monkeypatch.chdir(tmp_path)  # a short model path: the one-line message keeps its advice whole
    out = tmp_path / "out"
    result = invoke("export", "--model", "branch.py:make", "--shape", "1x3x16x16", "--samples", "1", "--format",
                    "onnx", "--onnx-exporter", "torchscript", "--out", out)
    assert result.exit_code != 0, result.output
    assert not out.exists() or not any(out.iterdir()), result.output
    assert "read the input's size as a Python number" in result.output, result.output  # refused for the size read
    assert "cannot claim a dynamic batch, height and width; pass --static" in result.output, result.output


STD_THRESHOLD = """
import torch
from torch import nn


class SpreadGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return -y if float(x.std()) > 1000 else y  # a value read as a float, compared in Python: no boolean warning


def make():
    return SpreadGate()
"""


@pytest.mark.parametrize("how", [["--trace", "--format", "torchscript"],
                                 ["--format", "onnx", "--onnx-exporter", "torchscript"]],
                         ids=["traced-torchscript", "legacy-onnx"])
def test_a_static_trace_that_reads_a_value_as_a_float_is_refused_whatever_the_threshold(tmp_path, how):
    """At 9e6ecdd `-y if float(x.std()) > 1000 else y` exported --static by trace is refused (exit 2, "Converting a
    tensor to a Python float"), and must stay refused when a size read as a number is let through (the test above).
    A review-time draft told a value from a size by a second trace on `abs(example) * 97 + 13`: both traces take `y`
    here (the second input's std is ~58), and the export exited 0 (measured) with a file that returns y where the
    model returns -y for any input of spread above 1000. What tells them apart whatever the threshold is where the
    number comes from: the input's values (here), or its sizes only (in an eager run, Python ints)."""
    path = tmp_path / "gate.py"
    path.write_text(STD_THRESHOLD)
    out = tmp_path / "out"
    result = invoke("export", "--model", f"{path}:make", "--shape", SHAPE, "--samples", "1", *how, "--static",
                    "--out", out)
    assert result.exit_code == 2, result.output
    assert "Python value" in result.output and not out.exists(), result.output

