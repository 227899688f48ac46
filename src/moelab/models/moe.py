"""The Mixture-of-Experts layer: stacked expert weights, a router, soft and sparse top-k dispatch.

    moe = MoE(d_in=64, d_hidden=128, d_out=10, num_experts=8, k=2)
    out = moe(x)          # x: [T, d_in]; out.y: [T, d_out]

Soft routing runs every expert (one batched einsum) and mixes them with the softmax gate. Sparse
routing sends each token to its k best experts: the (token, slot) pairs are sorted by expert, each
expert multiplies one contiguous block, and the results are put back with the inverse permutation
and summed over the k slots (no scatter-add, so the combine is deterministic on every device).
Routing and its losses are computed in float32 whatever the input precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

ROUTINGS = ("soft", "topk")


@dataclass
class MoEOutput:
    y: torch.Tensor  # [T, d_out]
    gate_probs: torch.Tensor  # [T, E] softmax of the clean router logits
    expert_index: torch.Tensor | None  # [T, k] chosen experts; None under soft routing
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)


class MoE(nn.Module):
    def __init__(
        self,
        d_in: int,
        d_hidden: int,
        d_out: int,
        num_experts: int,
        k: int = 1,
        train_routing: str = "topk",
        eval_routing: str = "topk",
        noisy_gating: bool = False,
        balance_weight: float = 0.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ValueError(f"k must be between 1 and num_experts={num_experts}, got {k}")
        for routing in (train_routing, eval_routing):
            if routing not in ROUTINGS:
                raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        self.num_experts, self.k = num_experts, k
        self.train_routing, self.eval_routing = train_routing, eval_routing
        self.balance_weight = balance_weight
        self.router = nn.Linear(d_in, num_experts)
        # softplus(x W_noise) is the learned per-expert noise scale of noisy top-k gating
        self.noise = nn.Linear(d_in, num_experts, bias=False) if noisy_gating else None
        self.w1 = nn.Parameter(torch.empty(num_experts, d_in, d_hidden))
        self.b1 = nn.Parameter(torch.empty(num_experts, d_hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_hidden, d_out))
        self.b2 = nn.Parameter(torch.empty(num_experts, d_out))
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the same distribution nn.Linear uses, per expert
        for w, b, fan_in in ((self.w1, self.b1, self.w1.shape[1]), (self.w2, self.b2, self.w2.shape[1])):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)
        if self.noise is not None:
            nn.init.zeros_(self.noise.weight)

    @property
    def routing(self) -> str:
        return self.train_routing if self.training else self.eval_routing

    def forward(self, x: torch.Tensor) -> MoEOutput:
        logits = self.router(x).float()
        probs = logits.softmax(dim=-1)
        if self.routing == "soft":
            return MoEOutput(y=self._soft(x, probs), gate_probs=probs, expert_index=None)

        noisy_logits, noise_std = logits, None
        if self.noise is not None and self.training:
            noise_std = F.softplus(self.noise(x).float()) + 1e-2
            noisy_logits = logits + torch.randn_like(logits) * noise_std
        kk = min(self.k + 1, self.num_experts)
        top_logits, top_index = noisy_logits.topk(kk, dim=-1)
        expert_index = top_index[:, : self.k]
        weights = top_logits[:, : self.k].softmax(dim=-1)
        y = self._sparse(x, expert_index, weights.to(x.dtype))
        aux = {}
        if self.balance_weight > 0 and self.training:
            full_gates = torch.zeros_like(logits).scatter(1, expert_index, weights)
            load = self._load(logits, noisy_logits, noise_std, top_logits, full_gates)
            aux["balance"] = self.balance_weight * (cv_squared(full_gates.sum(0)) + cv_squared(load))
        return MoEOutput(y=y, gate_probs=probs, expert_index=expert_index, aux_losses=aux)

    def _soft(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        h = torch.einsum("td,edh->teh", x, self.w1) + self.b1
        h = self.dropout(F.relu(h))
        out = torch.einsum("teh,eho->teo", h, self.w2) + self.b2
        return torch.einsum("te,teo->to", probs.to(x.dtype), out)

    def _sparse(self, x: torch.Tensor, expert_index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        tokens, k = expert_index.shape
        flat = expert_index.reshape(-1)
        order = torch.argsort(flat, stable=True)  # (token, slot) pairs grouped by expert
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        grouped = x[order // k]
        outputs = []
        for e, chunk in enumerate(grouped.split(counts)):
            if chunk.shape[0] == 0:
                continue
            h = self.dropout(F.relu(chunk @ self.w1[e] + self.b1[e]))
            outputs.append(h @ self.w2[e] + self.b2[e])
        grouped_out = torch.cat(outputs)
        out = torch.empty_like(grouped_out)
        out[order] = grouped_out  # inverse permutation: row i of `out` is pair i again
        return (out.view(tokens, k, -1) * weights.unsqueeze(-1)).sum(dim=1)

    def _load(self, logits, noisy_logits, noise_std, top_logits, full_gates) -> torch.Tensor:
        """Expected number of tokens per expert (Shazeer et al. 2017), differentiable through the noise.

        For each expert: the probability that its noisy logit would still be in the top k if the
        noise were drawn again, given the other experts' noisy logits. The threshold it must beat is
        the k-th largest noisy logit if it is itself outside the top k, else the (k+1)-th. Without
        noise (or with k = E) the load is the hard count of tokens per expert.
        """
        if noise_std is None or self.k >= self.num_experts:
            return (full_gates > 0).float().sum(0)
        threshold_if_in = top_logits[:, self.k : self.k + 1]  # (k+1)-th largest noisy logit
        threshold_if_out = top_logits[:, self.k - 1 : self.k]  # k-th largest noisy logit
        is_in = noisy_logits > threshold_if_in
        normal = torch.distributions.Normal(0.0, 1.0)
        prob_if_in = normal.cdf((logits - threshold_if_in) / noise_std)
        prob_if_out = normal.cdf((logits - threshold_if_out) / noise_std)
        return torch.where(is_in, prob_if_in, prob_if_out).sum(0)


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation; 0 when all entries are equal (a balanced routing)."""
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.float().var(unbiased=False) / (x.float().mean() ** 2 + 1e-10)
