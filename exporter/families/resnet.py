"""ResNet (and ResNeXt, Wide ResNet): the backbone of Faster/Mask/Keypoint R-CNN, RetinaNet and FCOS.

Views:
- `body`:  layer1..layer4 feature maps, as `fasterrcnn_resnet50_fpn(...).backbone.body` (IntermediateLayerGetter)
- `fpn`:   the backbone with FPN, as `fasterrcnn_resnet50_fpn(...).backbone` (outputs p2..p5 and pool)
- `trunk`: the classifier without avgpool and fc, `nn.Sequential(*list(resnet.children())[:-2])`,
           kept with its child names so its modules line up with the other views'
Outputs are named after the layer or level they come from, so views compare on what they share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.families import Family, View, load_fpn_weights, make_trunk

if TYPE_CHECKING:
    from torch import nn

    from exporter.weights import Weights

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
    load_fpn_weights(model, weights)
    return model


def _trunk(resnet: nn.Module, weights: Weights, seed: int) -> nn.Module:
    return make_trunk(list(resnet.named_children())[:-2], "layer4")


def fold_partner(name: str) -> str:
    """The convolution a norm follows in torchvision's ResNets: bnK -> convK, downsample.1 -> .0."""
    head, _, last = name.rpartition(".")
    if last.startswith("bn"):
        partner = "conv" + last[2:]
    elif last.isdigit() and int(last) > 0:
        partner = str(int(last) - 1)
    else:
        return ""
    return f"{head}.{partner}" if head else partner


def branch_end_norms(model: nn.Module) -> list[nn.Module]:
    """The last bn of each BasicBlock / Bottleneck (the blocks that carry `downsample`)."""
    ends = []
    for block in model.modules():
        if hasattr(block, "downsample"):
            ends.append([child for name, child in block.named_children() if name.startswith("bn")][-1])
    return ends


FAMILY = Family(
    name="resnet",
    description="torchvision ResNets: BasicBlock / Bottleneck, BatchNorm2d eps 1e-5",
    views=(
        View("body", "layer1..layer4, as fasterrcnn_resnet50_fpn().backbone.body", BODY_OUTPUTS, "", _body),
        View("fpn", "with FPN, as fasterrcnn_resnet50_fpn().backbone: p2..p5, pool",
             ("p2", "p3", "p4", "p5", "pool"), "body.", _fpn),
        View("trunk", "the classifier without avgpool and fc: layer4", ("layer4",), "", _trunk),
    ),
    classifier_prefix="fc.",
    norms=("batch", "frozen", "frozen-eps0", "fused"),
    fold_partner=fold_partner,
    branch_end_norms=branch_end_norms,
    detection_builders={"resnet50": "fasterrcnn_resnet50_fpn"},
)
