"""Hunt 33's small user models of kinds no hunt tried before (each exports in under a second)."""

from __future__ import annotations

import torch
from torch import nn

from tests.helpers import varied_norm

_stats = varied_norm


class SqueezeExcite(nn.Module):
    """A residual block with a squeeze-excite gate."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = _stats(nn.BatchNorm2d(8))
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(8, 4, 1)
        self.fc2 = nn.Conv2d(4, 8, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        z = self.conv2(y)
        s = self.gate(self.fc2(torch.relu(self.fc1(self.pool(z)))))
        return torch.relu(y + z * s)


class Shuffle(nn.Module):
    """A grouped conv, a channel shuffle (reshape, transpose, reshape), a grouped conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.conv2 = nn.Conv2d(8, 8, 1, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        n, c, h, w = y.shape
        y = y.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.conv2(y)


class PixelShuf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.shuffle(self.conv1(x)))


class OddPools(nn.Module):
    """Adaptive pools to sizes that do not divide the input, then a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.avg = nn.AdaptiveAvgPool2d((3, 5))
        self.max = nn.AdaptiveMaxPool2d((2, 3))
        self.fc = nn.Linear(36, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.max(self.avg(self.conv(x))).flatten(1))


class InstancePrelu(nn.Module):
    """InstanceNorm2d (affine), PReLU with a slope a channel, Hardswish."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.prelu = nn.PReLU(8, init=0.2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.Hardswish()
        with torch.no_grad():
            self.inorm.weight.uniform_(0.5, 1.5)
            self.inorm.bias.uniform_(-0.2, 0.2)
            self.prelu.weight.uniform_(0.1, 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.prelu(self.inorm(self.conv1(x)))))


class Dilated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=2, dilation=2)
        self.bn = _stats(nn.BatchNorm2d(8))
        self.conv2 = nn.Conv2d(8, 8, 3, padding=3, dilation=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


class AudioStem(nn.Module):
    """A Conv1d stem over a waveform (N x 1 x T), BatchNorm1d, GELU, a strided Conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 9, stride=2, padding=4)
        self.bn = _stats(nn.BatchNorm1d(8))
        self.act = nn.GELU()
        self.conv2 = nn.Conv1d(8, 8, 5, stride=2, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.bn(self.conv1(x))))


class Attend(nn.Module):
    """`nn.MultiheadAttention` fed by a functional flatten/transpose (`functional`) or by a LayerNorm, returning its
    output alone or with its weights (`weights`: two tensors out)."""

    def __init__(self, functional: bool = True, weights: bool = True) -> None:
        super().__init__()
        self.functional, self.weights = functional, weights
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.norm = nn.Identity() if functional else nn.LayerNorm(16)
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.stem(x).flatten(2).transpose(1, 2)
        if not self.functional:
            t = self.norm(t)
        out, weights = self.mha(t, t, t, need_weights=self.weights)
        return self.head(out) + weights.mean() if weights is not None else self.head(out)


MODELS = {"se": (SqueezeExcite, (1, 3, 8, 8)), "shuffle": (Shuffle, (1, 4, 8, 8)),
          "pixelshuffle": (PixelShuf, (1, 3, 6, 6)), "oddpools": (OddPools, (1, 3, 11, 13)),
          "instprelu": (InstancePrelu, (1, 3, 8, 8)), "dilated": (Dilated, (1, 3, 12, 12)),
          "audio": (AudioStem, (1, 1, 64)), "attend": (Attend, (1, 3, 8, 8))}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name][0]().eval()


def attend(functional: bool = True, weights: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return Attend(functional, weights).eval()
