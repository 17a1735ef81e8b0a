"""Factories for `--model tests/data/untrusted.py:<factory>` (tests/test_trust.py): models that would hand the
verifier a pass nobody earned (random, stuck in train mode, writing into their input, computing another function
in float64) and models whose code ends, crashes or hangs the process running it."""

import os
import signal
import time

import torch
from torch import nn

try:
    from tests.data.tiny import TinyNet
except ImportError:  # from the command line: the loader puts this file's folder on the path
    from tiny import TinyNet


class Jitter(TinyNet):
    """Deterministic weights, plus a little noise on every call (e.g. a leftover augmentation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y + 1e-4 * y.abs().max() * torch.randn_like(y)


class StuckInTraining(TinyNet):
    """Overrides train() so that eval() never takes: its dropout stays active."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.1)

    def train(self, mode: bool = True) -> "StuckInTraining":
        return super().train(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(super().forward(x))


class ScalesInput(TinyNet):
    """Writes into its argument: the next runtime would see another input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(1.5)
        return super().forward(x)


class OtherInFloat64(TinyNet):
    """Deterministic, but another function in float64: its "floor" is a real difference, not rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y * 1.01 if y.dtype == torch.float64 else y


class ExitsInForward(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        os._exit(0)


def jitter() -> nn.Module:
    return Jitter()


def stuck_in_training() -> nn.Module:
    return StuckInTraining()


def scales_input() -> nn.Module:
    return ScalesInput()


def other_in_float64() -> nn.Module:
    return OtherInFloat64()


def exits_in_forward() -> nn.Module:
    return ExitsInForward()


def exits_while_building() -> nn.Module:
    os._exit(0)


def exits_with_error_code() -> nn.Module:
    os._exit(3)


def kills_itself() -> nn.Module:
    os.kill(os.getpid(), signal.SIGKILL)
    return TinyNet()


def raises_system_exit() -> nn.Module:
    raise SystemExit(0)


def sleeps() -> nn.Module:
    time.sleep(3600)
    return TinyNet()
