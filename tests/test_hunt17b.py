"""False passes at shapes the verdict did not look at (hunt 17b): each test fails without its fix.

`verify export` writes files with dynamic batch/height/width unless --static, and the manifest records those axes;
`verify artifact` re-runs a folder at a second shape inside them (verify/inputs.py second_shape). A file traced at
the example's size can carry that size inside it (a shape read as a Python number), which no input of the example's
shape shows."""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.conftest import SMALL_SHAPE
from tests.helpers import checks, invoke, rehash
from verify.inputs import second_shape

SHAPE = "1x3x16x16"
BAKED_WIDTH = """
import torch
from torch import nn


class BakedWidth(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        # len() of a row: a trace keeps it as a constant, the example's width (torch warns "Using len to get tensor
        # shape", not of a Python number: `int(x.shape[-1])` is refused before the export since review 17)
        return self.conv(x) * len(x[0, 0, 0])


def make():
    return BakedWidth()
"""
BAKED_BATCH = """
import torch
from torch import nn


class BakedBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y + y * (len(x) - 1)  # the example's batch, kept as a constant


def make():
    return BakedBatch()
"""


def model_file(tmp_path, source: str):
    path = tmp_path / "baked.py"
    path.write_text(source)
    return f"{path}:make"


@pytest.mark.parametrize("how", [["--trace", "--format", "torchscript"],
                                 ["--format", "onnx", "--onnx-exporter", "torchscript"]],
                         ids=["traced-torchscript", "legacy-onnx"])
def test_a_file_that_fixed_the_examples_width_fails_the_export_naming_the_axis(tmp_path, how):
    """Before: `verify export --model baked.py:make --shape 1x3x16x16 --trace` (or the legacy ONNX exporter, which
    traces too) of `conv(x) * len(x[0, 0, 0])` exited 0 with "all pairs agree" and published a folder whose manifest
    declares dynamic height and width (measured at 1x3x32x32: at 2x3x64x64 the TorchScript and ONNX files were 78 off
    in max abs, the outputs times 32, not 64), and `verify artifact` of a folder without a .pt2 passed it too (the
    second shape judged against model.pt, which carries the same width). Hunt 17b ran each file at a second shape
    (exit 1 there); since hunt 20b the trace is watched for the size it reads (`len()` gives a tensor in a trace, read
    as a Python int), and the export is refused before any file is written (exit 2), naming what torch warned."""
    out = tmp_path / "out"
    result = invoke("export", "--model", model_file(tmp_path, BAKED_WIDTH), "--shape", SHAPE, *how, "--out", out)
    assert result.exit_code == 2, result.output
    assert "read the input's size as a Python number (Using len to get tensor shape" in result.output
    assert "--static" in result.output
    assert not (out / "baked-make").exists()


def test_the_same_model_exported_static_still_passes(tmp_path):
    """The way out the failure names: with --static nothing claims another size, and the export exits 0."""
    result = invoke("export", "--model", model_file(tmp_path, BAKED_WIDTH), "--shape", SHAPE, "--trace",
                    "--format", "torchscript", "--static", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "inside the dynamic axes" not in result.output


def test_a_passing_dynamic_export_says_where_its_files_were_judged_at_the_second_shape(tmp_path):
    """A correct dynamic export exits 0 and its report says at which second shape each file was judged, and how close
    it came (before stop 33's note, a passing report did not say the dynamic axes had been checked at all)."""
    import json
    import re

    from verify.judge.compare import AUTO_FACTOR

    source = tmp_path / "plain.py"
    source.write_text(BAKED_WIDTH.replace(" * len(x[0, 0, 0])", ""))
    report = tmp_path / "r.json"
    result = invoke("export", "--model", f"{source}:make", "--shape", SHAPE, "--format", "onnx", "--samples", "1",
                    "--out", tmp_path / "out", "--json", report)
    assert result.exit_code == 0, result.output
    (note,) = [n for n in json.loads(report.read_text())["notes"] if "judged at a second shape" in n]
    shape = "x".join(map(str, second_shape(tuple(int(n) for n in SHAPE.split("x")), {"0": "batch", "2": "height",
                                                                                      "3": "width"})))
    assert shape in note and float(re.search(r"([0-9.]+)x its floor", note)[1]) <= AUTO_FACTOR, note


def test_a_file_that_fixed_the_examples_batch_names_the_batch(tmp_path):
    """Before: a trace of `y + y * arange(int(x.shape[0]))` at batch 1 exited 0 (the in-memory model follows its
    batch, which is all the export checked); at batch 2 the file's second sample is half what the model gives.
    Hunt 17b named the batch at the second shape (exit 1); since hunt 20b the trace's read of it (`len(x)`) is refused
    before any file is written (exit 2)."""
    result = invoke("export", "--model", model_file(tmp_path, BAKED_BATCH), "--shape", SHAPE, "--trace",
                    "--format", "torchscript", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "read the input's size as a Python number" in result.output and not (tmp_path / "out").exists()


LINEAR_HEAD = """
import torch
from torch import nn


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


def make():
    return Head()
"""


def test_a_model_that_takes_only_its_examples_size_is_refused_a_dynamic_export(tmp_path):
    """Before: a Linear after a flatten (16x16 only) exported with the default dynamic axes exited 0 and published
    a folder declaring dynamic height and width, whose every file fails at any other size (measured on
    tests/test_hunt16b.py's head model at 2x3x64x64: model.pt "mat1 and mat2 shapes cannot be multiplied (2x1024 and
    256x10)", model.pt2 a guard, ONNX Runtime an error), so `verify artifact` failed the folder the export passed.
    Now it is refused before any export, as a model that does not follow its batch is: one line, exit 2, --static."""
    result = invoke("export", "--model", model_file(tmp_path, LINEAR_HEAD), "--shape", SHAPE, "--format",
                    "torchscript", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert "fails at 2x3x48x48" in line and "pass --static" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    static = invoke("export", "--model", model_file(tmp_path, LINEAR_HEAD), "--shape", SHAPE, "--format",
                    "torchscript", "--static", "--out", tmp_path / "out")
    assert static.exit_code == 0, static.output


def width_dependent(path, width: int) -> None:
    """model.onnx made to scale its input by 1 + (W - width) / 100: the same file at the golden width, another
    function at any other, rehashed into the manifest (a consistent folder)."""
    model = onnx.load(path)
    graph = model.graph
    name = graph.input[0].name
    for node in graph.node:
        node.input[:] = ["scaled_input" if i == name else i for i in node.input]
    for const, value in (("w_index", np.array(3, dtype=np.int64)), ("w_golden", np.array(width, np.float32)),
                         ("w_step", np.array(0.01, np.float32)), ("w_one", np.array(1.0, np.float32))):
        graph.initializer.append(numpy_helper.from_array(value, const))
    graph.node.insert(0, helper.make_node("Shape", [name], ["w_shape"]))
    graph.node.insert(1, helper.make_node("Gather", ["w_shape", "w_index"], ["w_int"]))
    graph.node.insert(2, helper.make_node("Cast", ["w_int"], ["w_float"], to=onnx.TensorProto.FLOAT))
    graph.node.insert(3, helper.make_node("Sub", ["w_float", "w_golden"], ["w_off"]))
    graph.node.insert(4, helper.make_node("Mul", ["w_off", "w_step"], ["w_part"]))
    graph.node.insert(5, helper.make_node("Add", ["w_part", "w_one"], ["w_factor"]))
    graph.node.insert(6, helper.make_node("Mul", [name, "w_factor"], ["scaled_input"]))
    onnx.checker.check_model(model)
    path.unlink()  # never through the hard link to the shared export
    onnx.save(model, path)
    rehash(path.parent, path.name)


def test_rebuild_judges_the_second_shape_against_the_rebuilt_model(default_export, tmp_path):
    """Before: `verify artifact --rebuild` judged every file against the rebuilt model at the golden shape, but at
    the second shape against a file of the folder, and with none it may load (unsigned, no --trust-unsigned-code)
    only checked that the outputs follow the batch: a model.onnx that computes another function at any width but
    the golden one passed "shape ...: runs; output shapes follow the input". With --rebuild the rebuilt model is the
    reference there too. (Without --rebuild nothing in the folder can tell: the check says what it did.)"""
    folder = tmp_path / default_export.name
    shutil.copytree(default_export, folder, copy_function=os.link)
    width_dependent(folder / "model.onnx", SMALL_SHAPE[3])
    other = second_shape(SMALL_SHAPE, {"0": "batch", "2": "height", "3": "width"})
    title = f"model.onnx: shape {'x'.join(map(str, other))}"
    report = tmp_path / "plain.json"
    invoke("artifact", folder, "--json", report)
    plain = {c["name"]: c for c in checks(report)}
    assert plain["model.onnx: goldens float64"]["passed"]
    assert plain[title]["passed"] and "output shapes follow" in plain[title]["message"]
    report = tmp_path / "rebuilt.json"
    invoke("artifact", folder, "--rebuild", "--json", report)
    rebuilt = {c["name"]: c for c in checks(report)}
    assert rebuilt["model.onnx: goldens float64"]["passed"], rebuilt["model.onnx: goldens float64"]
    assert not rebuilt[title]["passed"], rebuilt[title]
    assert "the rebuilt model" in rebuilt[title]["message"]


READS_A_VALUE = """
import torch
from torch import nn


class ReadsAValue(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        {body}


def make():
    return ReadsAValue()
"""
SCALE_BY_PEAK = """peak = float(x.abs().max())  # a Python number: a trace keeps the example's
        return self.conv(x / 255.0 if peak > 50 else x)"""
BRANCH_ON_PEAK = """y = self.conv(x)
        return -y if x.abs().max() > 50 else y  # a condition on the values: a trace keeps the example's branch"""


@pytest.mark.parametrize("body, how", [
    (SCALE_BY_PEAK, ["--trace", "--format", "torchscript"]),
    (SCALE_BY_PEAK, ["--format", "onnx", "--onnx-exporter", "torchscript"]),
    (BRANCH_ON_PEAK, ["--format", "onnx", "--onnx-exporter", "torchscript"]),
], ids=["traced-scale", "legacy-onnx-scale", "legacy-onnx-branch"])
def test_a_trace_that_reads_a_tensor_as_a_python_value_is_refused(tmp_path, body, how):
    """Before: a model that reads its input's peak as a Python number and divides by 255 above 50 (raw pixels)
    exported by trace with exit 0, "all 3 pairs agree": every seeded input is of ordinary scale, so the file's fixed
    choice matched; on a 0..255 input the traced file was 172 off the model (outputs of scale 0.63). The legacy ONNX
    exporter (a trace too) ignores every warning, so even a condition on the values (refused for --trace since hunt
    8b) exported with exit 0. Now a trace that reads the input's values as a Python value is refused like the branch
    (exporter/formats/torchscript.py TRACED_VALUES), for the legacy ONNX exporter too."""
    path = tmp_path / "reads.py"
    path.write_text(READS_A_VALUE.format(body=body))
    result = invoke("export", "--model", f"{path}:make", "--shape", SHAPE, *how, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "read the input's values as a Python value" in result.output and not (tmp_path / "out").exists()
