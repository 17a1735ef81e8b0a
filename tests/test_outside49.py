"""Stop 49: where the ops in no layer are. A module's own forward calling a functional op (`F.interpolate` in a U-Net
block) puts that op in no layer: sweep 49b's Resize edits failed the outputs and named no layer, and the report said
only "6 ops outside every layer (Concat, MaxPool, Resize) were not re-run". The report now names the modules whose own
forward holds them (verify/judge/layers.py `outside_text`; rerun.py `innermost_scope`), in ONNX, .pt2 and
TorchScript files alike."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from exporter.artifacts import Artifact, ArtifactMeta
from exporter.formats.eager import EagerFormat
from verify.explain.rerun import isolate_fx, isolate_onnx, jit_outside, record_reference
from verify.explain.tracers import Side
from verify.judge.compare import AUTO_FACTOR
from verify.judge.layers import outside_text


class Join(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], 1)


class Up(torch.nn.Module):
    """A decoder block: its own forward upsamples, then a child reading two tensors (whose inputs the reference does
    not record, so the upsample is in no layer: a parent's own ops are a layer only between recorded values, stop 50)
    joins it with `up + 1`, and its conv reads that."""

    def __init__(self) -> None:
        super().__init__()
        self.join, self.conv = Join(), torch.nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(self.join(up, up + 1.0))


class Decoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.up = torch.nn.Conv2d(3, 4, 3, padding=1), Up()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.stem(x))


@pytest.fixture(scope="module")
def decoder():
    model = Decoder().eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    side = Side(Artifact(EagerFormat.name, ArtifactMeta(spec="outside49")), model, copy.deepcopy(model).double())
    return model, x, record_reference(side, x.numpy())


def test_an_onnx_files_upsample_is_placed_in_its_blocks_forward(decoder, tmp_path):
    model, x, ref = decoder
    path = tmp_path / "decoder.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"], output_names=["out"])
    result = isolate_onnx(ref, path, AUTO_FACTOR)[0]
    assert "Resize" in result.outside and len(result.outside_in) == len(result.outside)
    assert dict(zip(result.outside, result.outside_in))["Resize"] == "up"
    assert "were not re-run (in the forward of up): only the outputs' verdict" in outside_text(result)


def test_a_programs_upsample_is_placed_in_its_blocks_forward(decoder):
    model, x, ref = decoder
    program = torch.export.export(model, (x,)).module()
    result = isolate_fx(ref, program, AUTO_FACTOR)
    upsample = [where for op, where in zip(result.outside, result.outside_in, strict=True) if "upsample" in op]
    assert upsample == ["up"], (result.outside, result.outside_in)
    assert "(in the forward of up)" in outside_text(result)


def test_a_scripted_blocks_own_ops_are_placed_in_it(decoder):
    model, _, _ = decoder
    where: list[str] = []
    ops = jit_outside(torch.jit.script(model), where)
    assert len(where) == len(ops) and dict(zip(ops, where)) == {"interpolate": "up", "add": "up"}, (ops, where)
