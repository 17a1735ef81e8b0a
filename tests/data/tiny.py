"""Factories for `--model tests/data/tiny.py:<factory>` (tests/test_user_model.py): a small CNN returning
a tensor, a dict or a tuple; one with its own example input; one weight perturbed; and factories that
fail on purpose. The loader seeds torch's RNG, so every factory builds the same weights each time."""

import functools

import torch
from torch import nn


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class TinyNet(nn.Module):
    """A stem and two strided stages; returns the stride-4 features as one tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _stage(3, 8, 1)
        self.stage1 = _stage(8, 16, 2)
        self.stage2 = _stage(16, 32, 2)
        norms = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        with torch.no_grad():  # statistics like a trained network's, not the identity of a fresh BN
            for norm in norms:
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.2, 0.2)
                norm.momentum = None  # one calibration pass sets the running statistics
            self.train()
            self.stage2(self.stage1(self.stem(torch.randn(8, 3, 32, 32))))
            self.eval()
            for norm in norms:
                norm.momentum = 0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage2(self.stage1(self.stem(x)))


class TinyDict(TinyNet):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stride2 = self.stage1(self.stem(x))
        return {"stride2": stride2, "stride4": self.stage2(stride2)}


class TinyTuple(TinyNet):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stride2 = self.stage1(self.stem(x))
        return stride2, self.stage2(stride2)


class Float32Inside(TinyNet):
    """Casts its input to float32 first, as preprocessing code often does: it cannot run in float64."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage2(self.stage1(self.stem(x.to(torch.float32))))


def make() -> nn.Module:
    return TinyNet()


def make_dict() -> nn.Module:
    return TinyDict()


def make_tuple() -> nn.Module:
    return TinyTuple()


EXAMPLE_SHAPE = (2, 3, 40, 48)


def make_with_example() -> tuple[nn.Module, torch.Tensor]:
    return TinyDict(), torch.randn(EXAMPLE_SHAPE)


PERTURBED = "stage1.0"
"""The module whose weight make_perturbed changes."""


def make_perturbed() -> nn.Module:
    """make() with one weight of one convolution changed by 0.1 %."""
    model = TinyNet()
    with torch.no_grad():
        model.stage1[0].weight[5, 2, 1, 1] *= 1.001
    return model


def make_float32_only() -> nn.Module:
    return Float32Inside()


def raises() -> nn.Module:
    raise RuntimeError("cannot find the checkpoint")


def not_a_module() -> dict:
    return {"weights": 1}


NOT_CALLABLE = 42


class Unscriptable(TinyNet):
    """Runs its stages through functools.reduce and a lambda: TorchScript cannot script it, tracing can."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functools.reduce(lambda h, stage: stage(h), (self.stem, self.stage1, self.stage2), x)


def make_unscriptable() -> nn.Module:
    return Unscriptable()
