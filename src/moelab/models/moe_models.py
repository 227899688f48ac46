"""Registered MoE models. Experts map their input (flat pixels, or CNN features with backbone: cnn)
straight to the prediction, mixed by the gate.

    moe         soft gate: every expert runs, mixed by the softmax gate (trained and inferred soft)
    moe_topk    noisy top-k gate (Shazeer et al. 2017) with its importance + load balancing loss
    moe_hard    trained with the soft gate, inferred with hard top-k routing (test reports both)
    moe_switch  top-1 with a capacity factor (Switch Transformer); pairs over capacity contribute zero
    moe_routed  a chosen router (topk, expert_choice, hash, sinkhorn) and balancing (aux_loss, bias, none),
                shared and fine-grained experts; moe_topk and moe_switch are today's presets of token choice
    moe_guided  the gate is trained toward the expert assigned to each sample's class, then routes alone

Gating options for every model: a temperature annealed on a cosine schedule, gate noise during
training, balanced initialisation, and auxiliary losses each with its own weight (0 = off).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

from moelab.models.backbone import CNNBackbone
from moelab.models.base import Model, ModelOutput, count_parameters, image_shape
from moelab.models.moe import MoE
from moelab.models.params import (AUX_LOSSES, GatedParams, GuidedMoEParams, HardMoEParams, RoutedMoEParams,
                                  SoftMoEParams, SwitchMoEParams, TopKMoEParams)


class MoEModel(Model):
    def __init__(self, d_in: int, d_out: int, p: GatedParams, input_shape, name: str, **routing):
        super().__init__()
        self.backbone = None
        if p.backbone == "cnn":
            self.backbone = CNNBackbone(image_shape(input_shape, d_in, name), p.backbone_width)
            d_in = self.backbone.features
        self.moe = MoE(
            d_in, p.hidden, d_out, p.num_experts,
            gate_noise=p.gate_noise_sigma if p.gate_noise else 0.0,
            temperature=(p.temperature_start, p.temperature_end) if p.anneal_temperature else (1.0, 1.0),
            balanced_init=p.balanced_init, batch_norm=p.batch_norm, dropout=p.dropout,
            aux_weights={name: getattr(p, name) for name in AUX_LOSSES}, **routing,
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.backbone is None else self.backbone(x)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        out = self.moe(self.features(x))
        metrics = {"dropped": out.dropped_fraction} if out.dropped_fraction is not None else {}
        return ModelOutput(y=out.y, aux_losses=out.aux_losses, gate_probs=out.gate_probs, expert_index=out.expert_index,
                           expert_weights=out.expert_weights, metrics=metrics, expert_load=out.expert_load)

    def set_progress(self, fraction: float) -> None:
        self.moe.set_progress(fraction)

    def after_step(self) -> None:
        self.moe.after_step()

    @property
    def batch_dependent(self) -> bool:
        return self.moe.batch_dependent

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe.expert_outputs(self.features(x))

    def active_parameters(self) -> int:
        moe = self.moe
        per_expert = sum(p[0].numel() for p in (moe.w1, moe.b1, moe.w2, moe.b2))
        if moe.norm is not None:
            per_expert += moe.norm.weight[0].numel() + moe.norm.bias[0].numel()
        used = moe.num_experts if moe.routing == "soft" else moe.k
        shared = count_parameters(self) - per_expert * moe.num_experts
        if moe.noise is not None:  # the noise projection only runs in training
            shared -= moe.noise.weight.numel()
        return shared + used * per_expert

    def routing_modes(self) -> list[str]:
        # a model inferred sparsely is also scored with every expert mixed softly, for comparison
        return ["soft"] if self.moe.eval_routing == "topk" else []

    @contextlib.contextmanager
    def use_routing(self, mode: str | None) -> Iterator[None]:
        if mode is None:
            yield
            return
        if mode not in self.routing_modes():
            raise ValueError(f"{type(self).__name__} has no extra routing mode {mode!r}; it has: {self.routing_modes()}")
        saved, self.moe.eval_routing = self.moe.eval_routing, mode
        try:
            yield
        finally:
            self.moe.eval_routing = saved


class SoftMoE(MoEModel):
    def __init__(self, d_in, d_out, p: SoftMoEParams, input_shape=None):
        super().__init__(d_in, d_out, p, input_shape, "moe", train_routing="soft", eval_routing="soft")


class TopKMoE(MoEModel):
    def __init__(self, d_in, d_out, p: TopKMoEParams, input_shape=None):
        super().__init__(d_in, d_out, p, input_shape, "moe_topk", k=p.k, train_routing="topk", eval_routing="topk",
                         noisy_gating=p.noisy_gating)


class HardMoE(MoEModel):
    def __init__(self, d_in, d_out, p: HardMoEParams, input_shape=None):
        super().__init__(d_in, d_out, p, input_shape, "moe_hard", k=p.k, train_routing="soft", eval_routing="topk")


class SwitchMoE(MoEModel):
    def __init__(self, d_in, d_out, p: SwitchMoEParams, input_shape=None):
        super().__init__(d_in, d_out, p, input_shape, "moe_switch", k=1, train_routing="topk", eval_routing="topk",
                         capacity_factor=p.capacity_factor)


class RoutedMoE(MoEModel):
    def __init__(self, d_in, d_out, p: RoutedMoEParams, input_shape=None):
        m = p.granularity
        super().__init__(d_in, d_out, RoutedMoEParams(**{**vars(p), "num_experts": p.num_experts * m, "hidden": p.hidden // m}),
                         input_shape, "moe_routed", k=p.k * m, train_routing="topk", eval_routing="topk",
                         noisy_gating=p.noisy_gating, capacity_factor=p.capacity_factor, router=p.router,
                         balance=p.balance, bias_rate=p.bias_rate, shared_experts=p.shared_experts,
                         hash_seed=p.hash_seed, top1_probability=True)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        # the hash router hashes the sample itself, not features that change while a backbone trains
        out = self.moe(self.features(x), route_key=x if self.moe.router is None else None)
        metrics = {"dropped": out.dropped_fraction} if out.dropped_fraction is not None else {}
        return ModelOutput(y=out.y, aux_losses=out.aux_losses, gate_probs=out.gate_probs, expert_index=out.expert_index,
                           expert_weights=out.expert_weights, metrics=metrics, expert_load=out.expert_load)

    def routing_modes(self) -> list[str]:
        return []  # every router here is sparse at inference; the hash router has no gate to mix with


class GuidedMoE(MoEModel):
    def __init__(self, d_in, d_out, p: GuidedMoEParams, input_shape=None):
        super().__init__(d_in, d_out, p, input_shape, "moe_guided", k=1, train_routing="soft", eval_routing="topk")
        groups = p.expert_classes or [list(range(d_out))[e * d_out // p.num_experts:(e + 1) * d_out // p.num_experts]
                                      for e in range(p.num_experts)]
        assigned = torch.full((d_out,), -1, dtype=torch.long)
        for expert, classes in enumerate(groups):
            for c in classes:
                if c >= d_out:
                    raise ValueError(f"expert_classes names class {c}, but the data has classes 0-{d_out - 1}")
                assigned[c] = expert
        if (assigned < 0).any():
            missing = (assigned < 0).nonzero().flatten().tolist()
            raise ValueError(f"expert_classes leaves classes {missing} without an expert")
        self.register_buffer("assigned_expert", assigned)  # class -> expert
        self.guide_weight = p.guide_weight

    def assigned_experts(self, targets: torch.Tensor) -> torch.Tensor:
        return self.assigned_expert[targets]

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        out = self.moe(self.features(x))
        result = ModelOutput(y=out.y, aux_losses=out.aux_losses, gate_probs=out.gate_probs,
                             expert_index=out.expert_index, expert_weights=out.expert_weights)
        if targets is not None:
            assigned = self.assigned_expert[targets]
            result.aux_losses = {**out.aux_losses, "guide": self.guide_weight * F.cross_entropy(out.router_logits, assigned)}
            result.metrics = {"guide_agreement": (out.gate_probs.argmax(dim=1) == assigned).float().mean()}
        return result
