"""Factories for tests/test_hunt35.py: users' models whose forward depends on more than their input."""

import torch
from torch import nn


class _Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)


class Mutating(_Base):
    """Scales its own weight in place at every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.conv.weight.mul_(1.001)
        return self.conv(x)


class StatsDrift(_Base):
    """An eval-mode BatchNorm whose running mean the forward moves by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.bn.running_mean.add_(0.01)
        return self.bn(self.conv(x))


class BatchBranch(_Base):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if x.shape[0] == 1 else y * 1.01


class BatchMix(_Base):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + 0.5 * y.mean(0, keepdim=True)


class Threads(_Base):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * 1.01 if torch.get_num_threads() == 1 else y


class Inference(_Base):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * 1.01 if torch.is_inference_mode_enabled() else y


class Layout(_Base):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * 1.01 if not x.is_contiguous() else y


class HookFirstCall(_Base):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not getattr(self, "_hooked", False):
            self._hooked = True
            self.conv.register_forward_hook(lambda module, args, out: out * 1.01)
        return self.conv(x)


class NanSome(_Base):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.sqrt(x.mean())


def mutating() -> nn.Module:
    return Mutating()


def stats_drift() -> nn.Module:
    return StatsDrift()


def batch_branch() -> nn.Module:
    return BatchBranch()


def batch_mix() -> nn.Module:
    return BatchMix()


def threads() -> nn.Module:
    return Threads()


def inference() -> nn.Module:
    return Inference()


def layout() -> nn.Module:
    return Layout()


def hook_first_call() -> nn.Module:
    return HookFirstCall()


def nan_some() -> nn.Module:
    return NanSome()


class MutatingData(_Base):
    """Scales its own weight in place at every call, through `.data` (no grad mode change traced)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.conv.weight.data.mul_(1.001)
        return self.conv(x)


def mutating_data() -> nn.Module:
    return MutatingData()


class Good(_Base):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class CopiesAsGood(_Base):
    """Deploys `conv(x) * 1.01`; its copy.deepcopy is a plain Good with the same weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * 1.01

    def __deepcopy__(self, memo: dict) -> nn.Module:
        good = Good()
        good.load_state_dict(self.state_dict())
        return good


def copies_as_good() -> nn.Module:
    return CopiesAsGood()


class NanPart(_Base):
    """NaN wherever the conv is negative: about half of every output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.conv(x))


def nan_part() -> nn.Module:
    return NanPart()
