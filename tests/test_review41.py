"""Review 41 (of hunts 32-34, newuser 48/48b and SSD300). Each test failed before its fix:

- a module returning two tensors of two shapes (`(y, y.amax(3))`) is recorded by its first since hunt 33; the file's
  value at its last op is the other one, and the layer reading that one was fed the first: a correct file named an
  AdaptiveAvgPool2d at 2.7e6x its floor in a legacy and a dynamo ONNX file and a .pt2 (rerun.py `recorded_call`'s
  `firsts`: such a call is no layer's input; the layer reads its own recorded input, as before hunt 33);
- a Dropout the legacy exporter drops after a BatchNorm it folds into the conv before them was named for the next
  conv's error (`drop`, fused with conv2 and bn2): hunt 34 kept only the one value-less call right after a value
  from being named (localize.py: every value-less leaf call after it that the value stands for);
- a registered detector head's anchor table (a buffer) and a FrozenBatchNorm2d's calibrated statistics, the same in
  every process, were refused as 'values drawn when the registration built it' (detectors.py `_refuse_drawn_tensors`
  judges parameters only)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from exporter.artifacts import Artifact, ArtifactMeta
from exporter.formats.eager import EagerFormat
from exporter.formats.onnx import OnnxFormat
from tests.helpers import ONE_CHANNEL_ERROR, varied_norm
from verify.explain.localize import localise
from verify.explain.rerun import isolate_fx, isolate_onnx, record_reference
from verify.explain.sides import load_side
from verify.explain.tracers import Side
from verify.judge.compare import AUTO_FACTOR


class _Two(nn.Module):
    """A conv's output and its max over the width: two tensors of two shapes, the second computed last."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, y.amax(3, keepdim=True)


class _ReadsSecond(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.two, self.pool, self.conv2 = _Two(), nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.two(x)
        return self.conv2(a).mean() + self.pool(b)


@pytest.fixture(scope="module")
def second():
    torch.manual_seed(0)
    model, x = _ReadsSecond().eval(), torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    side = Side(Artifact(EagerFormat.name, ArtifactMeta(spec="review41")), model, copy.deepcopy(model).double())
    return model, x, record_reference(side, x.numpy())


def test_a_layer_reading_a_calls_second_tensor_is_never_fed_its_first(second, tmp_path: Path):
    from torch.export import export

    model, x, ref = second
    path = tmp_path / "honest.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=18)
    onnx, _ = isolate_onnx(ref, path, AUTO_FACTOR)
    fx = isolate_fx(ref, export(model, (x,)).module(), AUTO_FACTOR)
    for isolation in (onnx, fx):
        judged = {layer.module: layer.ratio for layer in isolation.layers}
        assert judged.get("pool", float("inf")) <= AUTO_FACTOR, isolation.layers
        assert not isolation.named and not isolation.unrunnable, isolation


class _Dropped(nn.Module):
    """conv1, bn1 (folded into conv1) and a Dropout (dropped) by the legacy exporter, then conv2 and bn2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.drop = nn.Conv2d(3, 8, 3, padding=1), varied_norm(nn.BatchNorm2d(8)), nn.Dropout()
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), varied_norm(nn.BatchNorm2d(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv2(torch.relu(self.drop(self.bn1(self.conv1(x)))))))


def test_a_dropped_dropout_after_a_folded_norm_is_never_named_for_the_next_convs_error(tmp_path: Path):
    torch.manual_seed(0)
    model, x = _Dropped().eval(), torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    seeded = copy.deepcopy(model)
    with torch.no_grad():
        seeded.conv2.weight[3] *= 1 + ONE_CHANNEL_ERROR
    path = tmp_path / "seeded.onnx"
    torch.onnx.export(seeded, (x,), str(path), dynamo=False, opset_version=18)
    side = Side(Artifact(EagerFormat.name, ArtifactMeta(spec="review41")), model, copy.deepcopy(model).double())
    found = localise(side, load_side(Artifact(OnnxFormat.name, ArtifactMeta(), path)), x.numpy(),
                     AUTO_FACTOR).divergence
    assert found is not None and found.module == "conv2", found


def test_a_registered_heads_buffers_are_kept_its_drawn_parameters_refused():
    from torchvision.ops.misc import FrozenBatchNorm2d

    from exporter.errors import UsageError
    from exporter.families.detectors import own_options

    class Anchored(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.register_buffer("anchors", torch.tensor([[10.0, 13.0], [16.0, 30.0], [33.0, 23.0]]))

    norm = FrozenBatchNorm2d(4)
    norm.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.4]))
    norm.running_var.copy_(torch.tensor([0.5, 2.0, 1.5, 0.8]))
    owned = own_options({"box_head": Anchored(), "norm": nn.Sequential(nn.Conv2d(4, 4, 1), norm)})
    assert torch.equal(owned["box_head"].anchors, Anchored().anchors)
    assert torch.equal(owned["norm"][1].running_mean, norm.running_mean)
    assert torch.equal(owned["norm"][1].running_var, norm.running_var)

    class Drawn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.rand(4) + 0.5)

    with pytest.raises(UsageError, match=r"box_head\.scale holds values drawn"):
        own_options({"box_head": Drawn()})
