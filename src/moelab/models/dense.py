"""Dense baselines: an MLP over flat inputs, and a CNN (residual + squeeze-excitation) for images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moelab.models.backbone import CNNBackbone
from moelab.models.registry import Model, ModelOutput, image_shape, param, register


@dataclass
class MLPParams:
    hidden: int = param(256, "width of each hidden layer", min=1)
    layers: int = param(2, "number of hidden layers", min=1, max=16)
    dropout: float = param(0.1, "dropout after each hidden layer", min=0.0, max=0.9)


@register("mlp", MLPParams, "dense multi-layer perceptron baseline")
class MLP(Model):
    def __init__(self, d_in: int, d_out: int, p: MLPParams, input_shape=None):
        super().__init__()
        blocks: list[nn.Module] = []
        width = d_in
        for _ in range(p.layers):
            blocks += [nn.Linear(width, p.hidden), nn.ReLU(), nn.Dropout(p.dropout)]
            width = p.hidden
        blocks.append(nn.Linear(width, d_out))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        return ModelOutput(y=self.net(x))


@dataclass
class CNNParams:
    width: int = param(32, "channels of the first stage (then 2x and 4x)", min=4, max=512)
    features: int = param(512, "size of the pooled feature vector", min=8)
    dropout: float = param(0.3, "dropout before the classifier", min=0.0, max=0.9)

    def needs_images(self) -> bool:
        return True


@register("cnn", CNNParams, "dense CNN baseline: residual squeeze-excitation blocks, pooled features, linear head")
class CNN(Model):
    def __init__(self, d_in: int, d_out: int, p: CNNParams, input_shape=None):
        super().__init__()
        self.backbone = CNNBackbone(image_shape(input_shape, d_in, "cnn"), p.width, p.features)
        self.head = nn.Sequential(nn.Dropout(p.dropout), nn.Linear(p.features, d_out))

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        return ModelOutput(y=self.head(self.backbone(x)))
