"""A user's model whose output ignores its input (stop 49, tests/test_constant49.py)."""

import torch
from torch import nn


class Ignores(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("b", torch.arange(8, dtype=torch.float32).reshape(1, 2, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b + 0 * x.sum()


def ignores() -> nn.Module:
    return Ignores()
