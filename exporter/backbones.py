"""Backbones: torchvision builders, each of a family (exporter/families/) that owns its views.

The public entry point: `get_backbone`, `build_model`, `BACKBONES`, `VIEWS` (every family's view
names, for validating options), `list_backbones`, `register_backbone`, `BuiltModel`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exporter.families import FAMILIES, Family, View
from exporter.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from exporter.spec import ModelSpec
    from exporter.weights import Weights

__all__ = ["BACKBONES", "VIEWS", "Backbone", "BuiltModel", "View", "build_model", "family_of",
           "list_backbones", "register_backbone"]


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


def build_classifier(name: str, norm_layer: Callable[..., Any] | None) -> nn.Module:
    """The classifier as torchvision builds it, with `norm_layer` (None: the builder's own default)."""
    kwargs = {} if norm_layer is None else {"norm_layer": norm_layer}
    return get_backbone_builder(name)(**kwargs)


MISFIT_EXAMPLES = 3
"""Keys named per kind when a checkpoint does not fit: the message stays one bounded line."""


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


def _key_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """'43 unexpected keys, e.g. a, b, c; 2 missing keys, e.g. ...': bounded, whatever the checkpoint."""
    expected = model.state_dict()
    norms = {k.rsplit(".", 1)[0] for k in expected if k.endswith(".running_mean")}
    # FrozenBatchNorm2d drops num_batches_tracked when loading: not a misfit
    unexpected = [k for k in state if k not in expected
                  and not (k.endswith(".num_batches_tracked") and k.rsplit(".", 1)[0] in norms)]
    missing = [k for k in expected if k not in state]
    shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    parts = []
    kinds = ((unexpected, "unexpected key", "unexpected keys"), (missing, "missing key", "missing keys"),
             (shaped, "key of another shape", "keys of another shape"))
    for items, one, many in kinds:
        items.sort(key=lambda k: k.endswith("num_batches_tracked"))  # stable: weights first, as named
        if items:
            more = ", …" if len(items) > MISFIT_EXAMPLES else ""
            parts.append(f"{len(items)} {one if len(items) == 1 else many}, e.g. "
                         f"{', '.join(items[:MISFIT_EXAMPLES])}{more}")
    return "; ".join(parts)


def build_model(spec: ModelSpec, weights: Weights, seed: int = 0) -> BuiltModel:
    """Build `spec` with torchvision's builder and the variant's `norm_layer` (as the family builds it),
    load `weights`, apply the variant's finishing step (e.g. folding), wrap in the view. Eval mode."""
    import copy

    from exporter.errors import UsageError
    from exporter.norms import get_norm

    validate_spec(spec)
    family = family_of(spec.backbone)
    norm = get_norm(spec.norm)
    view = family.view(spec.view)
    classifier = build_classifier(spec.backbone, family.norm_layer(norm))
    state = dict(weights.state_dict)
    head = family.classifier_prefix
    if not any(k.startswith(head) for k in state):  # backbone-only checkpoints have no classifier
        state.update({k: v for k, v in classifier.state_dict().items() if k.startswith(head)})
    mismatch = _key_mismatch(classifier, state)
    if mismatch:
        raise UsageError(f"Weights {weights.source} do not fit {spec.backbone}: {mismatch}; pass weights of "
                         f"{spec.backbone}")
    classifier.load_state_dict(state)
    exact = None
    if norm.fold:
        # fold in float64, then round once: the float32 model is the exact fold, rounded
        exact_classifier = norm.finalize(classifier.double())
        classifier = copy.deepcopy(exact_classifier).float()
        exact = view.wrap(exact_classifier, weights, seed).double().eval()
    norm.finalize(classifier)
    model = view.wrap(classifier, weights, seed).eval()
    return BuiltModel(spec, model, weights, view, exact)
