"""Hunt 37: passes nobody earned from files. An ONNX file records its input and output names at export, and the folder
checks compared that record with the manifest, never with the graph a runtime runs: a file whose two outputs are listed
in the other order passed every check (each output is compared by name), while a consumer reading outputs by position
gets them swapped. An opset the installed onnx does not know passed onnx.checker and failed only in ONNX Runtime, with a
C++ banner for a reason."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from exporter.formats.onnx import OnnxFormat
from exporter.manifest import MANIFEST_NAME
from tests.helpers import invoke

SHAPE = "1x3x8x8"
TWO_OUTPUTS = '''
import torch
from torch import nn


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return {"first": self.a(x), "second": self.b(x)}


def make():
    return Two()
'''


@pytest.fixture(scope="module")
def folder(module_tmp):
    """An ONNX-only export of a model with two outputs of one shape."""
    where = module_tmp("hunt37")
    (where / "two.py").write_text(TWO_OUTPUTS)
    result = invoke("export", "--model", f"{where / 'two.py'}:make", "--format", OnnxFormat.name, "--static",
                    "--shape", SHAPE,
                    "--no-layers", "--out", where / "out")
    assert result.exit_code == 0, result.output
    return next((where / "out").iterdir())


def _edited(folder: Path, where: Path, edit) -> Path:
    """A copy of `folder` whose ONNX file is edited by `edit(model)`, its hash and size recorded: consistent again."""
    import onnx

    copy = Path(shutil.copytree(folder, where / folder.name))
    filename = OnnxFormat.filename
    model = onnx.load(str(copy / filename))
    edit(model)
    onnx.save(model, str(copy / filename))
    data = json.loads((copy / MANIFEST_NAME).read_text())
    raw = (copy / filename).read_bytes()
    data["files"][filename].update(sha256=hashlib.sha256(raw).hexdigest(), size=len(raw))
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    return copy


def _swap_order(model) -> None:
    outputs = list(model.graph.output)
    del model.graph.output[:]
    model.graph.output.extend(reversed(outputs))


def test_the_honest_folder_passes(folder):
    result = invoke("artifact", folder)
    assert result.exit_code == 0, result.output


def test_outputs_listed_in_another_order_fail(folder, tmp_path):
    result = invoke("artifact", _edited(folder, tmp_path, _swap_order))
    assert result.exit_code == 1, result.output
    assert "gives ['second', 'first'] in that order" in result.output
    assert "edited after export" in result.output


def test_an_opset_the_installed_onnx_does_not_know_is_refused_in_one_line(folder, tmp_path):
    from exporter.formats.onnx import installed_max_opset

    newer = installed_max_opset() + 1

    def edit(model):
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = newer

    copy = _edited(folder, tmp_path, edit)
    data = json.loads((copy / MANIFEST_NAME).read_text())
    data["files"][OnnxFormat.filename]["opset"] = newer
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    result = invoke("artifact", copy)
    assert result.exit_code == 1, result.output
    line = next(line for line in result.output.splitlines() if f"declares opset {newer}" in line)
    assert f"newer than the installed onnx knows ({installed_max_opset()})" in line
    assert "onnxruntime::" not in result.output
