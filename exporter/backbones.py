"""Backbones (the ResNet family, built by torchvision's own functions) and views of them.

Views:
- `body`:  layer1..layer4 feature maps, as `fasterrcnn_*.backbone.body` (IntermediateLayerGetter)
- `fpn`:   the backbone with FPN, as `fasterrcnn_*.backbone` (outputs p2..p5 and pool)
- `trunk`: the classifier without avgpool and fc, `nn.Sequential(*list(resnet.children())[:-2])`,
           kept with its child names so its modules line up with the other views'
Outputs are named after the layer or level they come from, so views compare on what they share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exporter.registry import Registry
from exporter.spec import ModelSpec

if TYPE_CHECKING:
    from torch import nn

    from exporter.weights import Weights

BACKBONES: Registry[str] = Registry("backbone")
for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
              "wide_resnet50_2"):
    BACKBONES.add(_name, _name)  # the torchvision.models builder of the same name


def register_backbone(name: str, torchvision_builder: str | None = None) -> None:
    """Add a torchvision ResNet-family builder (anything accepting `norm_layer`)."""
    BACKBONES.add(name, torchvision_builder or name)


def list_backbones() -> list[str]:
    return BACKBONES.names()


def get_backbone_builder(name: str) -> Callable[..., nn.Module]:
    """torchvision's builder for `name`, with weights=None (weights are loaded separately)."""
    from functools import partial

    import torchvision

    return partial(getattr(torchvision.models, BACKBONES.get(name)), weights=None)


@dataclass(frozen=True)
class View:
    name: str
    outputs: tuple[str, ...]
    prefix: str
    """Where the ResNet's own modules sit in this view (`body.` in the FPN backbone)."""
    wrap: Callable[[nn.Module, Weights, int], nn.Module]


VIEWS: Registry[View] = Registry("view")
BODY_OUTPUTS = ("layer1", "layer2", "layer3", "layer4")


def _body(resnet: nn.Module, weights: Weights, seed: int) -> nn.Module:
    from torchvision.models._utils import IntermediateLayerGetter

    return IntermediateLayerGetter(resnet, return_layers={name: name for name in BODY_OUTPUTS})


def _fpn(resnet: nn.Module, weights: Weights, seed: int) -> nn.Module:
    import torch
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # FPN convs not in the checkpoint get a reproducible init
        model = _resnet_fpn_extractor(resnet, trainable_layers=5)
    model.body.return_layers = {f"layer{i}": f"p{i + 1}" for i in range(1, 5)}
    if "fpn" in weights.extra:
        from exporter.errors import UsageError

        try:
            model.fpn.load_state_dict(weights.extra["fpn"])
        except RuntimeError as exc:
            raise UsageError(f"The FPN weights in {weights.source} do not fit this FPN: "
                             f"{str(exc).splitlines()[-1].strip()}") from None
    return model


def _trunk(resnet: nn.Module, weights: Weights, seed: int) -> nn.Module:
    return _make_trunk(list(resnet.named_children())[:-2])


def _make_trunk(children: list[tuple[str, Any]]) -> nn.Module:
    from collections import OrderedDict

    from torch import Tensor, nn

    class Trunk(nn.Sequential):
        """`nn.Sequential(*list(resnet.children())[:-2])`, returning its output as `layer4`."""

        def forward(self, x: Tensor) -> dict[str, Tensor]:
            for module in self:
                x = module(x)
            return {"layer4": x}

    return Trunk(OrderedDict(children))


VIEWS.add("body", View("body", BODY_OUTPUTS, "", _body))
VIEWS.add("fpn", View("fpn", ("p2", "p3", "p4", "p5", "pool"), "body.", _fpn))
VIEWS.add("trunk", View("trunk", ("layer4",), "", _trunk))


@dataclass
class BuiltModel:
    spec: ModelSpec
    model: nn.Module
    weights: Weights
    view: View
    exact: nn.Module | None = None
    """float64 model when it is not simply `model.double()` (folds computed in float64)."""

    @property
    def output_names(self) -> list[str]:
        return list(self.view.outputs)

    def float64(self) -> nn.Module:
        """The model's exact maths in float64: the oracle's model."""
        import copy

        return self.exact if self.exact is not None else copy.deepcopy(self.model).double()


def build_model(spec: ModelSpec, weights: Weights, seed: int = 0) -> BuiltModel:
    """Build `spec` with torchvision's builder and the variant's `norm_layer`, load `weights`,
    apply the variant's finishing step (e.g. folding), wrap in the view. Returned in eval mode."""
    import copy

    from exporter.errors import UsageError
    from exporter.norms import get_norm

    spec.validate()
    norm = get_norm(spec.norm)
    view = VIEWS.get(spec.view)
    resnet = get_backbone_builder(spec.backbone)(norm_layer=norm.norm_layer())
    state = dict(weights.state_dict)
    if not any(k.startswith("fc.") for k in state):  # backbone-only checkpoints have no classifier
        state.update({k: v for k, v in resnet.state_dict().items() if k.startswith("fc.")})
    try:
        resnet.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise UsageError(f"Weights {weights.source} do not fit {spec.backbone}: {first}") from None
    exact = None
    if norm.fold:
        # fold in float64, then round once: the float32 model is the exact fold, rounded
        exact_resnet = norm.finalize(resnet.double())
        resnet = copy.deepcopy(exact_resnet).float()
        exact = view.wrap(exact_resnet, weights, seed).double().eval()
    norm.finalize(resnet)
    model = view.wrap(resnet, weights, seed).eval()
    return BuiltModel(spec, model, weights, view, exact)


def get_backbone(name: str, norm: str = "frozen", view: str = "body", weights: str = "synthetic",
                 seed: int = 0) -> BuiltModel:
    """Build a backbone by names, e.g. `get_backbone("resnet50", norm="frozen")`."""
    from exporter.weights import load_weights

    spec = ModelSpec(name, norm, view)
    spec.validate()
    return build_model(spec, load_weights(weights, name, seed), seed)
