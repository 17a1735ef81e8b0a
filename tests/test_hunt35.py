"""Hunt 35: passes nobody earned, attacked on paths and models not tried yet (README, the attack log)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from exporter.errors import UsageError
from exporter.user_model import COPY_HOW, COPY_WHY, ModuleSpec, UserModelSpec, build_user_model, require_faithful_copy
from verify.pytest_plugin import assert_exports_agree

MODELS = "tests/data/hunt35_models.py"
SHAPE = (1, 3, 8, 8)


class _Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _CopiesAsPlain(_Conv):
    """Deploys `conv(x) * 1.01`; its copy.deepcopy is a plain _Conv with the same weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * 1.01

    def __deepcopy__(self, memo: dict) -> nn.Module:
        plain = _Conv()
        plain.load_state_dict(self.state_dict())
        return plain


class _CopiesAsItself(_Conv):
    def __deepcopy__(self, memo: dict) -> nn.Module:
        return self


class _CopiesWithOtherWeights(_Conv):
    def __deepcopy__(self, memo: dict) -> nn.Module:
        other = _CopiesWithOtherWeights()  # drawn again: not the caller's weights
        other.conv.weight.data.mul_(1.01)
        return other


def test_plugin_refuses_a_module_whose_copy_is_another_module(tmp_path):
    """Before: the plugin verified the copy in the caller's place: `_CopiesAsPlain` (a forward 1 % off what was
    checked) passed, its own forward never run."""
    module = _CopiesAsPlain()
    with pytest.raises(pytest.fail.Exception, match=r"copy.deepcopy returns a _Conv, not a _CopiesAsPlain") as failed:
        assert_exports_agree(module, torch.randn(SHAPE), out=tmp_path)
    assert "\n" not in str(failed.value) and str(failed.value).endswith(COPY_HOW)
    assert not any(tmp_path.iterdir())  # refused before any export


def test_plugin_refuses_a_module_whose_copy_is_itself_and_leaves_it_as_it_was(tmp_path):
    """Before: the caller's own object was put in eval mode and converted to float64, then the check failed on a
    float32 input against float64 weights (`Input type (float) and bias type (double) should be the same`)."""
    module = _CopiesAsItself().train()
    with pytest.raises(pytest.fail.Exception, match="copy.deepcopy returns the module itself"):
        assert_exports_agree(module, torch.randn(SHAPE), out=tmp_path)
    assert module.training and module.conv.weight.dtype == torch.float32


def test_module_spec_refuses_a_copy_with_other_values():
    with pytest.raises(UsageError, match=r"holds other values in conv\.weight"):
        ModuleSpec.of(_CopiesWithOtherWeights()).load()


def test_factory_whose_copy_is_another_module_is_refused_at_build():
    """Before: `verify export --model ...:copies_as_good` built the float64 oracle from a plain copy and exited 1 with
    guard 3 blaming the export ("the eager model computes something its export leaves out")."""
    with pytest.raises(UsageError, match="its float64 oracle is such a copy") as refused:
        build_user_model(UserModelSpec.parse(f"{MODELS}:copies_as_good"), 0, SHAPE)
    assert "returns a Good, not a CopiesAsGood" in str(refused.value)


def _tied() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    return model


def _aliased_and_nan_buffers() -> nn.Module:
    model = nn.Conv2d(3, 3, 1)
    shared = torch.tensor([float("nan"), 1.0, 2.0])
    model.register_buffer("a", shared)
    model.register_buffer("b", shared)
    return model


@pytest.mark.parametrize("make", [
    lambda: nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3)),
    lambda: nn.utils.parametrizations.spectral_norm(nn.Conv2d(3, 4, 3)),
    lambda: nn.LazyConv2d(4, 3),
    lambda: nn.MultiheadAttention(8, 2),
    _tied,
    _aliased_and_nan_buffers,
], ids=["weight_norm", "spectral_norm", "lazy", "attention", "tied", "aliased_nan"])
def test_ordinary_copies_are_faithful(make):
    """Parametrized, lazy, tied and NaN-holding modules copy faithfully, alone and sharing their parameters as the
    oracle's copy does."""
    module = make()
    require_faithful_copy(module, copy.deepcopy(module), "m", COPY_WHY)
    shared = copy.deepcopy(module, memo={id(p): p for p in module.parameters()})
    require_faithful_copy(module, shared, "m", COPY_WHY, shared=True)


def test_a_copy_sharing_the_callers_parameters_is_refused():
    """Unasked sharing: `.double()` on the copy converts the caller's parameters in place."""
    module = _Conv()
    shared = copy.deepcopy(module, memo={id(p): p for p in module.parameters()})
    with pytest.raises(UsageError, match=r"shares the tensor conv\.weight"):
        require_faithful_copy(module, shared, "m", COPY_WHY)
