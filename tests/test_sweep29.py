"""Sweep 29: users' models no sweep had tried (segmentation, video, quantization-ready builds, hand-written layers).

torchvision's r2plus1d_18 failed the layer verdict on its honest ONNX export (exit 1): its BatchNorm3d reads a Conv3d
nested one level deeper (`conv1.0.3` then `conv1.1`), and the layer verdict did not count BatchNorm3d as a norm, so
`norms_after` never paired the two; the folded node was judged as the norm alone (5.07x its own floor) or, from the
legacy exporter, as the conv alone (over 1e6x). Every 1-D and 3-D norm torch has is a norm now
(verify/explain/structure.py NORM_TYPES)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from verify.explain.rerun import isolate_onnx, norms_after, record_reference
from verify.explain.tracers import Side
from verify.judge.compare import AUTO_FACTOR


class Clip(nn.Module):
    """A Conv3d and the BatchNorm3d after it, under names no registered family pairs; two frames of a 3-channel clip
    folded into the channel axis (the tool takes one NCHW image)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Conv3d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(8)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.1, 0.1)
            self.bn.running_var.uniform_(0.5, 1.5)
            self.bn.weight.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, ct, h, w = x.shape
        return self.bn(self.proj(x.reshape(n, 3, ct // 3, h, w)))


def test_a_conv3d_and_the_batchnorm3d_folded_into_it_are_judged_together(tmp_path):
    """The legacy exporter folds `bn` into `proj` and names the node after the conv. Before, that node was judged
    against the conv's own output (`proj` 1.5e6x its own floor: exit 1 on an honest export, where the same model
    with Conv2d and BatchNorm2d passed)."""
    model = Clip().eval()
    x = torch.randn(1, 6, 8, 8)
    path = tmp_path / "clip.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=18)
    ref = record_reference(Side(None, model, copy.deepcopy(model).double()), x.numpy())
    assert norms_after(ref) == {"proj": "bn"}  # the pairing dynamo's folded node (under `bn`'s scope) reads too
    result, _ = isolate_onnx(ref, path, AUTO_FACTOR)
    (layer,) = result.layers
    assert (layer.module, layer.fused_with) == ("proj", ["bn"])
    assert layer.ratio <= AUTO_FACTOR and not result.named
