"""Backbones: torchvision builders, each of a family (exporter/families/) that owns its views.

The public entry point: `get_backbone`, `build_model`, `BACKBONES`, `VIEWS` (every family's view
names, for validating options), `list_backbones`, `register_backbone`, `BuiltModel`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError
from exporter.families import FAMILIES, MISFIT_EXAMPLES, Family, View, key_mismatch
from exporter.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from exporter.spec import ModelSpec
    from exporter.weights import Weights

__all__ = ["BACKBONES", "MISFIT_EXAMPLES", "VIEWS", "Backbone", "BuiltModel", "View", "backbone_rows", "build_model",
           "family_of", "list_backbones", "register_backbone"]


@dataclass(frozen=True)
class Backbone:
    name: str
    family: str
    builder: str
    """The torchvision.models function that builds it (it must accept `norm_layer`)."""


BACKBONES: Registry[Backbone] = Registry("backbone")
VIEWS: Registry[str] = Registry("view")
"""Every family's view names (name -> the first family's description); which a backbone has is its family's."""


def register_backbone(name: str, family: str, builder: str | None = None) -> Backbone:
    """Add a torchvision builder (default: the function of the same name) of a known family."""
    FAMILIES.get(family)
    return BACKBONES.add(name, Backbone(name, family, builder or name))


for _family in FAMILIES:
    for _view in FAMILIES.get(_family).views:
        if _view.name not in VIEWS:
            VIEWS.add(_view.name, _view.description)

for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2"):
    register_backbone(_name, family="resnet")
register_backbone("mobilenet_v3_large", family="mobilenet_v3")
register_backbone("mobilenet_v3_small", family="mobilenet_v3")


def list_backbones() -> list[str]:
    return BACKBONES.names()


def family_of(backbone: str) -> Family:
    return FAMILIES.get(BACKBONES.get(backbone).family)


def backbone_rows(backbones: Sequence[str], norms: Sequence[str], views: Sequence[str]) -> list[tuple[str, str, str]]:
    """Each backbone x each of `norms` x each of `views` its family has (backbone-major: the matrix's rows); what a
    family never builds is left out, as a whole detector's other norms are (before, every default `verify matrix`
    held mobilenet_v3_*:frozen-eps0 cells that could only fail to run). A backbone left with nothing is refused."""
    rows = []
    for backbone in backbones:
        family = family_of(backbone)
        own_views = {view.name for view in family.views}
        kept = [(backbone, n, v) for n in norms if n in family.norms for v in views if v in own_views]
        if not kept:
            raise UsageError(f"{backbone} has none of the norms {', '.join(norms)} with the views {', '.join(views)}; "
                             f"its {family.name} family has the norms {', '.join(family.norms)} and the views "
                             f"{', '.join(sorted(own_views))}")
        rows += kept
    return rows


def validate_spec(spec: ModelSpec) -> None:
    """Every name known, and the norm and view ones the backbone's family has (one-line errors)."""
    from exporter.norms import NORMS

    family = family_of(spec.backbone)
    NORMS.get(spec.norm)
    VIEWS.get(spec.view)
    family.check_norm(spec.norm)
    family.view(spec.view)


def get_backbone_builder(name: str) -> Callable[..., nn.Module]:
    """torchvision's builder for `name`, with weights=None (weights are loaded separately)."""
    from functools import partial

    import torchvision

    return partial(getattr(torchvision.models, BACKBONES.get(name).builder), weights=None)


def build_classifier(name: str, norm_layer: Callable[..., Any] | None, *, initialise: bool = True) -> nn.Module:
    """The classifier as torchvision builds it, with `norm_layer` (None: the builder's own default).
    `initialise=False`: built on the meta device, then given storage filled with NaN (integers with their least
    value), for a caller that loads all of them (`build_model`): torchvision's random init is most of a build's time
    (ResNet-50 0.25 s against 0.10 s) and every value it draws would be overwritten. A value no load sets stays that
    filler, never memory that happens to equal the weights' (`loaded_as_given`)."""
    kwargs = {} if norm_layer is None else {"norm_layer": norm_layer}
    builder = get_backbone_builder(name)
    if initialise:
        return builder(**kwargs)
    import torch

    with torch.device("meta"):
        model = builder(**kwargs)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point() or tensor.is_complex():
                tensor.fill_(float("nan"))
            elif tensor.dtype != torch.bool:
                tensor.fill_(torch.iinfo(tensor.dtype).min)
    return model


def holds_values_outside_state(model: nn.Module) -> bool:
    """Whether `model` keeps a tensor its state dict does not hold (a non-persistent buffer, a parameter or buffer
    its module leaves out of its state dict and loading, a tensor kept as a plain attribute): loading a state dict
    would leave it as built, so it cannot be built uninitialised."""
    import torch

    saved = set(model.state_dict())
    held = [*model.named_parameters(), *model.named_buffers()]  # a parameter its module leaves out of the state too
    return (any(name not in saved for name, _ in held)
            or any(isinstance(value, torch.Tensor) for module in model.modules() for value in vars(module).values()))


def loaded_as_given(model: nn.Module, state: dict[str, Any]) -> bool:
    """Whether every value `model`'s state dict saves is, after `load_state_dict(state)`, the one `state` gave (NaN
    where it gave NaN). A module whose loading skips a key it saves (its own `_load_from_state_dict`, a load hook)
    keeps what it was built with: built uninitialised (hunt 22b: a norm skipping its running_var kept `to_empty`'s
    memory, -6.4e34 in one run, blamed on the weights), it must be built with its own init instead."""
    import torch

    for key, saved in model.state_dict().items():
        given = state.get(key)
        if not isinstance(saved, torch.Tensor) or not isinstance(given, torch.Tensor):
            continue  # a key the weights lack is refused by key_mismatch; an extra state object holds no tensor
        given = given.detach().to(saved.dtype)
        if saved.shape != given.shape:
            return False
        if torch.equal(saved, given):
            continue
        same = saved == given
        if saved.is_floating_point() or saved.is_complex():
            same |= saved.isnan() & given.isnan()
        if not bool(same.all()):
            return False
    return True


@dataclass
class BuiltModel:
    spec: ModelSpec
    model: nn.Module
    weights: Weights
    view: View
    exact: nn.Module | None = None
    """float64 model when it is not simply `model.double()` (folds computed in float64)."""

    @property
    def family(self) -> Family:
        return family_of(self.spec.backbone)

    @property
    def output_names(self) -> list[str]:
        return list(self.view.outputs)

    def float64(self) -> nn.Module:
        """The model's exact maths in float64: the oracle's model."""
        import copy

        return self.exact if self.exact is not None else copy.deepcopy(self.model).double()


def require_defined_norms(model: nn.Module, source: str, norm: str) -> None:
    """Every norm's running_var + eps above 0, else a one-line UsageError: the norm divides by its square root,
    so a zero variance under eps 0 (frozen-eps0) or a negative one makes every output Inf or NaN, which the
    oracle would blame on the input."""
    for name, module in model.named_modules():
        var = getattr(module, "running_var", None)
        if var is None or not hasattr(module, "eps"):
            continue
        bad = int((var.double() + module.eps <= 0).sum())
        if bad:
            raise UsageError(
                f"Weights {source} give {name} a running_var of {float(var.min()):g} in {bad} of its {var.numel()} "
                f"channels, with eps {module.eps:g} (--norm {norm}): the norm divides by zero or a negative "
                f"variance's root; pass weights whose running_var is positive, or a norm with eps > 0")


def build_model(spec: ModelSpec, weights: Weights, seed: int = 0) -> BuiltModel:
    """Build `spec` with torchvision's builder and the variant's `norm_layer` (as the family builds it),
    load `weights`, apply the variant's finishing step (e.g. folding), wrap in the view. Eval mode."""
    import copy

    import torch

    from exporter.norms import get_norm

    validate_spec(spec)
    family = family_of(spec.backbone)
    norm = get_norm(spec.norm)
    view = family.view(spec.view)
    norm_layer = family.norm_layer(norm)
    classifier = build_classifier(spec.backbone, norm_layer, initialise=False)
    if holds_values_outside_state(classifier):  # a norm that keeps values loading would not set: its own init
        classifier = build_classifier(spec.backbone, norm_layer)
    head = family.classifier_prefix
    # no view computes the classification head: a checkpoint without one, or fine-tuned to another class
    # count, fits as well as ImageNet's; zeros of the builder's shapes are loaded in its place
    state = {k: v for k, v in weights.state_dict.items() if not k.startswith(head)}
    state.update({k: torch.zeros_like(v) for k, v in classifier.state_dict().items() if k.startswith(head)})
    mismatch = key_mismatch(classifier.state_dict(), state)
    if mismatch:
        raise UsageError(f"Weights {weights.source} do not fit {spec.backbone}: {mismatch}; pass weights of "
                         f"{spec.backbone}")
    classifier.load_state_dict(state)
    if not loaded_as_given(classifier, state):  # a norm that saves a value its loading skips: its own init
        classifier = build_classifier(spec.backbone, norm_layer)
        classifier.load_state_dict(state)
    require_defined_norms(classifier, weights.source, spec.norm)
    exact = None
    if norm.fold:
        # fold in float64, then round once: the float32 model is the exact fold, rounded
        exact_classifier = norm.finalize(classifier.double())
        classifier = copy.deepcopy(exact_classifier).float()
        exact = view.wrap(exact_classifier, weights, seed).double().eval()
    norm.finalize(classifier)
    model = view.wrap(classifier, weights, seed).eval()
    return BuiltModel(spec, model, weights, view, exact)
