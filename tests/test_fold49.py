"""Stop 49: the floor's folded sample (verify/judge/folding.py `folded_float32`) of a user's model whose norms cannot
be folded as it folds them. Pairs are found by running the model (a norm whose input is a conv's output), which cannot
see a conv output read twice, one norm module called twice, or a forward reading a norm's statistics itself. Before,
the first two folded copies computed something else (off by the output's own magnitude) and their run joined the
channel floors as a rounding sample, and the third raised on the Identity and refused a correct model (exit 2, hunt
35). A user's model's folds are now checked in float64 first (`_folds_faithfully`); a registered backbone's are
torchvision's code, unchanged."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from exporter.formats.eager import eager_artifact
from exporter.user_model import UserModelSpec, build_user_model
from verify.judge.folding import FAITHFUL_FOLD, folded_float32
from verify.judge.oracle import measure_oracle

MODELS = "tests/data/fold49_models.py"
SHAPE = (1, 3, 8, 8)
UNFAITHFUL = ["conv_read_twice", "shared_norm", "reads_statistics"]


def _model(factory: str) -> torch.nn.Module:
    from tests.data import fold49_models

    torch.manual_seed(0)
    return getattr(fold49_models, factory)()


def _example() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))


def _off(model: torch.nn.Module, folded: torch.nn.Module, x: torch.Tensor) -> float:
    """Largest |folded float32 - model float64| over the output, relative to the output's largest magnitude."""
    with torch.inference_mode():
        want = copy.deepcopy(model).double()(x.double())
        got = folded(x).double()
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("factory", UNFAITHFUL)
def test_unfaithful_folds_give_no_sample(factory):
    model, x = _model(factory), _example()
    unchecked = folded_float32(model, x)
    assert unchecked is not None  # the pairs were found as before
    if factory != "reads_statistics":  # what the unchecked copy computed: another function, not a rounding
        assert _off(model, unchecked, x) > 1e-2
    else:
        with pytest.raises(AttributeError):
            unchecked(x)
    assert folded_float32(model, x, checked=True) is None


def test_a_faithful_fold_is_kept_and_the_same():
    model, x = _model("plain"), _example()
    checked, unchecked = folded_float32(model, x, checked=True), folded_float32(model, x)
    assert checked is not None
    with torch.inference_mode():
        assert torch.equal(checked(x), unchecked(x))
    assert _off(model, checked, x) < 1e-5  # float32 rounding of a folded conv, far below the unfaithful copies'
    assert _off(model, checked, x) > FAITHFUL_FOLD  # and a float32 copy, not the float64 check itself


@pytest.mark.parametrize("factory", UNFAITHFUL)
def test_the_oracle_of_a_model_that_cannot_be_folded_measures_its_floor_without_a_sample(factory):
    """Before: reads_statistics raised (AttributeError on the folded copy, a correct model refused); the other two
    measured their channel floors with the unfaithful copy's run as a rounding sample."""
    built = build_user_model(UserModelSpec.parse(f"{MODELS}:{factory}"), 0, SHAPE)
    x = _example().numpy()
    artifact = eager_artifact(built, x.shape)
    oracle = measure_oracle(artifact, {artifact.meta.input_name: x}, None)
    assert not oracle.samples
    for name, floor in oracle.noise.items():
        held = oracle.held.get(name, floor)
        assert floor.value == held.value and np.array_equal(floor.channels, held.channels)


def test_the_oracle_of_a_model_that_folds_keeps_its_sample():
    built = build_user_model(UserModelSpec.parse(f"{MODELS}:plain"), 0, SHAPE)
    x = _example().numpy()
    artifact = eager_artifact(built, x.shape)
    assert measure_oracle(artifact, {artifact.meta.input_name: x}, None).samples
