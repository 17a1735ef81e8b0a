"""Hunt 34: the first divergence (`explain` without `--isolate`) named at the layer that diverges. Each test failed
before its fix:

- in a legacy ONNX file, whose exporter folds a BatchNorm into the conv before it (the norm has no value of its own),
  an error in a later conv was named at the earlier norm ("bn, computed with conv2") where `--isolate` names the conv;
  an eval-mode Dropout the exporter drops was named the same way; and an error in the folded conv itself did not say
  that the norm is computed with it, as a dynamo file of the same model says (localize.py `covered`)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from exporter.artifacts import Artifact, ArtifactMeta
from exporter.formats.eager import EagerFormat
from exporter.formats.onnx import OnnxFormat
from tests.data.hunt33_models import build
from tests.helpers import ONE_CHANNEL_ERROR
from verify.explain.localize import Divergence, localise
from verify.explain.sides import load_side
from verify.explain.tracers import Side
from verify.judge.compare import AUTO_FACTOR


class _Dropped(nn.Module):
    """A conv, an eval-mode Dropout (no node in the file: no value), a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.drop = nn.Conv2d(3, 8, 3, padding=1), nn.Dropout(0.2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.drop(self.conv1(x)))


def _dropped() -> nn.Module:
    torch.manual_seed(0)
    return _Dropped().eval()


MODELS = {"folded-norm": (lambda: build("dilated"), (1, 3, 12, 12)), "dropped-dropout": (_dropped, (1, 3, 8, 8))}


@pytest.fixture(scope="module", params=list(MODELS))
def legacy(request, tmp_path_factory):
    """(model, input, its legacy ONNX file: conv1's value stands for the module after it, which has none)."""
    import onnx

    factory, shape = MODELS[request.param]
    model, x = factory(), torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("hunt34") / "model.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=18)
    names = {n.name.strip("/").split("/")[0] for n in onnx.load(str(path)).graph.node}
    assert {"conv1", "conv2"} <= names and not names & {"bn", "drop"}, names  # the premise: nothing under the middle
    return model, x, path


def _seeded(model: nn.Module, path: Path, conv: str) -> Path:
    """The file with output channel 1 of `conv`'s weight ONE_CHANNEL_ERROR off (found by its folded or own values)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path))
    (node,) = [n for n in graph.graph.node if n.op_type == "Conv" and n.name.startswith(f"/{conv}/")]
    (init,) = [i for i in graph.graph.initializer if i.name == node.input[1]]
    array = numpy_helper.to_array(init).copy()
    array[1] *= 1 + ONE_CHANNEL_ERROR
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    out = path.with_name(f"{conv}.onnx")
    onnx.save(graph, str(out))
    return out


def _first(model: nn.Module, x: torch.Tensor, path: Path) -> Divergence | None:
    side = Side(Artifact(EagerFormat.name, ArtifactMeta(spec="hunt34")), model, copy.deepcopy(model).double())
    return localise(side, load_side(Artifact(OnnxFormat.name, ArtifactMeta(), path)), x.numpy(), AUTO_FACTOR) \
        .divergence


def test_a_later_conv_is_named_not_the_module_folded_before_it(legacy):
    """Before: 'bn (computed with conv2)' for dilated's conv2 (se's `bn1` alike), 'drop (computed with conv2)' where
    the Dropout is dropped. After: conv2, alone."""
    model, x, path = legacy
    found = _first(model, x, _seeded(model, path, "conv2"))
    assert found is not None and (found.module, found.fused_with) == ("conv2", []), found
    assert found.ratio is not None and found.ratio > AUTO_FACTOR


def test_the_folded_conv_is_named_with_its_norm(legacy):
    """Before: an error in the conv a legacy file folded its norm into was named `conv1` alone (the dynamo file of the
    same model says 'conv1, computed with bn'). After: with the norm, or alone where the module after it computes
    nothing (a Dropout)."""
    model, x, path = legacy
    found = _first(model, x, _seeded(model, path, "conv1"))
    names = dict(model.named_children())
    norm = [name for name, module in names.items() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    assert found is not None and (found.module, found.fused_with) == ("conv1", norm), found


def test_the_honest_file_names_nothing(legacy):
    model, x, path = legacy
    assert _first(model, x, path) is None
