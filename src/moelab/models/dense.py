"""Dense baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moelab.models.registry import Model, ModelOutput, param, register


@dataclass
class MLPParams:
    hidden: int = param(256, "width of each hidden layer", min=1)
    layers: int = param(2, "number of hidden layers", min=1, max=16)
    dropout: float = param(0.1, "dropout after each hidden layer", min=0.0, max=0.9)


@register("mlp", MLPParams, "dense multi-layer perceptron baseline")
class MLP(Model):
    def __init__(self, d_in: int, d_out: int, p: MLPParams):
        super().__init__()
        blocks: list[nn.Module] = []
        width = d_in
        for _ in range(p.layers):
            blocks += [nn.Linear(width, p.hidden), nn.ReLU(), nn.Dropout(p.dropout)]
            width = p.hidden
        blocks.append(nn.Linear(width, d_out))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(y=self.net(x))
