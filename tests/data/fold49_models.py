"""Users' models whose norms cannot be folded into their convs the way the floor's folded sample folds them (stop 49,
tests/test_fold49.py), and one that can."""

import torch
from torch import nn


def _statistics(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) * 2 + 0.1)
            module.weight.data.copy_(torch.randn(module.num_features, generator=generator))
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator))
    return model.eval()


class ConvReadTwice(nn.Module):
    """The conv's output is read by its norm and by the sum: folded, the sum's other term is the norm's output too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.head(self.bn(y) + y)


class SharedNorm(nn.Module):
    """One norm module called after a conv and on another tensor: folded, both calls are an Identity."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv, self.bn = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        return self.bn(self.conv(s)) + self.bn(s)


class ReadsStatistics(nn.Module):
    """A forward that reads its norm's statistics itself: folded, the norm is an Identity with none."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.bn.running_mean.view(1, -1, 1, 1)


class Plain(nn.Module):
    """conv -> norm -> relu, twice, with a residual after the second norm: every fold faithful."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + y)


def conv_read_twice() -> nn.Module:
    return _statistics(ConvReadTwice())


def shared_norm() -> nn.Module:
    return _statistics(SharedNorm())


def reads_statistics() -> nn.Module:
    return _statistics(ReadsStatistics())


def plain() -> nn.Module:
    return _statistics(Plain())
