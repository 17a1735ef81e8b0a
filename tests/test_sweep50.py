"""Sweep 50: parents' own ops on users' models. A block with its own ops called twice in a row, `blk(blk(x))`: the
dynamo ONNX graph gives both calls one scope (merged_calls), and the layer after it was fed the block's first call's
output as its input, a correct file named `head` at 4e6x its floor (exit 1). A merged module's calls are now no
layer's input (verify/explain/rerun.py `_merged_unread`): the head reads its own recorded input."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
from onnx import numpy_helper

from exporter.artifacts import Artifact, ArtifactMeta
from exporter.formats.eager import EagerFormat
from verify.explain.rerun import isolate_onnx, record_reference
from verify.explain.tracers import Side
from verify.judge.compare import AUTO_FACTOR


class Gate(torch.nn.Module):
    """A conv child and the parent's own gate (`sigmoid(a(x)) * x`)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.a(x)) * x


class Twice(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.blk, self.head = torch.nn.Conv2d(3, 8, 3, padding=1), Gate(), torch.nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blk(self.blk(self.stem(x))))


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    """The model's reference, recorded once, and its dynamo ONNX file."""
    model = Twice().eval()
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    side = Side(Artifact(EagerFormat.name, ArtifactMeta(spec="sweep50")), model, copy.deepcopy(model).double())
    path = tmp_path_factory.mktemp("sweep50") / "twice.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["input"])
    return record_reference(side, x.numpy()), path


def test_a_block_called_twice_in_a_row_feeds_no_layer_its_first_call(twice):
    """Before: `head` named at ~4e6x its floor on a correct file. After: judged on its own input, nothing named."""
    ref, path = twice
    result = isolate_onnx(ref, path, AUTO_FACTOR)[0]
    head = [layer for layer in result.layers if layer.module == "head"]
    assert head and head[0].ratio <= AUTO_FACTOR and not result.named, (result.layers, result.named)


def test_a_weight_error_after_the_block_called_twice_is_named(twice, tmp_path):
    """The head, now fed its own recorded input, still names its own weight error (one output channel x1.001)."""
    ref, path = twice
    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if i.name == "head.weight")
    array = numpy_helper.to_array(init).copy()
    array[2] *= 1.001
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    result = isolate_onnx(ref, tmp_path / "bad.onnx", AUTO_FACTOR)[0]
    assert [(layer.module, layer.channel) for layer in result.named] == [("head", 2)], result.named
