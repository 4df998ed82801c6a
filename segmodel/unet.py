"""The paper's U-Net (Ronneberger et al. 2015) in the common milesial/Pytorch-UNet layout.

DoubleConv = (conv3x3 pad 1, BatchNorm, ReLU) x 2; encoder widths w, 2w, 4w, 8w, 8w with 2x2
max-pool down; decoder bilinear x2 up, skip concat, DoubleConv; 1x1 conv to class logits.
Input: float NCHW RGB in [-1, 1] (`segmodel.inference.normalize_images`). Output: logits
[N, n_classes, H, W]; `segmodel.inference.foreground_probability` turns them into the foreground
probability (softmax over the two classes, channel 1, by default).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "DoubleConv"]


class DoubleConv(nn.Module):
    """(conv3x3 -> BN -> ReLU) x 2. Convs carry no bias: the BatchNorm that follows has one."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__()
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """2x2 max-pool, then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """x2 upsampling, concat with the skip connection, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = True):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1 = self.up(x1)
        # odd input sizes: pad the upsampled map to the skip's size (no-op for multiples of 16)
        dy = x2.size(2) - x1.size(2)
        dx = x2.size(3) - x1.size(3)
        if dy or dx:
            x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class UNet(nn.Module):
    """U-Net with base width `width` (64 in the paper): 17.26 M parameters at the defaults."""

    def __init__(self, in_channels: int = 3, n_classes: int = 2, width: int = 64, bilinear: bool = True):
        super().__init__()
        if width < 1 or in_channels < 1 or n_classes < 1:
            raise ValueError(f"UNet needs positive sizes, got in_channels={in_channels}, "
                             f"n_classes={n_classes}, width={width}")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.width = width
        self.bilinear = bilinear
        w = width
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(in_channels, w)
        self.down1 = Down(w, 2 * w)
        self.down2 = Down(2 * w, 4 * w)
        self.down3 = Down(4 * w, 8 * w)
        self.down4 = Down(8 * w, 16 * w // factor)
        self.up1 = Up(16 * w, 8 * w // factor, bilinear)
        self.up2 = Up(8 * w, 4 * w // factor, bilinear)
        self.up3 = Up(4 * w, 2 * w // factor, bilinear)
        self.up4 = Up(2 * w, w, bilinear)
        self.outc = nn.Conv2d(w, n_classes, kernel_size=1)

    def arch(self) -> dict:
        """The constructor arguments, as stored in checkpoint sidecars."""
        return {"arch": "unet", "width": self.width, "in_channels": self.in_channels,
                "n_classes": self.n_classes, "bilinear": self.bilinear}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)
