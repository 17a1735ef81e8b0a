"""Factories for tests/test_sweep31.py (and `--model tests/models_sweep31.py:<factory>`): a clip model whose output is
5-D with channels of very different loudness, one TransformerEncoderLayer over the pixels of a 1x1 conv's map, and a
model with a module called with a tensor and an int (maxvit's `WindowPartition()(x, p)`), and one that computes its
Linear through `F.linear` on tokens (swin's `attn.qkv` and `attn.proj`)."""

from __future__ import annotations

import torch
from torch import nn

CLIP_FRAMES = 4
QUIET_CHANNEL = 7
"""The clip model's quietest output channel: its weights are 1000x smaller than channel 0's."""


class QuietClip(nn.Module):
    """Two Conv3d over a clip folded into the image's channels (N x 3*T x H x W); returns the NCDHW map, its channels
    from loud (0) to quiet (QUIET_CHANNEL)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv3d(3, 16, 3, padding=1)
        self.b = nn.Conv3d(16, QUIET_CHANNEL + 1, 3, padding=1)
        with torch.no_grad():
            loudness = torch.logspace(0, -3, QUIET_CHANNEL + 1)
            self.b.weight.mul_(loudness.reshape(-1, 1, 1, 1, 1))
            self.b.bias.mul_(loudness)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, ct, h, w = x.shape
        return self.b(torch.relu(self.a(x.reshape(n, 3, ct // 3, h, w))))


class Encoder(nn.Module):
    """A 1x1 conv embedding, one TransformerEncoderLayer over the pixels as tokens, back to NCHW. Its attention calls
    `self_attn.out_proj`'s weights through `F.linear`, never the module."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 32, 1)
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        with torch.no_grad():  # a trained layer's projection has a bias; torch starts it at zero
            self.layer.self_attn.out_proj.bias.uniform_(-0.1, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed(x)
        n, c, h, w = e.shape
        t = self.layer(e.flatten(2).transpose(1, 2))
        return t.transpose(1, 2).reshape(n, c, h, w)


class Windows(nn.Module):
    """maxvit's WindowPartition in NCHW: `p` x `p` windows folded into the channels; its size is an argument."""

    def forward(self, x: torch.Tensor, p: int) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(n, c * p * p, h // p, w // p)


class Windowed(nn.Module):
    """A conv, its map cut into 2 x 2 windows by `Windows()(x, 2)`, a 1x1 conv over them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.windows = Windows()
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.windows(self.conv(x), 2))


class Mix(nn.Module):
    """tanh of the tokens, then `proj`'s weights applied through `F.linear` (the Linear module is never called)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(torch.tanh(t), self.proj.weight, self.proj.bias)


class Tokens(nn.Module):
    """A conv, its pixels as tokens, mixed by `mix` (which holds `proj`)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.mix = Mix()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        n, c, h, w = y.shape
        return self.mix(y.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, c, h, w)


def quiet_clip() -> nn.Module:
    return QuietClip().eval()


def encoder() -> nn.Module:
    return Encoder().eval()


def windowed() -> nn.Module:
    return Windowed().eval()


def tokens() -> nn.Module:
    return Tokens().eval()
