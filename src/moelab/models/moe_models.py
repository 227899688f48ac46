"""Registered MoE models. Experts map their input (flat pixels, or CNN features with backbone: cnn)
straight to the prediction, mixed by the gate.

    moe         soft gate: every expert runs, mixed by the softmax gate (trained and inferred soft)
    moe_topk    noisy top-k gate (Shazeer et al. 2017) with its importance + load balancing loss
    moe_hard    trained with the soft gate, inferred with hard top-k routing (test reports both)
    moe_switch  top-1 with a capacity factor (Switch Transformer); pairs over capacity contribute zero
    moe_guided  the gate is trained toward the expert assigned to each sample's class, then routes alone

Gating options for every model: a temperature annealed on a cosine schedule, gate noise during
training, balanced initialisation, and auxiliary losses each with its own weight (0 = off).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from moelab.models.backbone import CNNBackbone
from moelab.models.moe import AUX_LOSSES, MoE
from moelab.models.registry import Model, ModelOutput, count_parameters, image_shape, param, register


@dataclass
class GatedParams:
    num_experts: int = param(4, "number of experts", min=1, max=1024)
    hidden: int = param(256, "hidden width of each expert", min=1)
    dropout: float = param(0.3, "dropout inside each expert", min=0.0, max=0.9)
    batch_norm: bool = param(True, "batch norm inside each expert (statistics per expert)")
    backbone: str = param("none", "none: experts read the flat input; cnn: a CNN feature extractor first",
                          choices=("none", "cnn"))
    backbone_width: int = param(32, "cnn backbone: channels of its first stage", min=4, max=512)
    anneal_temperature: bool = param(False, "cosine-anneal the gate temperature from start to end")
    temperature_start: float = param(2.0, "gate temperature at the start (with anneal_temperature)", min=0.01, exclusive_min=True)
    temperature_end: float = param(0.5, "gate temperature at the end (with anneal_temperature)", min=0.01, exclusive_min=True)
    gate_noise: bool = param(False, "Gaussian noise on the router logits during training")
    gate_noise_sigma: float = param(0.1, "its standard deviation", min=0.0)
    balanced_init: bool = param(False, "router starts uniform (near-zero weights)")
    switch_balance: float = param(0.0, "weight of the Switch balance loss (E/k) sum f_i P_i", min=0.0)
    cv_balance: float = param(0.0, "weight of Shazeer's CV^2(importance) + CV^2(load)", min=0.0)
    z_loss: float = param(0.0, "weight of the router z-loss mean(logsumexp(z)^2)", min=0.0)
    diversity: float = param(0.0, "weight of the mean pairwise cosine similarity of expert outputs", min=0.0)
    kl_uniform: float = param(0.0, "weight of KL(mean gate || uniform)", min=0.0)

    def needs_images(self) -> bool:
        return self.backbone == "cnn"

    def check(self) -> list[str]:
        k = getattr(self, "k", 1)
        return [f"k={k} must be <= num_experts={self.num_experts}"] if k > self.num_experts else []


@dataclass
class SoftMoEParams(GatedParams):
    pass


@dataclass
class TopKMoEParams(GatedParams):
    k: int = param(2, "experts per sample", min=1)
    noisy_gating: bool = param(True, "learned noise on the router logits during training (Shazeer)")
    cv_balance: float = param(0.01, "weight of Shazeer's CV^2(importance) + CV^2(load)", min=0.0)


@dataclass
class HardMoEParams(GatedParams):
    k: int = param(1, "experts per sample at inference", min=1)


@dataclass
class SwitchMoEParams(GatedParams):
    capacity_factor: float = param(1.25, "an expert takes at most capacity_factor * T / E tokens", min=0.0, exclusive_min=True)
    switch_balance: float = param(0.01, "weight of the Switch balance loss (E/k) sum f_i P_i", min=0.0)


@dataclass
class GuidedMoEParams(GatedParams):
    expert_classes: list = param(None, "classes assigned to each expert, e.g. [[0, 1], [2, 3]] (null: split "
                                 "the classes evenly in order)", nullable=True, kind=list)
    guide_weight: float = param(1.0, "weight of the gate's cross-entropy toward the assigned expert", min=0.0)

    def check(self) -> list[str]:
        problems = super().check()
        if self.expert_classes is not None:
            if len(self.expert_classes) != self.num_experts:
                problems.append(f"expert_classes has {len(self.expert_classes)} entries for num_experts={self.num_experts}")
            flat = [c for group in self.expert_classes for c in (group if isinstance(group, list) else [group])]
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in flat):
                problems.append("expert_classes must be lists of class indices (integers >= 0)")
            elif len(flat) != len(set(flat)):
                problems.append("expert_classes assigns a class to more than one expert")
        return problems


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
                           expert_weights=out.expert_weights, metrics=metrics)

    def set_progress(self, fraction: float) -> None:
        self.moe.set_progress(fraction)

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
    def use_routing(self, mode: str) -> Iterator[None]:
        if mode not in self.routing_modes():
            raise ValueError(f"{type(self).__name__} has no extra routing mode {mode!r}; it has: {self.routing_modes()}")
        saved, self.moe.eval_routing = self.moe.eval_routing, mode
        try:
            yield
        finally:
            self.moe.eval_routing = saved


@register("moe", SoftMoEParams, "soft MoE: all experts, softmax gate")
class SoftMoE(MoEModel):
    def __init__(self, d_in, d_out, p: SoftMoEParams, input_shape=None):
        super().__init__(d_in, d_out, p, input_shape, "moe", train_routing="soft", eval_routing="soft")


@register("moe_topk", TopKMoEParams, "sparse noisy top-k gate with a load-balancing loss")
class TopKMoE(MoEModel):
    def __init__(self, d_in, d_out, p: TopKMoEParams, input_shape=None):
        super().__init__(d_in, d_out, p, input_shape, "moe_topk", k=p.k, train_routing="topk", eval_routing="topk",
                         noisy_gating=p.noisy_gating)


@register("moe_hard", HardMoEParams, "trained with a soft gate, inferred with hard top-k routing")
class HardMoE(MoEModel):
    def __init__(self, d_in, d_out, p: HardMoEParams, input_shape=None):
        super().__init__(d_in, d_out, p, input_shape, "moe_hard", k=p.k, train_routing="soft", eval_routing="topk")


@register("moe_switch", SwitchMoEParams, "top-1 with a capacity factor; tokens over capacity are dropped")
class SwitchMoE(MoEModel):
    def __init__(self, d_in, d_out, p: SwitchMoEParams, input_shape=None):
        super().__init__(d_in, d_out, p, input_shape, "moe_switch", k=1, train_routing="topk", eval_routing="topk",
                         capacity_factor=p.capacity_factor)


@register("moe_guided", GuidedMoEParams, "label-guided: the gate learns the expert assigned to each class")
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
