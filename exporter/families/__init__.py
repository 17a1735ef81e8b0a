"""Backbone families: what one kind of torchvision network needs beyond its builder.

A family owns its views (`body`, `fpn`, `trunk`: the names may be shared, the objects are its own),
their output names, its classifier keys, which norm follows which convolution, its synthetic-weight
hints and how a detection checkpoint's keys map onto the classifier's. A backbone of a known family
is one `exporter.backbones.register_backbone(name, family=...)` line; a new family is one module in
this package (defining `FAMILY`) plus its name in `FAMILY_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError
from exporter.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from exporter.norms import NormVariant
    from exporter.weights import Weights


@dataclass(frozen=True)
class View:
    name: str
    description: str
    outputs: tuple[str, ...]
    prefix: str
    """Where the classifier's modules sit in this view (`body.` in an FPN backbone); stripped from
    module names so every view of a family lines up module by module."""
    wrap: Callable[[nn.Module, Weights, int], nn.Module]
    """(classifier with weights loaded, weights, seed) -> the view, sharing the classifier's modules."""


def _same_key(key: str) -> str:
    return key


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    views: tuple[View, ...]
    classifier_prefix: str
    """State-dict prefix of the classification head (`fc.`), absent from backbone-only checkpoints."""
    norms: tuple[str, ...]
    """The norm variants torchvision builds for this family; others are refused."""
    fold_partner: Callable[[str], str]
    """The convolution a norm follows, by canonical name (`layer1.0.bn2` -> `layer1.0.conv2`); '' if none.
    Folding finds its pairs on the traced graph; this names them in the structural diff."""
    branch_end_norms: Callable[[nn.Module], list[nn.Module]]
    """Synthetic-weight hint: the norms that end a residual branch (they get a small gamma)."""
    prepare_synthetic: Callable[[nn.Module, torch.Generator], None] | None = None
    """Synthetic-weight hint: re-initialise what torchvision's init leaves unlike a trained network,
    before the common channel scales and BN calibration (exporter/weights.py)."""
    classifier_key: Callable[[str], str] = _same_key
    """A detection body's state-dict key (after `backbone.body.`) as the classifier's key."""
    norm_layers: Mapping[str, Callable[[], Callable[..., Any] | None]] = field(default_factory=dict)
    """Per-variant `norm_layer` thunks where this family's builders differ from the variant's default."""
    detection_builders: Mapping[str, str] = field(default_factory=dict)
    """torchvision detection builders whose `.backbone` our `fpn` view reproduces, by backbone."""

    def view(self, name: str) -> View:
        for view in self.views:
            if view.name == name:
                return view
        raise UsageError(f"The {self.name} family has no view {name!r}; choose one of: "
                         f"{', '.join(v.name for v in self.views)}")

    def check_norm(self, name: str) -> None:
        if name not in self.norms:
            raise UsageError(f"The {self.name} family has no norm variant {name!r} (torchvision never builds "
                             f"it for {self.name}); choose one of: {', '.join(self.norms)}")

    def norm_layer(self, variant: NormVariant) -> Callable[..., Any] | None:
        """What to pass to the builder as `norm_layer`; None keeps the builder's own default."""
        return self.norm_layers.get(variant.name, variant.make_layer)()


FAMILIES: Registry[Family] = Registry("backbone family")
FAMILY_MODULES = ("resnet", "mobilenet_v3")  # one name per module of this package


def register_family(family: Family) -> Family:
    return FAMILIES.add(family.name, family)


MISFIT_EXAMPLES = 3
"""Keys named per kind when a checkpoint does not fit: the message stays one bounded line."""


def key_mismatch(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str:
    """'43 unexpected keys, e.g. a, b, c; 2 missing keys, e.g. ...': bounded, whatever the checkpoint; '' if it fits."""
    norms = {k.rsplit(".", 1)[0] for k in expected if k.endswith(".running_mean")}
    # FrozenBatchNorm2d drops num_batches_tracked when loading: not a misfit
    unexpected = [k for k in state if k not in expected
                  and not (k.endswith(".num_batches_tracked") and k.rsplit(".", 1)[0] in norms)]
    missing = [k for k in expected if k not in state]
    shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    # load_state_dict would cast integers into a float weight: a checkpoint of counts, not of weights
    typed = [f"{k} {str(state[k].dtype).removeprefix('torch.')}" for k, v in expected.items()
             if k in state and v.is_floating_point() and not state[k].is_floating_point()]
    parts = []
    kinds = ((unexpected, "unexpected key", "unexpected keys"), (missing, "missing key", "missing keys"),
             (shaped, "key of another shape", "keys of another shape"),
             (typed, "integer key for a float weight", "integer keys for float weights"))
    for items, one, many in kinds:
        items.sort(key=lambda k: k.endswith("num_batches_tracked"))  # stable: weights first, as named
        if items:
            more = ", …" if len(items) > MISFIT_EXAMPLES else ""
            parts.append(f"{len(items)} {one if len(items) == 1 else many}, e.g. "
                         f"{', '.join(items[:MISFIT_EXAMPLES])}{more}")
    return "; ".join(parts)


def load_fpn_weights(model: nn.Module, weights: Weights) -> None:
    """Load a detection checkpoint's FPN weights into `model.fpn`, if the checkpoint had any."""
    if "fpn" not in weights.extra:
        return
    mismatch = key_mismatch(model.fpn.state_dict(), weights.extra["fpn"])
    if mismatch:
        raise UsageError(f"The FPN weights in {weights.source} do not fit this FPN: {mismatch}; pass a checkpoint "
                         "of the detector this view reproduces, or a backbone-only one")
    model.fpn.load_state_dict(weights.extra["fpn"])


def make_trunk(children: list[tuple[str, nn.Module]], output: str) -> nn.Module:
    """A Sequential of the classifier's own children (their names kept, so its modules line up with
    the other views'), returning its result as `{output: x}`."""
    from collections import OrderedDict

    return _trunk_class()(OrderedDict(children), output)


_TRUNK: list[type] = []


def _trunk_class() -> type:
    if not _TRUNK:  # defined once, on first use, so torch is imported only when building
        from torch import Tensor, nn

        class Trunk(nn.Sequential):
            def __init__(self, children: Any, output: str) -> None:
                super().__init__(children)
                self.output_name = output  # TorchScript infers str (a class annotation would be a string here)

            def forward(self, x: Tensor) -> dict[str, Tensor]:
                for module in self:
                    x = module(x)
                return {self.output_name: x}

        _TRUNK.append(Trunk)
    return _TRUNK[0]


for _module in FAMILY_MODULES:
    register_family(importlib.import_module(f"{__name__}.{_module}").FAMILY)
