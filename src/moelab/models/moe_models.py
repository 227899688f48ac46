"""Registered MoE models: an MoE layer whose experts map the input straight to the prediction.

    moe       soft gate: every expert runs, outputs mixed by the softmax gate (train and inference)
    moe_topk  noisy top-k gate (Shazeer et al. 2017) with its importance + load balancing loss
    moe_hard  trained with the soft gate, inferred with hard top-k routing (test reports both)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from moelab.models.moe import MoE
from moelab.models.registry import Model, ModelOutput, param, register


@dataclass
class SoftMoEParams:
    num_experts: int = param(4, "number of experts", min=1, max=1024)
    hidden: int = param(128, "hidden width of each expert", min=1)
    dropout: float = param(0.1, "dropout inside each expert", min=0.0, max=0.9)


@dataclass
class TopKMoEParams:
    num_experts: int = param(4, "number of experts", min=1, max=1024)
    hidden: int = param(128, "hidden width of each expert", min=1)
    dropout: float = param(0.1, "dropout inside each expert", min=0.0, max=0.9)
    k: int = param(2, "experts per sample", min=1)
    noisy_gating: bool = param(True, "learned gate noise during training")
    balance_weight: float = param(0.01, "weight of the importance + load balancing loss", min=0.0)

    def check(self) -> list[str]:
        return [f"k={self.k} must be <= num_experts={self.num_experts}"] if self.k > self.num_experts else []


@dataclass
class HardMoEParams:
    num_experts: int = param(4, "number of experts", min=1, max=1024)
    hidden: int = param(128, "hidden width of each expert", min=1)
    dropout: float = param(0.1, "dropout inside each expert", min=0.0, max=0.9)
    k: int = param(1, "experts per sample at inference", min=1)

    def check(self) -> list[str]:
        return [f"k={self.k} must be <= num_experts={self.num_experts}"] if self.k > self.num_experts else []


class MoEModel(Model):
    def __init__(self, d_in: int, d_out: int, moe: MoE):
        super().__init__()
        self.moe = moe

    def forward(self, x: torch.Tensor) -> ModelOutput:
        out = self.moe(x)
        return ModelOutput(y=out.y, aux_losses=out.aux_losses, gate_probs=out.gate_probs, expert_index=out.expert_index)


@register("moe", SoftMoEParams, "soft MoE: all experts, softmax gate")
class SoftMoE(MoEModel):
    def __init__(self, d_in: int, d_out: int, p: SoftMoEParams):
        moe = MoE(d_in, p.hidden, d_out, p.num_experts, k=1, train_routing="soft", eval_routing="soft", dropout=p.dropout)
        super().__init__(d_in, d_out, moe)


@register("moe_topk", TopKMoEParams, "sparse noisy top-k gate with a load-balancing loss")
class TopKMoE(MoEModel):
    def __init__(self, d_in: int, d_out: int, p: TopKMoEParams):
        moe = MoE(
            d_in, p.hidden, d_out, p.num_experts, k=p.k, train_routing="topk", eval_routing="topk",
            noisy_gating=p.noisy_gating, balance_weight=p.balance_weight, dropout=p.dropout,
        )
        super().__init__(d_in, d_out, moe)


@register("moe_hard", HardMoEParams, "trained with a soft gate, inferred with hard top-k routing")
class HardMoE(MoEModel):
    def __init__(self, d_in: int, d_out: int, p: HardMoEParams):
        moe = MoE(d_in, p.hidden, d_out, p.num_experts, k=p.k, train_routing="soft", eval_routing="topk", dropout=p.dropout)
        super().__init__(d_in, d_out, moe)

    def routing_modes(self) -> list[str]:
        return ["soft"]

    @contextlib.contextmanager
    def use_routing(self, mode: str) -> Iterator[None]:
        if mode != "soft":
            raise ValueError(f"moe_hard has no routing mode {mode!r}; it has: soft")
        saved, self.moe.eval_routing = self.moe.eval_routing, "soft"
        try:
            yield
        finally:
            self.moe.eval_routing = saved
