"""Factories for tests/test_hunt40.py: a tiny CNN whose scripted file has methods besides forward (`infer`, which
differs from forward; `deploy`, which changes an attribute forward reads), one whose outputs list `aux` before
`out`, and .pt2 doors (a model that branches on its batch size)."""

import torch
from torch import nn


class Net(nn.Module):
    """Two convolutions: `aux` the first's features, `out` the second's."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.second = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.eval()

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        aux = torch.relu(self.first(x))
        return aux, self.second(aux)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[1]


class WithMethods(Net):
    """Its scripted file has `infer` (the first conv's features alone) and `deploy` (doubles what forward returns)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x))) * self.gain

    @torch.jit.export
    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.first(x))

    @torch.jit.export
    def deploy(self) -> None:
        self.gain = 2.0


class AuxFirst(Net):
    """`aux` before `out`: an ONNX file of it lists aux as its output 0."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features(x)


class OutOnly(Net):
    """`out` alone, by name."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.features(x)[1]}


class ByBatch(Net):
    """Computes another function at a batch of one than at any other batch (a shape branch torch.export keeps as a
    guard, or specializes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)[1]
        if x.shape[0] == 1:  # torch.export traced at a batch of two keeps the other branch alone
            return out
        return out * 1.01


def make() -> nn.Module:
    return Net()


def with_methods() -> nn.Module:
    return WithMethods()


def aux_first() -> nn.Module:
    return AuxFirst()


def out_only() -> nn.Module:
    return OutOnly()


def by_batch() -> nn.Module:
    return ByBatch()
