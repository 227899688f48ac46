"""A small convolutional feature extractor for image data: residual blocks with squeeze-and-excitation,
pooled to a fixed-size vector (512 by default) that a dense or MoE head reads."""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcitation(nn.Module):
    """Channel attention: pool each channel to one number, learn a weight per channel from them."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(4, channels // reduction)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU(),
                                  nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)[:, :, None, None]


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), SqueezeExcitation(c_out),
        )
        self.skip = (nn.Identity() if c_in == c_out and stride == 1 else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class CNNBackbone(nn.Module):
    """(C, H, W) image (given flat) -> `features`-d vector. Three stages of width w, 2w, 4w; a stage
    halves the resolution while the image is at least 8 pixels wide."""

    def __init__(self, shape: tuple[int, int, int], width: int = 32, features: int = 512):
        super().__init__()
        self.shape = shape
        channels, size = shape[0], shape[1]
        stages: list[nn.Module] = [nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        c = width
        for multiplier in (1, 2, 4):
            stride = 2 if size >= 8 else 1
            size = (size + stride - 1) // stride
            stages.append(ResidualBlock(c, width * multiplier, stride))
            c = width * multiplier
        self.stages = nn.Sequential(*stages)
        self.project = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, features), nn.ReLU())
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.stages(x.view(len(x), *self.shape)))
