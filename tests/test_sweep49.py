"""Sweep 49: torchvision classifiers and blocks as users' models (tests/data/sweep49_models.py,
bench/sweep49_models.py), their correct exports by both ONNX exporters and seeded one-layer bugs in their files. Each
test failed before its fix:

- a correct .pt2 of swin's shifted-window attention named `attn` at 7.3e6x its own floor (exit 1): its mask is filled
  in place (`mask[h, w] = count` into `new_zeros`), and a layer's re-run kept only the nodes that return what a later
  node reads, so the `fill_` writes were dropped and the mask re-run all zeros (rerun.py `_computing`, `_writes`); a
  layer's writes now re-run on copies of the program's own tensors, which they would have changed for its later runs
  (`run_fx_unit`)."""

from __future__ import annotations

import copy
import operator

import pytest
import torch

from exporter.artifacts import Artifact, ArtifactMeta
from exporter.formats.eager import EagerFormat
from verify.explain.rerun import isolate_fx, record_reference
from verify.explain.tracers import Side
from verify.judge.compare import AUTO_FACTOR


class Masked(torch.nn.Module):
    """swin's shifted-window mask in small: regions of a zero map filled in place with their index, rolled, added."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        mask = x.new_zeros((h, w))
        count = 0
        for rows in (slice(0, h // 2), slice(h // 2, None)):
            for cols in (slice(0, w // 2), slice(w // 2, None)):
                mask[rows, cols] = count
                count += 1
        return torch.roll(x, 1, dims=-1) + mask


class Shifted(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.masked, self.head = torch.nn.Conv2d(3, 4, 3, padding=1), Masked(), torch.nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.masked(self.conv(x)))


@pytest.fixture(scope="module")
def shifted():
    from torch.export import export

    model = Shifted().eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    side = Side(Artifact(EagerFormat.name, ArtifactMeta(spec="sweep49")), model, copy.deepcopy(model).double())
    return record_reference(side, x.numpy()), export(model, (x,)).module()


def _ratios(isolation) -> dict[str, float]:
    return {layer.module: layer.ratio for layer in isolation.layers}


def test_a_mask_filled_in_place_is_rerun_with_its_fills(shifted):
    """Before: the `fill_` nodes, which nothing reads, were left out of `masked`'s re-run: its mask all zeros, a correct
    .pt2 named `masked` at its own floor's 1e6x. After: judged within its floor, nothing named."""
    ref, module = shifted
    isolation = isolate_fx(ref, module, AUTO_FACTOR)
    assert _ratios(isolation).get("masked", float("inf")) <= AUTO_FACTOR and not isolation.named, isolation.layers


def test_a_wrong_fill_is_named(shifted):
    """The other side of the same fix: a program whose mask is written with another value is named at `masked`."""
    ref, module = shifted
    seeded = copy.deepcopy(module)
    (value,) = [n.args[1] for n in seeded.graph.nodes if n.target is torch.ops.aten.fill_.Tensor][-1:]
    (constant,) = [n.target for n in value.all_input_nodes if n.op == "get_attr"]  # the lifted count, a 0-d tensor
    with torch.no_grad():
        operator.attrgetter(constant)(seeded).add_(0.5)
    assert [layer.module for layer in isolate_fx(ref, seeded, AUTO_FACTOR).named] == ["masked"]


class Written(torch.nn.Module):
    """The mask written in place into this module's own buffer (a .pt2's unit then writes into the loaded program)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", torch.zeros(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.mask[:4, :4] = 1.0
        return x + self.mask


class Buffered(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.written, self.head = torch.nn.Conv2d(3, 4, 3, padding=1), Written(), torch.nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.written(self.conv(x)))


def test_a_layers_writes_leave_the_program_as_it_was():
    """A re-run that writes into the program's own buffer (`written`'s `fill_` into its mask) is given a copy: the
    loaded program, which the file's other runs share, keeps its values; the write is still judged (within its
    floor)."""
    from torch.export import export

    model = Buffered().eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    side = Side(Artifact(EagerFormat.name, ArtifactMeta(spec="sweep49")), model, copy.deepcopy(model).double())
    ref = record_reference(side, x.numpy())
    module = export(Buffered().eval(), (x,)).module()
    isolation = isolate_fx(ref, module, AUTO_FACTOR)
    assert _ratios(isolation).get("written", float("inf")) <= AUTO_FACTOR and not isolation.named, isolation.layers
    assert not module.written.mask.any(), module.written.mask
