"""Sweep 49's users' models: torchvision classifiers and blocks as a user brings them (`--model
tests/data/sweep49_models.py:NAME`), random init seeded, eval mode; batch norms' statistics set by one batch-32 pass
(as trained ones would be: at torchvision's mean 0, var 1 an efficientnet_b0's logits are 1e-14)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn


def _calibrated(model: nn.Module) -> nn.Module:
    """`model` with every batch norm's running statistics those of one seeded batch of 32, in eval mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    return model.eval()


def _tv(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return _calibrated(getattr(torchvision.models, name)(weights=None, **kwargs))


def efficientnet_b0() -> nn.Module:
    return _tv("efficientnet_b0")


def regnet_x_400mf() -> nn.Module:
    return _tv("regnet_x_400mf")


def regnet_y_400mf() -> nn.Module:
    return _tv("regnet_y_400mf")


def convnext_tiny() -> nn.Module:
    return _tv("convnext_tiny")


def shufflenet_v2() -> nn.Module:
    return _tv("shufflenet_v2_x0_5")


def squeezenet() -> nn.Module:
    return _tv("squeezenet1_1")


def densenet121() -> nn.Module:
    return _tv("densenet121").features


def mnasnet() -> nn.Module:
    return _tv("mnasnet0_5")


def googlenet() -> nn.Module:
    return _tv("googlenet", aux_logits=False, init_weights=True)


def vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.2)  # torchvision starts the head at zero: every logit 0
    return model.eval()


def swin() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
                           stochastic_depth_prob=0.1, num_classes=10).eval()
