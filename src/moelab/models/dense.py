"""Dense baselines: an MLP over flat inputs, and a CNN (residual + squeeze-excitation) for images."""

from __future__ import annotations

import torch
from torch import nn

from moelab.models.backbone import CNNBackbone
from moelab.models.base import Dropout, Linear, Model, ModelOutput, image_shape
from moelab.models.params import CNNParams, MLPParams


class MLP(Model):
    def __init__(self, d_in: int, d_out: int, p: MLPParams, input_shape=None):
        super().__init__()
        blocks: list[nn.Module] = []
        width = d_in
        for _ in range(p.layers):
            blocks += [Linear(width, p.hidden), nn.ReLU(), Dropout(p.dropout)]
            width = p.hidden
        blocks.append(Linear(width, d_out))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        return ModelOutput(y=self.net(x))


class CNN(Model):
    def __init__(self, d_in: int, d_out: int, p: CNNParams, input_shape=None):
        super().__init__()
        self.backbone = CNNBackbone(image_shape(input_shape, d_in, "cnn"), p.width, p.features)
        self.head = nn.Sequential(Dropout(p.dropout), nn.Linear(p.features, d_out))

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        return ModelOutput(y=self.head(self.backbone(x)))
