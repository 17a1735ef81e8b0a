"""Factories for tests/test_hunt39.py: TorchScript files with more than one door (a second method, training mode)."""

import torch
from torch import nn


class Net(nn.Module):
    """A conv and a BatchNorm whose running statistics are far from any one batch's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        with torch.no_grad():
            self.norm.running_mean.uniform_(-0.5, 0.5)
            self.norm.running_var.uniform_(0.5, 2.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x)))


class Second(Net):
    """Its scripted file has a second method, `infer`, 1 % off `forward`."""

    @torch.jit.export
    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x) * 1.01


class FlipsWhenScripted(Net):
    """Eval when called, but torch.jit.script scripts it in train mode (its norm then uses each batch's statistics)."""

    def __prepare_scriptable__(self) -> nn.Module:
        return self.train()


def make() -> nn.Module:
    return Net()


def second() -> nn.Module:
    return Second()


def training() -> nn.Module:
    return Net().train()


def flips() -> nn.Module:
    return FlipsWhenScripted()
