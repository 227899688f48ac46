"""The Mixture-of-Experts layer: stacked expert weights, a router, soft and sparse top-k dispatch.

    moe = MoE(d_in=64, d_hidden=128, d_out=10, num_experts=8, k=2)
    out = moe(x)          # x: [T, d_in]; out.y: [T, d_out]

Experts are two-layer MLPs (linear, optional batch norm, ReLU, dropout, linear) whose weights are
stacked, e.g. w1: [E, d_in, d_hidden].

Soft routing runs every expert (one batched einsum) and mixes them with the softmax gate. Sparse
routing sends each token to its k best experts: the (token, slot) pairs are sorted by expert, each
expert multiplies one contiguous block (one grouped matrix multiply where this torch has
torch._grouped_mm for the device and dtype, else a split per expert), and the results are put back
with the inverse permutation and summed over the k slots: no scatter-add, so the combine is
deterministic on every device. With a capacity factor (Switch), an expert takes at most
ceil(capacity_factor * T * k / E) pairs, in token order; a dropped pair contributes zero, and the
share of dropped pairs is reported.

The router decides which experts see a token (`router`):
    topk           each token picks its k best experts (token choice), optionally noisy, with a capacity
    sinkhorn       top-k of a balanced assignment (Sinkhorn iterations) in training, greedy at inference
    expert_choice  each expert picks its c best tokens: a token's output depends on its batch
    hash           a fixed, seeded hash of the token's key (its input, or a token id): no router at all
`balance: bias` (token choice) adds a per-expert bias to the scores used for choosing only, moved after
each optimizer step toward equal load (`after_step`); `balance: none` turns the balance losses off.
Shared experts run on every token and are added to the routed output.

Routing and every auxiliary loss are computed in float32, whatever the input precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from moelab.models.params import AUX_LOSSES, BALANCE_LOSSES, BALANCES, ROUTERS

ROUTINGS = ("soft", "topk")
SINKHORN_ITERATIONS = 8
_GROUPED_MM_UNSUPPORTED: set[tuple[str, torch.dtype]] = set()


@dataclass
class MoEOutput:
    y: torch.Tensor  # [T, d_out]
    gate_probs: torch.Tensor  # [T, E] softmax of the (tempered) router logits, before noise
    router_logits: torch.Tensor  # [T, E] float32, tempered
    expert_index: torch.Tensor | None  # [T, k] chosen experts; None under soft routing
    expert_weights: torch.Tensor | None  # [T, k] their mixing weights
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)  # weighted, by name
    dropped_fraction: torch.Tensor | None = None  # share of (token, slot) pairs over capacity
    expert_load: torch.Tensor | None = None  # [E] (token, expert) pairs each expert processed (sparse routing)


class MoE(nn.Module):
    def __init__(
        self,
        d_in: int,
        d_hidden: int,
        d_out: int,
        num_experts: int,
        k: int = 1,
        *,
        train_routing: str = "topk",
        eval_routing: str = "topk",
        noisy_gating: bool = False,
        gate_noise: float = 0.0,
        capacity_factor: float | None = None,
        temperature: tuple[float, float] = (1.0, 1.0),
        balanced_init: bool = False,
        batch_norm: bool = False,
        dropout: float = 0.0,
        aux_weights: dict[str, float] | None = None,
        dispatch: str = "auto",
        router: str = "topk",
        balance: str = "aux_loss",
        bias_rate: float = 1e-3,
        shared_experts: int = 0,
        hash_seed: int = 0,
        top1_probability: bool = False,
    ):
        super().__init__()
        if router not in ROUTERS or balance not in BALANCES:
            raise ValueError(f"router must be one of {ROUTERS} and balance one of {BALANCES}, got {router!r}, {balance!r}")
        if not 1 <= k <= num_experts:
            raise ValueError(f"k must be between 1 and num_experts={num_experts}, got {k}")
        for routing in (train_routing, eval_routing):
            if routing not in ROUTINGS:
                raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        unknown = set(aux_weights or {}) - set(AUX_LOSSES)
        if unknown:
            raise ValueError(f"unknown auxiliary losses {sorted(unknown)}; known: {', '.join(AUX_LOSSES)}")
        if dispatch not in ("auto", "grouped_mm", "loop"):
            raise ValueError(f"dispatch must be 'auto', 'grouped_mm' or 'loop', got {dispatch!r}")
        self.num_experts, self.k = num_experts, k
        self.train_routing, self.eval_routing = train_routing, eval_routing
        self.gate_noise, self.capacity_factor, self.dispatch = gate_noise, capacity_factor, dispatch
        self.temperature_start, self.temperature_end = temperature
        self.temperature = float(temperature[0])
        self.router_kind, self.balance, self.bias_rate = router, balance, bias_rate
        # top-1 weighted by its router probability instead of 1 (a softmax over one logit), so that the
        # router learns from the task loss and not only from a balance loss
        self.top1_probability = top1_probability
        self.aux_weights = {name: w for name, w in (aux_weights or {}).items()
                            if w > 0 and (balance == "aux_loss" or name not in BALANCE_LOSSES)}
        self.router = nn.Linear(d_in, num_experts)
        # softplus(x W_noise) is the learned per-expert noise scale of noisy top-k gating
        self.noise = nn.Linear(d_in, num_experts, bias=False) if noisy_gating else None
        add_experts(self, num_experts, d_in, d_hidden, d_out, batch_norm, dropout)
        self.reset_parameters(balanced_init)
        # created after every part today's models have, so that their initial weights are unchanged
        self.shared = SharedExperts(shared_experts, d_in, d_hidden, d_out, batch_norm, dropout) if shared_experts else None
        if router == "hash":  # no router: nothing to learn, nothing to balance
            self.router = None
        self.hash_seed = hash_seed
        if balance == "bias":  # no gradient: moved by after_step
            self.register_buffer("expert_bias", torch.zeros(num_experts))
        self._step_load: torch.Tensor | None = None  # tokens per expert of the last training batch (bias)
        self.expert_shard = None  # this rank's experts under expert parallelism (models/expert_parallel.py)

    def reset_parameters(self, balanced_init: bool = False) -> None:
        init_experts(self)
        if balanced_init:  # routing starts (almost) uniform: tiny weights break ties, no bias
            nn.init.normal_(self.router.weight, std=1e-3)
            nn.init.zeros_(self.router.bias)
        if self.noise is not None:
            nn.init.zeros_(self.noise.weight)

    def set_progress(self, fraction: float) -> None:
        """Anneal the gate temperature on a cosine from its start to its end value over training."""
        fraction = min(max(fraction, 0.0), 1.0)
        start, end = self.temperature_start, self.temperature_end
        self.temperature = end + (start - end) * 0.5 * (1 + math.cos(math.pi * fraction))

    @property
    def routing(self) -> str:
        return self.train_routing if self.training else self.eval_routing

    def forward(self, x: torch.Tensor, route_key: torch.Tensor | None = None) -> MoEOutput:
        """`route_key`: what the hash router hashes for each token (int64 token ids, or any tensor whose
        rows are hashed by value); the layer's input by default."""
        out = self._routed(x, route_key)
        if self.shared is not None:
            out.y = out.y + self.shared(x)
        return out

    def _routed(self, x: torch.Tensor, route_key: torch.Tensor | None) -> MoEOutput:
        if self.router is None:
            return self._hash_routed(x, x if route_key is None else route_key)
        logits = self.router(x).float() / self.temperature
        probs = logits.softmax(dim=-1)
        noisy_logits, noise_std = logits, None
        if self.training and self.noise is not None:
            noise_std = F.softplus(self.noise(x).float()) + 1e-2
            noisy_logits = logits + torch.randn_like(logits) * noise_std
        elif self.training and self.gate_noise > 0:
            noisy_logits = logits + torch.randn_like(logits) * self.gate_noise

        if self.routing == "soft":
            gates = noisy_logits.softmax(dim=-1) if noisy_logits is not logits else probs
            outputs = self._all_experts(x)
            y = torch.einsum("te,teo->to", gates.to(x.dtype), outputs)
            aux = self._aux_losses(logits, gates, None, outputs=outputs)
            return MoEOutput(y, probs, logits, None, None, aux)
        if self.router_kind == "expert_choice":
            return self._expert_choice(x, logits, probs)

        if self.router_kind == "sinkhorn":
            # balanced top-k in training; its weights are the plain router probabilities, so the router
            # learns through them (a softmax over one chosen expert would give it no gradient)
            choice = sinkhorn(logits.detach()) if self.training else probs
            expert_index = choice.topk(self.k, dim=-1).indices
            weights = probs.gather(1, expert_index)
            top_logits = None
        else:
            kk = min(self.k + 1, self.num_experts)
            if self.balance == "bias":  # the bias decides the choice, the unbiased scores the weights
                expert_index = (noisy_logits.softmax(dim=-1) + self.expert_bias).topk(self.k, dim=-1).indices
                top_logits = noisy_logits.topk(kk, dim=-1).values
                weights = noisy_logits.gather(1, expert_index).softmax(dim=-1)
            else:
                top_logits, top_index = noisy_logits.topk(kk, dim=-1)
                expert_index = top_index[:, : self.k]
                weights = top_logits[:, : self.k].softmax(dim=-1)
            if self.k == 1 and self.top1_probability:  # Switch: the chosen expert's router probability
                weights = probs.gather(1, expert_index)
        if self.training and self.balance == "bias":
            self._step_load = torch.bincount(expert_index.reshape(-1), minlength=self.num_experts).float()
        y, dropped, slot_outputs, processed = self._sparse(x, expert_index, weights.to(x.dtype))
        load = (torch.bincount(expert_index.reshape(-1), minlength=self.num_experts).float() if top_logits is None
                else self._shazeer_load(logits, noisy_logits, noise_std, top_logits, expert_index))
        aux = self._aux_losses(logits, probs, expert_index, weights=weights, load=load, outputs=slot_outputs)
        return MoEOutput(y, probs, logits, expert_index, weights, aux, dropped, processed)

    @torch.no_grad()
    def after_step(self) -> None:
        """Bias balancing (DeepSeek-V3): after each optimizer step, raise the bias of every expert that got
        fewer tokens than the mean in the last batch by `bias_rate`, lower the others'."""
        if self._step_load is not None:
            self.expert_bias.add_(self.bias_rate * torch.sign(self._step_load.mean() - self._step_load))
            self._step_load = None

    @property
    def batch_dependent(self) -> bool:
        """Whether a token's output depends on the other tokens of its batch at inference."""
        return self.router_kind == "expert_choice" and self.eval_routing == "topk"

    def _hash_routed(self, x: torch.Tensor, key: torch.Tensor) -> MoEOutput:
        expert_index = hash_experts(key, self.hash_seed, self.num_experts).unsqueeze(1)
        weights = torch.ones(len(x), 1, device=x.device)
        y, dropped, slot_outputs, processed = self._sparse(x, expert_index, weights.to(x.dtype))
        gates = F.one_hot(expert_index[:, 0], self.num_experts).float()
        aux = self._aux_losses(gates.log().clamp_min(-30.0), gates, expert_index, weights=weights, outputs=slot_outputs)
        return MoEOutput(y, gates, gates.log().clamp_min(-30.0), expert_index, weights, aux, dropped, processed)

    def _expert_choice(self, x: torch.Tensor, logits: torch.Tensor, probs: torch.Tensor) -> MoEOutput:
        """Each expert takes its c tokens of highest probability, c = ceil(capacity_factor * T * k / E)
        (Zhou et al. 2022); a token may be taken by several experts or by none (its routed output is 0)."""
        tokens = len(x)
        capacity = min(tokens, math.ceil((self.capacity_factor or 1.0) * tokens * self.k / self.num_experts))
        gate, chosen = probs.t().topk(capacity, dim=1)  # [E, c]
        rows = x[chosen.reshape(-1)]  # [E*c, d], grouped by expert
        sizes = [capacity] * self.num_experts
        h = torch.bmm(rows.view(self.num_experts, capacity, -1), self.w1) + self.b1.unsqueeze(1)
        if self.norm is not None:
            experts = torch.arange(self.num_experts, device=x.device).repeat_interleave(capacity)
            h = self.norm.grouped(h.reshape(-1, h.shape[-1]), experts, sizes).view_as(h)
        h = self.dropout(F.relu(h))
        out = (torch.bmm(h, self.w2) + self.b2.unsqueeze(1)) * gate.unsqueeze(-1).to(x.dtype)
        y = x.new_zeros(tokens, out.shape[-1]).index_add(0, chosen.reshape(-1), out.reshape(-1, out.shape[-1]))
        # for the analysis, a token's expert is the one that gave it the largest weight (its best by
        # probability when no expert took it)
        assigned = torch.zeros_like(probs)
        assigned[chosen.reshape(-1), torch.arange(self.num_experts, device=x.device).repeat_interleave(capacity)] = gate.reshape(-1)
        taken = assigned.amax(dim=1) > 0
        expert_index = torch.where(taken, assigned.argmax(dim=1), probs.argmax(dim=1)).unsqueeze(1)
        weights = assigned.gather(1, expert_index)
        aux = self._aux_losses(logits, probs, expert_index, weights=weights)
        processed = torch.full((self.num_experts,), capacity, device=x.device)
        return MoEOutput(y, probs, logits, expert_index, weights, aux, 1.0 - taken.float().mean(), processed)

    def flops_per_token(self) -> int:
        """Expert FLOPs of one token under the current routing (the router is an nn.Linear, counted apart)."""
        used = self.num_experts if self.routing == "soft" else self.k
        if self.shared is not None:
            used += self.shared.w1.shape[0]
        d_in, hidden = self.w1.shape[1:]
        return 2 * used * (d_in * hidden + hidden * self.w2.shape[2])

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert's output for every token, [T, E, d_out] (for analysis)."""
        return self._all_experts(x)

    # dispatch ------------------------------------------------------------------------------

    def _all_experts(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.einsum("td,edh->teh", x, self.w1) + self.b1
        if self.norm is not None:
            h = self.norm.all_experts(h)
        h = self.dropout(F.relu(h))
        return torch.einsum("teh,eho->teo", h, self.w2) + self.b2

    def _sparse(self, x, expert_index, weights):
        if self.expert_shard is not None:
            return self.expert_shard.sparse(self, x, expert_index, weights)
        tokens, k = expert_index.shape
        flat = expert_index.reshape(-1)
        order = torch.argsort(flat, stable=True)  # (token, slot) pairs grouped by expert
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        counts = torch.bincount(flat, minlength=self.num_experts)
        # one row per (token, slot) pair, grouped by expert; the backward pass gathers with the
        # inverse permutation and sums over slots (no scatter-add)
        grouped = gather_pairs(x, order, inverse, k)
        experts = flat[order]
        dropped = None
        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * tokens * k / self.num_experts)
            first = torch.cumsum(counts, 0) - counts  # where each expert's block starts
            keep = (torch.arange(len(order), device=x.device) - first[experts]) < capacity
            dropped = 1.0 - keep.float().mean()
            grouped, experts, counts = grouped[keep], experts[keep], counts.clamp(max=capacity)
        sizes = counts.tolist()
        h = add_segment_bias(self._grouped_matmul(grouped, self.w1, counts, sizes), self.b1, sizes)
        if self.norm is not None:
            h = self.norm.grouped(h, experts, sizes)
        h = self.dropout(F.relu(h, inplace=True))
        grouped_out = add_segment_bias(self._grouped_matmul(h, self.w2, counts, sizes), self.b2, sizes)
        if dropped is not None:  # pairs over capacity contribute zero
            grouped_out = grouped_out.new_zeros(len(order), grouped_out.shape[1]).index_put((keep.nonzero().flatten(),), grouped_out)
        slot_outputs = permute_rows(grouped_out, inverse, order).view(tokens, k, -1)  # back to (token, slot) order
        y = torch.bmm(weights.unsqueeze(1), slot_outputs).squeeze(1)  # weighted sum over the k slots
        return y, dropped, slot_outputs, counts

    def _grouped_matmul(self, rows: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """rows[i] @ weight[expert of row i], rows sorted by expert with `counts` rows each."""
        key = (rows.device.type, rows.dtype)
        # torch._grouped_mm wants rows of a multiple of 16 bytes on both sides
        aligned = all(dim * rows.element_size() % 16 == 0 for dim in (weight.shape[1], weight.shape[2]))
        if self.dispatch == "grouped_mm" and not aligned:
            raise ValueError(f"grouped_mm dispatch needs widths whose rows are multiples of 16 bytes, got {tuple(weight.shape[1:])}")
        # while torch.compile traces, the per-expert split is the graph it can compile
        if (self.dispatch != "loop" and aligned and hasattr(torch, "_grouped_mm") and key not in _GROUPED_MM_UNSUPPORTED
                and not torch.compiler.is_compiling()):
            try:
                return torch._grouped_mm(rows, weight, offs=torch.cumsum(counts, 0).to(torch.int32))
            except (RuntimeError, NotImplementedError):
                if self.dispatch == "grouped_mm":
                    raise
                _GROUPED_MM_UNSUPPORTED.add(key)
        blocks = rows.split(sizes)
        return torch.cat([block @ weight[e] for e, block in enumerate(blocks)])

    # auxiliary losses --------------------------------------------------------------------------

    def _shazeer_load(self, logits, noisy_logits, noise_std, top_logits, expert_index) -> torch.Tensor:
        """Expected number of tokens per expert (Shazeer et al. 2017), differentiable through the noise.

        For each expert: the probability that its noisy logit would still be in the top k if its
        noise were drawn again, the other experts' noisy logits fixed. The threshold it must beat
        is the k-th largest noisy logit if it is itself outside the top k, else the (k+1)-th. These
        are noisy *logits* on both sides. Without learned noise (or with k = E) the load is the
        hard count of tokens per expert.
        """
        if noise_std is None or self.k >= self.num_experts:
            return torch.bincount(expert_index.reshape(-1), minlength=self.num_experts).float()
        threshold_if_in = top_logits[:, self.k : self.k + 1]
        threshold_if_out = top_logits[:, self.k - 1 : self.k]
        is_in = noisy_logits > threshold_if_in
        # no argument validation: NaN logits of a diverging run must reach the loss, where the trainer
        # reports the divergence, instead of failing here
        normal = torch.distributions.Normal(0.0, 1.0, validate_args=False)
        prob_if_in = normal.cdf((logits - threshold_if_in) / noise_std)
        prob_if_out = normal.cdf((logits - threshold_if_out) / noise_std)
        return torch.where(is_in, prob_if_in, prob_if_out).sum(0)

    def _aux_losses(self, logits, gates, expert_index, weights=None, load=None, outputs=None) -> dict:
        if not self.training or not self.aux_weights:
            return {}
        losses = {}
        for name, weight in self.aux_weights.items():
            if name == "switch_balance":
                value = switch_balance(gates, expert_index, self.k)
            elif name == "cv_balance":
                importance = gates.sum(0) if weights is None else torch.zeros_like(gates).scatter(1, expert_index, weights).sum(0)
                value = cv_squared(importance) + (cv_squared(load) if load is not None else 0.0)
            elif name == "z_loss":
                value = router_z_loss(logits)
            elif name == "diversity":
                value = output_similarity(outputs)
            else:
                value = kl_to_uniform(gates)
            losses[name] = weight * value
        return losses


def add_experts(module: nn.Module, count: int, d_in: int, d_hidden: int, d_out: int, batch_norm: bool,
                dropout: float) -> None:
    """`count` two-layer MLP experts with stacked weights (w1: [count, d_in, d_hidden], b1, w2, b2), their
    batch norm and dropout, as attributes of `module`."""
    module.w1 = nn.Parameter(torch.empty(count, d_in, d_hidden))
    module.b1 = nn.Parameter(torch.empty(count, d_hidden))
    module.w2 = nn.Parameter(torch.empty(count, d_hidden, d_out))
    module.b2 = nn.Parameter(torch.empty(count, d_out))
    module.norm = ExpertBatchNorm(count, d_hidden) if batch_norm else None
    module.dropout = nn.Dropout(dropout)


def init_experts(module: nn.Module) -> None:
    """The distribution nn.Linear uses, per expert."""
    for w, b in ((module.w1, module.b1), (module.w2, module.b2)):
        bound = 1.0 / math.sqrt(w.shape[1])
        nn.init.uniform_(w, -bound, bound)
        nn.init.uniform_(b, -bound, bound)


class SharedExperts(nn.Module):
    """Always-on experts (DeepSeekMoE): every token goes through each of them; their outputs are summed."""

    def __init__(self, count: int, d_in: int, d_hidden: int, d_out: int, batch_norm: bool, dropout: float):
        super().__init__()
        add_experts(self, count, d_in, d_hidden, d_out, batch_norm, dropout)
        init_experts(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.einsum("td,edh->teh", x, self.w1) + self.b1
        if self.norm is not None:
            h = self.norm.all_experts(h)
        h = self.dropout(F.relu(h))
        return (torch.einsum("teh,eho->to", h, self.w2) + self.b2.sum(0)).to(x.dtype)


@torch.no_grad()
def sinkhorn(logits: torch.Tensor, iterations: int = SINKHORN_ITERATIONS) -> torch.Tensor:
    """A balanced assignment [T, E] from router logits: exp(logits) scaled alternately so every token's
    row sums to 1 and every expert's column to T/E (BASE layers' balanced assignment, relaxed)."""
    scores = (logits - logits.amax()).exp().double() + 1e-30
    tokens, experts = scores.shape
    for _ in range(iterations):
        scores = scores / scores.sum(dim=0, keepdim=True) * (tokens / experts)
        scores = scores / scores.sum(dim=1, keepdim=True)
    return scores.float()


def hash_experts(key: torch.Tensor, seed: int, num_experts: int) -> torch.Tensor:
    """A fixed expert per token from its key (Roller et al. 2021): int64 token ids [T], or rows of values
    [T, d] rounded to 1/4096 and combined with odd multipliers fixed by the seed (int64 products wrap);
    mixed like splitmix64, so similar keys land on unrelated experts and loads balance in expectation."""
    if key.dtype == torch.int64 and key.dim() == 1:
        q = key.unsqueeze(1)
    else:
        q = torch.round(key.reshape(len(key), -1).float() * 4096).long()
    columns = torch.arange(1, q.shape[1] + 1, device=key.device)
    offset = (seed * 0x2545F4914F6CDD1D) % 2**63  # a Python int: kept within int64 by hand
    multipliers = (columns * 0x9E3779B97F4A7C1 + offset) | 1
    h = (q * multipliers).sum(dim=1)
    h = h ^ (h >> 31)
    h = h * 0x5DEECE66D
    h = h ^ (h >> 29)
    return h.remainder(num_experts)


class ExpertBatchNorm(nn.Module):
    """Batch norm with statistics of its own for each expert, over the tokens that expert sees."""

    def __init__(self, num_experts: int, width: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(num_experts, width))
        self.bias = nn.Parameter(torch.zeros(num_experts, width))
        self.register_buffer("running_mean", torch.zeros(num_experts, width))
        self.register_buffer("running_var", torch.ones(num_experts, width))

    def all_experts(self, h: torch.Tensor) -> torch.Tensor:  # h: [T, E, H]
        if self.training and h.shape[0] > 1:
            mean, var = h.mean(0), h.var(0, unbiased=False)
            self._update(mean, var * h.shape[0] / (h.shape[0] - 1), torch.ones(h.shape[1], dtype=torch.bool, device=h.device))
        else:
            mean, var = self.running_mean, self.running_var
        return (h - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias

    def grouped(self, h: torch.Tensor, experts: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """h: [N, H], rows sorted by expert (`experts` per row, `sizes` rows per expert)."""
        if self.training:
            counts = torch.tensor(sizes, device=h.device)
            blocks = h.split(sizes)
            mean = torch.stack([b.mean(0) if len(b) else h.new_zeros(h.shape[1]) for b in blocks])
            var = torch.stack([b.var(0, unbiased=False) if len(b) else h.new_ones(h.shape[1]) for b in blocks])
            n = counts.clamp(min=2).unsqueeze(1).to(h.dtype)
            self._update(mean, var * n / (n - 1), counts > 1)
        else:
            mean, var = self.running_mean, self.running_var
        return (h - mean[experts]) / torch.sqrt(var[experts] + self.eps) * self.weight[experts] + self.bias[experts]

    @torch.no_grad()
    def _update(self, mean: torch.Tensor, unbiased_var: torch.Tensor, seen: torch.Tensor) -> None:
        m = self.momentum * seen.unsqueeze(1).to(mean.dtype)  # experts without tokens keep their stats
        self.running_mean.mul_(1 - m).add_(m * mean.detach())
        self.running_var.mul_(1 - m).add_(m * unbiased_var.detach())


class _GatherPairs(torch.autograd.Function):
    """x[order // k]: the token of each (token, slot) pair, in expert order. Its gradient is put back
    in pair order by the inverse permutation and summed over the k slots of each token."""

    @staticmethod
    def forward(ctx, x, order, inverse, k):
        ctx.save_for_backward(inverse)
        ctx.k = k
        return x[order // k]

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        per_pair = grad[inverse]
        return per_pair.view(-1, ctx.k, grad.shape[1]).sum(dim=1), None, None, None


def gather_pairs(x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor, k: int) -> torch.Tensor:
    return _GatherPairs.apply(x, order, inverse, k)


class _PermuteRows(torch.autograd.Function):
    """rows[perm], whose gradient is gathered back with the inverse permutation: faster than the
    scatter-add autograd would use for a general index, and deterministic."""

    @staticmethod
    def forward(ctx, rows, perm, inverse):
        ctx.save_for_backward(inverse)
        return rows[perm]

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad[inverse], None, None


def permute_rows(rows: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    return _PermuteRows.apply(rows, perm, inverse)


class _SegmentBias(torch.autograd.Function):
    """rows + bias[e] for consecutive blocks of `sizes[e]` rows; the bias gradient is a sum per block."""

    @staticmethod
    def forward(ctx, rows, bias, sizes):
        # in place: `rows` is a fresh matmul result that nothing else needs
        ctx.sizes = sizes
        ctx.mark_dirty(rows)
        for e, block in enumerate(rows.split(sizes)):
            block.add_(bias[e])
        return rows

    @staticmethod
    def backward(ctx, grad):
        sums = [block.sum(0) for block in grad.split(ctx.sizes)]
        return grad, torch.stack(sums), None


def add_segment_bias(rows: torch.Tensor, bias: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    return _SegmentBias.apply(rows, bias, sizes)


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation; 0 when all entries are equal (a balanced routing)."""
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.float().var(unbiased=False) / (x.float().mean() ** 2 + 1e-10)


def switch_balance(gates: torch.Tensor, expert_index: torch.Tensor | None, k: int) -> torch.Tensor:
    """Switch Transformer balance loss (E/k) * sum_i f_i * P_i: f_i the share of tokens sent to
    expert i (summing to k), P_i its mean router probability. Equals 1 for a perfectly balanced
    routing. Under soft routing, f_i is the share of tokens whose top expert is i."""
    num_experts = gates.shape[1]
    chosen = gates.argmax(dim=1, keepdim=True) if expert_index is None else expert_index
    k = chosen.shape[1]
    f = torch.bincount(chosen.reshape(-1), minlength=num_experts).float() / gates.shape[0]
    return num_experts / k * (f * gates.float().mean(0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean(logsumexp(z)^2): keeps router logits small (ST-MoE)."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def kl_to_uniform(gates: torch.Tensor) -> torch.Tensor:
    """KL(mean gate || uniform): 0 when experts get equal probability mass on average."""
    mean = gates.float().mean(0).clamp_min(1e-12)
    return (mean * (mean * gates.shape[1]).log()).sum()


def output_similarity(outputs: torch.Tensor | None) -> torch.Tensor:
    """Mean pairwise cosine similarity of the expert outputs each token received ([T, n, d], n >= 2);
    penalising it pushes experts to produce different outputs. 0 when a token sees one expert."""
    if outputs is None or outputs.shape[1] < 2:
        return torch.zeros((), device=outputs.device if outputs is not None else None)
    unit = F.normalize(outputs.float(), dim=-1)
    sims = unit @ unit.transpose(1, 2)  # [T, n, n]
    n = outputs.shape[1]
    off_diagonal = sims.sum(dim=(1, 2)) - sims.diagonal(dim1=1, dim2=2).sum(dim=1)
    return (off_diagonal / (n * (n - 1))).mean()
