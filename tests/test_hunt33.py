"""Hunt 33: what hunt 31 left of culprit naming, and user models nobody tried (squeeze-excite, channel shuffle,
PixelShuffle, adaptive pools to odd sizes, InstanceNorm2d + PReLU + Hardswish, dilated convs, a Conv1d audio stem;
tests/data/hunt33_models.py). Each test failed before its fix:

- `nn.MultiheadAttention` fed by a functional `flatten(2).transpose(1, 2)` was not re-run in either exporter's ONNX
  file nor a .pt2 (both exporters fold the transpose into attention's own first Transpose): its in-projection's bug
  was named nowhere (rerun.py `_moved_onnx`, `_moved_fx`);
- `mha(t, t, t)` with need_weights=True (two tensors out) was never re-run (tracers.py `tensor_output`, rerun.py
  `Reference.firsts`);
- `explain` without `--isolate` named the layer after attention for an in-projection error (tracers.py
  `record_outputs` now records `(out, None)` as `out`);
- a correct .pt2 of an AdaptiveMaxPool2d named `max` at 2.4e8x its floor: the pool's unused indices, its scope's last
  node, were judged as its values (rerun.py `fx_units`, tracers.py `FxTracer`)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.artifacts import Artifact, ArtifactMeta
from exporter.formats.eager import EagerFormat
from exporter.formats.onnx import OnnxFormat
from tests.data.hunt33_models import attend, build
from tests.helpers import ONE_CHANNEL_ERROR
from verify.explain.localize import localise
from verify.explain.rerun import isolate_fx, isolate_onnx, record_reference
from verify.explain.sides import load_side
from verify.explain.tracers import Side
from verify.judge.compare import AUTO_FACTOR

VALUE_COLUMN = 40
"""A column of the value part of the in-projection (embedding 16: query 0-15, key 16-31, value 32-47)."""


def _side(model: torch.nn.Module) -> Side:
    return Side(Artifact(EagerFormat.name, ArtifactMeta(spec="hunt33")), model, copy.deepcopy(model).double())


def _input(shape=(1, 3, 8, 8)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def _legacy(model: torch.nn.Module, x: torch.Tensor, folder: Path, name: str, edit: bool) -> Path:
    """The model's legacy ONNX file; with `edit`, its in-projection's value column 0.1 % off."""
    import onnx
    from onnx import numpy_helper

    path = folder / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=18)
    if edit:
        graph = onnx.load(str(path))
        want = model.mha.in_proj_weight.detach().numpy().T  # the legacy MatMul's (16, 48) initializer
        (init,) = [i for i in graph.graph.initializer if np.array_equal(numpy_helper.to_array(i), want)]
        array = numpy_helper.to_array(init).copy()
        array[:, VALUE_COLUMN] *= 1 + ONE_CHANNEL_ERROR
        init.CopyFrom(numpy_helper.from_array(array, init.name))
        onnx.save(graph, str(path))
    return path


def _layers(isolation) -> dict[str, float]:
    return {layer.module: layer.ratio for layer in isolation.layers}


@pytest.mark.parametrize("weights", [False, True], ids=["out-only", "with-weights"])
def test_attention_fed_by_a_functional_transpose_is_rerun_from_an_onnx_file(tmp_path, weights):
    """Before: `mha` (fed `stem(x).flatten(2).transpose(1, 2)`, the transpose folded into its own first Transpose) was
    'not re-run', honest or not: a 0.1 % error in its value projection named nothing. After: re-run from the stem's
    recorded output through the file's own Reshape, within its floor when honest, named first when edited."""
    model, x = attend(functional=True, weights=weights), _input()
    ref = record_reference(_side(model), x.numpy())
    honest, _ = isolate_onnx(ref, _legacy(model, x, tmp_path, "honest", False), AUTO_FACTOR)
    assert "mha" in _layers(honest) and not honest.skipped and not honest.unrunnable, honest
    assert not honest.named, honest.layers
    seeded, _ = isolate_onnx(ref, _legacy(model, x, tmp_path, "seeded", True), AUTO_FACTOR)
    assert [layer.module for layer in seeded.named] == ["mha"], seeded.layers


def test_attention_returning_its_weights_is_rerun():
    """Before: `mha(t, t, t)` with need_weights=True returns (out, weights), no tensor recorded: never re-run. After:
    judged on `out`, the honest program within its floor, an edited in-projection named (a .pt2's module, fed through a
    functional transpose too)."""
    from torch.export import export

    model, x = attend(functional=True, weights=True), _input()
    ref = record_reference(_side(model), x.numpy())
    module = export(model, (x,)).module()
    honest = isolate_fx(ref, module, AUTO_FACTOR)
    assert "mha" in _layers(honest) and not honest.skipped and not honest.named, honest
    with torch.no_grad():
        module.mha.in_proj_weight[VALUE_COLUMN] *= 1 + ONE_CHANNEL_ERROR
    assert [layer.module for layer in isolate_fx(ref, module, AUTO_FACTOR).named] == ["mha"]


def test_explain_names_attention_not_the_layer_after_it(tmp_path):
    """Before: `mha(t, t, t, need_weights=False)` returns (out, None), no value recorded, and the first divergence of an
    in-projection error was the layer after it (hunt 31: the Flatten, 193x). After: `mha`."""
    model, x = attend(functional=False, weights=False), _input()
    path = _legacy(model, x, tmp_path, "seeded", True)
    found = localise(_side(model), load_side(Artifact(OnnxFormat.name, ArtifactMeta(), path)), x.numpy(),
                     AUTO_FACTOR).divergence
    assert found is not None and found.module == "mha", found


def test_a_max_pools_unused_indices_are_not_its_value():
    """Before: torch.export's AdaptiveMaxPool2d gives (values, indices), its last node the unused indices: a correct
    .pt2 named `max` at 2.4e8x its own floor, and `explain` named it too. After: judged on its values."""
    from torch.export import export

    model, x = build("oddpools"), _input((1, 3, 11, 13))
    ref = record_reference(_side(model), x.numpy())
    isolation = isolate_fx(ref, export(model, (x,)).module(), AUTO_FACTOR)
    assert _layers(isolation).get("max", np.inf) <= AUTO_FACTOR and not isolation.named, isolation.layers


class _Pair(torch.nn.Module):
    """A module returning two tensors: of one shape (`(y * 2, y + 1)`), or of two (`(y * 2, mean of y + 1)`)."""

    def __init__(self, same: bool):
        super().__init__()
        self.conv, self.same = torch.nn.Conv2d(3, 4, 3, padding=1), same

    def forward(self, x):
        y = self.conv(x)
        return y * 2.0, (y + 1.0 if self.same else (y + 1.0).mean(1, keepdim=True))


class _Paired(torch.nn.Module):
    def __init__(self, same: bool):
        super().__init__()
        self.pair, self.head = _Pair(same), torch.nn.Conv2d(8 if same else 5, 4, 1)

    def forward(self, x):
        a, b = self.pair(x)
        return self.head(torch.cat([b, a], 1))


@pytest.mark.parametrize("same", [True, False], ids=["one-shape", "two-shapes"])
def test_a_module_returning_two_tensors_is_never_judged_on_the_other(tmp_path, same):
    """Review of hunt 33: a tuple of tensors was recorded by its first, and a module returning two of one shape was
    re-run: its float32 evaluation crashed on the tuple ('tuple' object has no attribute 'numpy', `explain --isolate`
    exit 1 on a correct file), and a file's value for it could be the other tensor. Which tensor the file's value is,
    only a shape can tell: such a module is skipped, its leaf layers judged, nothing named in a correct file."""
    from torch.export import export

    torch.manual_seed(0)
    model, x = _Paired(same).eval(), _input((1, 3, 16, 16))
    ref = record_reference(_side(model), x.numpy())
    onnx, _ = isolate_onnx(ref, _legacy(model, x, tmp_path, "honest", False), AUTO_FACTOR)
    fx = isolate_fx(ref, export(model, (x,)).module(), AUTO_FACTOR)
    for isolation in (onnx, fx):
        assert {"pair.conv", "head"} <= set(_layers(isolation)) and "pair" not in _layers(isolation), isolation.layers
        assert isolation.skipped == ["pair"] and not isolation.unrunnable and not isolation.named, isolation
