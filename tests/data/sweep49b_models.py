"""Sweep 49b's users' models: dense prediction and upsampling (`--model tests/data/sweep49b_models.py:NAME`), random
init seeded, eval mode, batch norms' statistics set by one seeded batch pass at the model's own input size."""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.nn import functional as F


def _calibrated(model: nn.Module, shape: tuple[int, int] = (64, 64), batch: int = 16) -> nn.Module:
    """`model` with every batch norm's running statistics those of one seeded batch, in eval mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(batch, 3, *shape, generator=torch.Generator().manual_seed(1)))
    return model.eval()


class Out(nn.Module):
    """A segmentation model's `out` tensor alone (its dict output without the key)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def _seg(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None, num_classes=5,
                                                          **kwargs)
    return _calibrated(model, batch=8 if name == "fcn_resnet50" else 16)


def lraspp() -> nn.Module:
    return _seg("lraspp_mobilenet_v3_large")


def lraspp_out() -> nn.Module:
    return Out(_seg("lraspp_mobilenet_v3_large")).eval()


def deeplabv3() -> nn.Module:
    return _seg("deeplabv3_mobilenet_v3_large")


def deeplabv3_out() -> nn.Module:
    return Out(_seg("deeplabv3_mobilenet_v3_large")).eval()


def fcn() -> nn.Module:
    return _seg("fcn_resnet50")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Up(nn.Module):
    """One decoder step: `x` brought to `skip`'s size (by interpolate, a transposed conv or a pixel shuffle), then
    concatenated with it and convolved."""

    def __init__(self, cin: int, cout: int, how: str, align_corners: bool | None, by_size: bool) -> None:
        super().__init__()
        self.how, self.align_corners, self.by_size = how, align_corners, by_size
        if how == "convtranspose":
            self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        elif how == "convtranspose3":  # kernel 3, padding 1, output_padding 1: the pads a file can get wrong
            self.up = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
        elif how == "pixelshuffle":
            self.up = nn.Sequential(nn.Conv2d(cin, cout * 4, 1), nn.PixelShuffle(2))
        else:
            self.up = nn.Conv2d(cin, cout, 1)
        self.conv = _block(2 * cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.how in ("convtranspose", "convtranspose3", "pixelshuffle"):
            x = self.up(x)
            dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        else:
            x = self.up(x)
            if self.by_size:
                x = F.interpolate(x, size=skip.shape[-2:], mode=self.how, align_corners=self.align_corners)
            else:
                x = F.interpolate(x, scale_factor=2.0, mode=self.how, align_corners=self.align_corners)
        return self.conv(torch.cat([x, skip], 1))


class UNet(nn.Module):
    """A three-level U-Net: 8, 16, 32 channels, max-pool down, `how` up, a 1x1 head of 4 classes."""

    def __init__(self, how: str, align_corners: bool | None = None, by_size: bool = False) -> None:
        super().__init__()
        self.enc1, self.enc2, self.enc3 = _block(3, 8), _block(8, 16), _block(16, 32)
        self.up2 = Up(32, 16, how, align_corners, by_size)
        self.up1 = Up(16, 8, how, align_corners, by_size)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        return self.head(self.up1(self.up2(e3, e2), e1))


def _unet(how: str, align_corners: bool | None = None, by_size: bool = False,
          shape: tuple[int, int] = (64, 64)) -> nn.Module:
    torch.manual_seed(0)
    return _calibrated(UNet(how, align_corners, by_size), shape)


def unet_nearest() -> nn.Module:
    return _unet("nearest")


def unet_bilinear() -> nn.Module:
    return _unet("bilinear", align_corners=False)


def unet_bilinear_ac() -> nn.Module:
    return _unet("bilinear", align_corners=True)


def unet_bicubic() -> nn.Module:
    return _unet("bicubic", align_corners=False)


def unet_convtranspose() -> nn.Module:
    return _unet("convtranspose")


def unet_convtranspose3() -> nn.Module:
    return _unet("convtranspose3")


def unet_pixelshuffle() -> nn.Module:
    return _unet("pixelshuffle")


def unet_odd_nearest() -> nn.Module:
    """Upsampled to the skip's size (31x32 from 15x16 at 63x65): nearest at a scale that is not an integer."""
    return _unet("nearest", by_size=True, shape=(63, 65))


def unet_odd_bilinear() -> nn.Module:
    return _unet("bilinear", align_corners=False, by_size=True, shape=(63, 65))


def unet_odd_bilinear_ac() -> nn.Module:
    return _unet("bilinear", align_corners=True, by_size=True, shape=(63, 65))


def unet_odd_convtranspose() -> nn.Module:
    """A transposed conv to 30x32, padded to the skip's 31x32 (the classic U-Net's F.pad)."""
    return _unet("convtranspose", shape=(63, 65))


class FPN(nn.Module):
    """A stride-2 backbone of three levels, 1x1 laterals and a top-down path adding each upper level upsampled to the
    lower one's size (`interpolate(size=lateral.shape[-2:])`), 3x3 output convs; a dict of three maps."""

    def __init__(self, mode: str = "nearest") -> None:
        super().__init__()
        self.mode = mode
        self.c1 = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.lat = nn.ModuleList([nn.Conv2d(c, 16, 1) for c in (8, 16, 32)])
        self.out = nn.ModuleList([nn.Conv2d(16, 16, 3, padding=1) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f1 = self.c1(x)
        f2 = self.c2(f1)
        f3 = self.c3(f2)
        p3 = self.lat[2](f3)
        p2 = self.lat[1](f2) + F.interpolate(p3, size=f2.shape[-2:], mode=self.mode)
        p1 = self.lat[0](f1) + F.interpolate(p2, size=f1.shape[-2:], mode=self.mode)
        return {"p1": self.out[0](p1), "p2": self.out[1](p2), "p3": self.out[2](p3)}


def fpn() -> nn.Module:
    torch.manual_seed(0)
    return _calibrated(FPN())


def fpn_odd() -> nn.Module:
    """The FPN at 63x65: 32x33 -> 16x17 -> 8x9, each upsampled to a size that is not twice its own."""
    torch.manual_seed(0)
    return _calibrated(FPN(), (63, 65))


def fpn_odd_bilinear() -> nn.Module:
    torch.manual_seed(0)
    return _calibrated(FPN("bilinear"), (63, 65))
