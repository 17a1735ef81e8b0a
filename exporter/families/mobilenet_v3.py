"""MobileNetV3 (large, small): the backbone of `fasterrcnn_mobilenet_v3_large_fpn` and its 320 variant.

torchvision's detection extractor (`backbone_utils._mobilenet_extractor`) cuts `features` at its
stages: `stage_indices` = the stem, each strided block, the last conv (torchvision's C0..C5), and
the FPN takes the last two (C4, C5; both at stride 32).

Views (module names are those of `features`, as in the detection body: `backbone.body.4.block.0.1` is
the classifier's `features.4.block.0.1`):
- `body`:  C4 and C5 as `c4`, `c5`: `fasterrcnn_mobilenet_v3_large_fpn(...).backbone.body`. The extractor's
           fpn=False form (`mobilenet_backbone(fpn=False)`) adds an untrained 1x1 conv after `features`;
           no torchvision detection model uses it, so `body` is what the FPN consumes.
- `fpn`:   the backbone with FPN, as `fasterrcnn_mobilenet_v3_large_fpn(...).backbone`: p4, p5, pool
           (torchvision's "0", "1", "pool"); for small, the same extractor applied to small
- `trunk`: `features`, output `c5`

Norms: `batch` is the classifier's `partial(BatchNorm2d, eps=0.001, momentum=0.01)`; `frozen` is what
the detection builder passes when it loads backbone weights, `FrozenBatchNorm2d` with its default
eps 1e-5 (not 0.001: the detection backbone computes another function from the same weights).
No torchvision builder sets eps 0 for MobileNetV3 (`overwrite_eps` is called only for the ResNet-50
COCO_V1 detectors), so `frozen-eps0` is not a variant of this family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.families import Family, View, load_fpn_weights, make_trunk

if TYPE_CHECKING:
    import torch
    from torch import nn

    from exporter.weights import Weights


def stage_indices(features: nn.Module) -> list[int]:
    """torchvision's `_mobilenet_extractor` stages: C0 (stem), each strided block, Cn (last conv)."""
    return [0] + [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)] + [len(features) - 1]


def _body(model: nn.Module, weights: Weights, seed: int) -> nn.Module:
    from torchvision.models._utils import IntermediateLayerGetter

    stages = stage_indices(model.features)
    return IntermediateLayerGetter(model.features, return_layers={str(stages[-2]): "c4", str(stages[-1]): "c5"})


def _fpn(model: nn.Module, weights: Weights, seed: int) -> nn.Module:
    import torch
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor

    stages = stage_indices(model.features)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # FPN convs not in the checkpoint get a reproducible init
        fpn = _mobilenet_extractor(model, True, trainable_layers=len(stages))
    fpn.body.return_layers = {str(stages[-2]): "p4", str(stages[-1]): "p5"}
    load_fpn_weights(fpn, weights)
    return fpn


def _trunk(model: nn.Module, weights: Weights, seed: int) -> nn.Module:
    return make_trunk(list(model.features.named_children()), "c5")


def fold_partner(name: str) -> str:
    """Every norm sits in a Conv2dNormActivation (conv, norm, activation): `X.1` follows `X.0`."""
    head, _, last = name.rpartition(".")
    if not (last.isdigit() and int(last) > 0):
        return ""
    return f"{head}.{int(last) - 1}" if head else str(int(last) - 1)


def branch_end_norms(model: nn.Module) -> list[nn.Module]:
    """The projection norm of each InvertedResidual that adds its input back."""
    return [block.block[-1][1] for block in model.modules() if getattr(block, "use_res_connect", False)]


SE_GATE_BIAS_STD = 1.5
"""SE gates (hardsigmoid(z) = clamp(z / 6 + 0.5, 0, 1)) spread over (0, 1), a few shut or fully open,
as training leaves them; torchvision's init puts every gate at 0.5 +- 0.06."""


def prepare_synthetic(model: nn.Module, gen: torch.Generator) -> None:
    """Depthwise filters by fan-in, and SE gate biases spread.

    torchvision inits every conv by fan-out; for a depthwise 3x3 conv of 960 channels that is std
    sqrt(2 / (960 * 9)) = 0.015, so its outputs' variance falls to ~1e-4 of its input's, below BN's
    eps 1e-3: eps, not the statistics, would then set those norms' scale (a trained network's
    depthwise filters keep their inputs' scale)."""
    import math

    import torch
    from torch import nn

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=gen)
            elif type(module).__name__ == "SqueezeExcitation":
                module.fc2.bias.normal_(0.0, SE_GATE_BIAS_STD, generator=gen)


def classifier_key(key: str) -> str:
    """A detection body's `4.block.0.0.weight` is the classifier's `features.4.block.0.0.weight`."""
    return f"features.{key}" if key.split(".", 1)[0].isdigit() else key


FAMILY = Family(
    name="mobilenet_v3",
    description="torchvision MobileNetV3: inverted residuals, SE, Hardswish, BatchNorm2d eps 1e-3",
    views=(
        View("body", "C4, C5 of features, as fasterrcnn_mobilenet_v3_large_fpn().backbone.body", ("c4", "c5"), "",
             _body),
        View("fpn", "with FPN, as fasterrcnn_mobilenet_v3_large_fpn().backbone: p4, p5, pool",
             ("p4", "p5", "pool"), "body.", _fpn),
        View("trunk", "features: c5", ("c5",), "", _trunk),
    ),
    classifier_prefix="classifier.",
    norms=("batch", "frozen", "fused"),
    fold_partner=fold_partner,
    branch_end_norms=branch_end_norms,
    prepare_synthetic=prepare_synthetic,
    classifier_key=classifier_key,
    detection_builders={"mobilenet_v3_large": "fasterrcnn_mobilenet_v3_large_fpn"},
)
