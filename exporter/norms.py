"""Norm-layer variants. Each is passed to torchvision's builders as `norm_layer`, so every
variant of a backbone is built the way torchvision builds it and loads the same state dict.
The names are family-agnostic; a family lists the variants it has and may supply its own
`norm_layer` for one (exporter/families/)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exporter.registry import Registry

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class NormVariant:
    name: str
    description: str
    make_layer: Callable[[], Callable[..., Any] | None]
    """Returns the `norm_layer` callable (a thunk, so torch is imported only when building); None keeps
    the builder's own default, the classifier's norm as torchvision builds it."""
    fold: bool = False
    """Fold each norm into the convolution before it once the weights are loaded."""

    def norm_layer(self) -> Callable[..., nn.Module] | None:
        return self.make_layer()

    def finalize(self, model: nn.Module) -> nn.Module:
        """Eval mode, and fold if this variant folds (a no-op on an already folded model)."""
        model.eval()
        if self.fold:
            fold_batchnorms(model)
        return model


NORMS: Registry[NormVariant] = Registry("norm")


def register_norm(variant: NormVariant) -> NormVariant:
    return NORMS.add(variant.name, variant)


def _batch() -> None:
    return None  # the builder's default: BatchNorm2d, or MobileNetV3's partial(BatchNorm2d, eps=0.001, momentum=0.01)


def _frozen() -> Callable[..., Any]:
    from torchvision.ops.misc import FrozenBatchNorm2d

    return FrozenBatchNorm2d


def _frozen_eps0() -> Callable[..., Any]:
    from functools import partial

    from torchvision.ops.misc import FrozenBatchNorm2d

    # torchvision's detection builders call overwrite_eps(model, 0.0) for their COCO_V1 weights.
    return partial(FrozenBatchNorm2d, eps=0.0)


register_norm(NormVariant("batch", "the classifier's BatchNorm2d as torchvision builds it (eps 1e-5; MobileNetV3 "
                                   "eps 1e-3, momentum 0.01), eval mode", _batch))
register_norm(NormVariant("frozen", "torchvision FrozenBatchNorm2d, eps 1e-5, as the detection builders pass it "
                                    "when they load backbone weights", _frozen))
register_norm(
    NormVariant("frozen-eps0", "FrozenBatchNorm2d with eps 0 (torchvision's COCO_V1 detection weights)",
                _frozen_eps0)
)
register_norm(NormVariant("fused", "the classifier's BatchNorm2d folded into the convolution before it", _batch,
                          fold=True))


def get_norm(name: str) -> NormVariant:
    return NORMS.get(name)


def list_norms() -> list[str]:
    return NORMS.names()


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, norm) for every BatchNorm2d whose sole input is a Conv2d used nowhere else, found on
    the traced graph, not guessed from names."""
    import torch.fx
    from torch import nn

    modules = dict(model.named_modules())
    pairs = []
    for node in torch.fx.symbolic_trace(model).graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and isinstance(modules[src.target], nn.Conv2d)
            and len(src.users) == 1
        ):
            pairs.append((src.target, node.target))
    return pairs


def fold_batchnorms(model: nn.Module) -> int:
    """Fold every pair of `conv_bn_pairs` into its conv, replacing the norm by Identity."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    modules = dict(model.named_modules())
    pairs = conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        model.set_submodule(conv_name, fuse_conv_bn_eval(modules[conv_name], modules[bn_name]))
        model.set_submodule(bn_name, nn.Identity())
    return len(pairs)
