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

from moelab.models.base import dropout, group_linear
from moelab.models.params import AUX_LOSSES, BALANCE_LOSSES, BALANCES, ROUTERS

ROUTINGS = ("soft", "topk")
SINKHORN_ITERATIONS = 8
_GROUPED_MM_UNSUPPORTED: set[tuple[str, torch.dtype]] = set()


@dataclass
class MoEOutput:
    """A layer's output for one model; MoE.route gives the same fields with a leading model dimension."""

    y: torch.Tensor  # [T, d_out]
    gate_probs: torch.Tensor  # [T, E] softmax of the (tempered) router logits, before noise
    router_logits: torch.Tensor  # [T, E] float32, tempered
    expert_index: torch.Tensor | None  # [T, k] chosen experts; None under soft routing
    expert_weights: torch.Tensor | None  # [T, k] their mixing weights
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)  # weighted, by name
    dropped_fraction: torch.Tensor | None = None  # share of (token, slot) pairs over capacity
    expert_load: torch.Tensor | None = None  # [E] (token, expert) pairs each expert processed (sparse routing)
    choice_counts: torch.Tensor | None = None  # [E] tokens each expert was chosen for (bias balancing, training)

    def of_model(self, g: int) -> MoEOutput:
        """Model g's part of a group's output."""
        pick = lambda t: None if t is None else t[g]  # noqa: E731
        return MoEOutput(self.y[g], self.gate_probs[g], self.router_logits[g], pick(self.expert_index),
                         pick(self.expert_weights), {name: v[g] for name, v in self.aux_losses.items()},
                         pick(self.dropped_fraction), pick(self.expert_load), pick(self.choice_counts))


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
        out = self.route(x.unsqueeze(0), None if route_key is None else route_key.unsqueeze(0), self.weights())
        if out.choice_counts is not None:
            self._step_load = out.choice_counts[0]
        return out.of_model(0)

    def weights(self) -> LayerWeights:
        """This layer's weights, as the one model of a group."""
        router, shared = self.router, self.shared
        return LayerWeights(
            router_weight=None if router is None else router.weight.unsqueeze(0),
            router_bias=None if router is None else router.bias.unsqueeze(0),
            noise_weight=None if self.noise is None else self.noise.weight.unsqueeze(0),
            w1=self.w1, b1=self.b1, w2=self.w2, b2=self.b2,
            expert_bias=self.expert_bias.unsqueeze(0) if self.balance == "bias" else None,
            shared=None if shared is None else (shared.w1, shared.b1, shared.w2, shared.b2),
            norm=None if self.norm is None else self.norm.state(),
            shared_norm=None if shared is None or shared.norm is None else shared.norm.state())

    def route(self, x: torch.Tensor, route_key: torch.Tensor | None, weights: LayerWeights,
              generators: list[torch.Generator] | None = None) -> MoEOutput:
        """The layer for G models at once with this layer's settings: x [G, T, d_in], each model's tokens
        routed among its own experts; every field of the output has a leading model dimension (the
        auxiliary losses and the dropped share: [G]). `generators`: one per model, for its random draws
        (gate noise, dropout); None: torch's default generator, as for a layer of its own."""
        out = self._routed(x, route_key, weights, generators)
        if weights.shared is not None:
            out.y = out.y + self._shared(x, weights, generators)
        return out

    def _routed(self, x, route_key, weights: LayerWeights, generators) -> MoEOutput:
        if weights.router_weight is None:
            return self._hash_routed(x, x if route_key is None else route_key, weights, generators)
        logits = group_linear(x, weights.router_weight, weights.router_bias).float() / self.temperature
        probs = logits.softmax(dim=-1)
        noisy_logits, noise_std = logits, None
        if self.training and weights.noise_weight is not None:
            noise_std = F.softplus(group_linear(x, weights.noise_weight, None).float()) + 1e-2
            noisy_logits = logits + normal_like(logits, generators) * noise_std
        elif self.training and self.gate_noise > 0:
            noisy_logits = logits + normal_like(logits, generators) * self.gate_noise

        if self.routing == "soft":
            gates = noisy_logits.softmax(dim=-1) if noisy_logits is not logits else probs
            outputs = self._all_experts(x, weights, generators)
            y = torch.einsum("gte,gteo->gto", gates.to(x.dtype), outputs)
            aux = self._aux_losses(logits, gates, None, outputs=outputs)
            return MoEOutput(y, probs, logits, None, None, aux)
        if self.router_kind == "expert_choice":
            return self._expert_choice(x, logits, probs, weights, generators)

        if self.router_kind == "sinkhorn":
            # balanced top-k in training; its weights are the plain router probabilities, so the router
            # learns through them (a softmax over one chosen expert would give it no gradient)
            choice = sinkhorn(logits.detach()) if self.training else probs
            expert_index = choice.topk(self.k, dim=-1).indices
            mix = probs.gather(-1, expert_index)
            top_logits = None
        else:
            kk = min(self.k + 1, self.num_experts)
            if self.balance == "bias":  # the bias decides the choice, the unbiased scores the weights
                biased = noisy_logits.softmax(dim=-1) + weights.expert_bias.unsqueeze(1)
                expert_index = biased.topk(self.k, dim=-1).indices
                top_logits = noisy_logits.topk(kk, dim=-1).values
                mix = noisy_logits.gather(-1, expert_index).softmax(dim=-1)
            else:
                top_logits, top_index = noisy_logits.topk(kk, dim=-1)
                expert_index = top_index[..., : self.k]
                mix = top_logits[..., : self.k].softmax(dim=-1)
            if self.k == 1 and self.top1_probability:  # Switch: the chosen expert's router probability
                mix = probs.gather(-1, expert_index)
        counts = expert_counts(expert_index, self.num_experts)
        y, dropped, slot_outputs, processed = self._sparse(x, expert_index, mix.to(x.dtype), weights, generators)
        load = (counts.float() if top_logits is None
                else self._shazeer_load(logits, noisy_logits, noise_std, top_logits, counts))
        aux = self._aux_losses(logits, probs, expert_index, weights=mix, load=load, outputs=slot_outputs)
        chosen = counts.float() if self.training and self.balance == "bias" else None
        return MoEOutput(y, probs, logits, expert_index, mix, aux, dropped, processed, chosen)

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

    def _hash_routed(self, x, key, weights: LayerWeights, generators) -> MoEOutput:
        models, tokens = x.shape[:2]
        expert_index = hash_experts(key.reshape(models * tokens, *key.shape[2:]), self.hash_seed,
                                    self.num_experts).view(models, tokens, 1)
        mix = torch.ones(models, tokens, 1, device=x.device)
        y, dropped, slot_outputs, processed = self._sparse(x, expert_index, mix.to(x.dtype), weights, generators)
        gates = F.one_hot(expert_index[..., 0], self.num_experts).float()
        aux = self._aux_losses(gates.log().clamp_min(-30.0), gates, expert_index, weights=mix, outputs=slot_outputs)
        return MoEOutput(y, gates, gates.log().clamp_min(-30.0), expert_index, mix, aux, dropped, processed)

    def _expert_choice(self, x, logits, probs, weights: LayerWeights, generators) -> MoEOutput:
        """Each expert takes its c tokens of highest probability, c = ceil(capacity_factor * T * k / E)
        (Zhou et al. 2022); a token may be taken by several experts or by none (its routed output is 0)."""
        models, tokens, _ = x.shape
        experts = self.num_experts
        capacity = min(tokens, math.ceil((self.capacity_factor or 1.0) * tokens * self.k / experts))
        gate, chosen = probs.transpose(1, 2).topk(capacity, dim=-1)  # [G, E, c]
        token = (chosen + torch.arange(models, device=x.device).view(-1, 1, 1) * tokens).reshape(-1)  # in x's G * T rows
        rows = x.reshape(models * tokens, -1)[token]  # [G * E * c, d], grouped by expert
        h = torch.bmm(rows.view(models * experts, capacity, -1), weights.w1) + weights.b1.unsqueeze(1)
        expert_of_row = torch.arange(experts, device=x.device).repeat_interleave(capacity)
        if self.norm is not None:
            h = self.norm.grouped(h.reshape(-1, h.shape[-1]), torch.arange(models * experts, device=x.device).repeat_interleave(capacity),
                                  [capacity] * (models * experts), weights.norm).view_as(h)
        h = dropout(F.relu(h), self.dropout_p, self.training, generators)
        out = (torch.bmm(h, weights.w2) + weights.b2.unsqueeze(1)) * gate.reshape(models * experts, capacity, 1).to(x.dtype)
        y = x.new_zeros(models * tokens, out.shape[-1]).index_add(0, token, out.reshape(-1, out.shape[-1]))
        # for the analysis, a token's expert is the one that gave it the largest weight (its best by
        # probability when no expert took it)
        assigned = torch.zeros_like(probs)
        assigned.view(models * tokens, experts)[token, expert_of_row.repeat(models)] = gate.reshape(-1)
        taken = assigned.amax(dim=-1) > 0
        expert_index = torch.where(taken, assigned.argmax(dim=-1), probs.argmax(dim=-1)).unsqueeze(-1)
        mix = assigned.gather(-1, expert_index)
        aux = self._aux_losses(logits, probs, expert_index, weights=mix)
        processed = torch.full((models, experts), capacity, device=x.device)
        return MoEOutput(y.view(models, tokens, -1), probs, logits, expert_index, mix, aux,
                         1.0 - taken.float().mean(dim=-1), processed)

    def flops_per_token(self) -> int:
        """FLOPs of one token under the current routing: its router and the experts it uses."""
        used = self.num_experts if self.routing == "soft" else self.k
        if self.shared is not None:
            used += self.shared.w1.shape[0]
        d_in, hidden = self.w1.shape[1:]
        router = 0 if self.router is None else 2 * self.router.in_features * self.router.out_features
        return router + 2 * used * (d_in * hidden + hidden * self.w2.shape[2])

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert's output for every token, [T, E, d_out] (for analysis)."""
        return self._all_experts(x.unsqueeze(0), self.weights(), None)[0]

    # dispatch ------------------------------------------------------------------------------

    def _all_experts(self, x, weights: LayerWeights, generators) -> torch.Tensor:
        """[G, T, E, d_out]: every expert of each model on each of its tokens."""
        models, experts = x.shape[0], self.num_experts
        h = (torch.einsum("gtd,gedh->gteh", x, weights.w1.view(models, experts, *weights.w1.shape[1:]))
             + weights.b1.view(models, 1, experts, -1))
        if self.norm is not None:
            h = self.norm.all_experts(h, weights.norm)
        h = dropout(F.relu(h), self.dropout_p, self.training, generators)
        return (torch.einsum("gteh,geho->gteo", h, weights.w2.view(models, experts, *weights.w2.shape[1:]))
                + weights.b2.view(models, 1, experts, -1))

    def _shared(self, x, weights: LayerWeights, generators) -> torch.Tensor:
        """The shared experts' summed output for every token, [G, T, d_out]."""
        w1, b1, w2, b2 = weights.shared
        models = x.shape[0]
        count = w1.shape[0] // models
        h = torch.einsum("gtd,gsdh->gtsh", x, w1.view(models, count, *w1.shape[1:])) + b1.view(models, 1, count, -1)
        if self.shared.norm is not None:
            h = self.shared.norm.all_experts(h, weights.shared_norm)
        h = dropout(F.relu(h), self.shared.dropout_p, self.training, generators)
        y = torch.einsum("gtsh,gsho->gto", h, w2.view(models, count, *w2.shape[1:]))
        return (y + b2.view(models, count, -1).sum(1, keepdim=True)).to(x.dtype)

    def _sparse(self, x, expert_index, mix, weights: LayerWeights, generators):
        if self.expert_shard is not None:
            return self.expert_shard.sparse(self, x, expert_index, mix, weights, generators)
        models, tokens, k = expert_index.shape
        experts = self.num_experts
        # model g's experts are experts g * E ... g * E + E - 1 of one layer of G * E experts
        flat = (expert_index + torch.arange(models, device=x.device).view(-1, 1, 1) * experts).reshape(-1)
        order = torch.argsort(flat, stable=True)  # (token, slot) pairs grouped by expert, so by model
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        counts = torch.bincount(flat, minlength=models * experts)
        # one row per (token, slot) pair, grouped by expert; the backward pass gathers with the
        # inverse permutation and sums over slots (no scatter-add)
        grouped = gather_pairs(x.reshape(models * tokens, -1), order, inverse, k)
        expert_of_row = flat[order]
        dropped = None
        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * tokens * k / experts)
            first = torch.cumsum(counts, 0) - counts  # where each expert's block starts
            keep = (torch.arange(len(order), device=x.device) - first[expert_of_row]) < capacity
            dropped = 1.0 - keep.view(models, tokens * k).float().mean(dim=1)  # a model's pairs are one block
            grouped, expert_of_row, counts = grouped[keep], expert_of_row[keep], counts.clamp(max=capacity)
        sizes = counts.tolist()
        h = add_segment_bias(self._grouped_matmul(grouped, weights.w1, counts, sizes), weights.b1, counts)
        if self.norm is not None:
            h = self.norm.grouped(h, expert_of_row, sizes, weights.norm)
        rows_per_model = [sum(sizes[g * experts:(g + 1) * experts]) for g in range(models)]
        h = dropout(F.relu(h, inplace=True), self.dropout_p, self.training, generators, rows_per_model)
        grouped_out = add_segment_bias(self._grouped_matmul(h, weights.w2, counts, sizes), weights.b2, counts)
        if dropped is not None:  # pairs over capacity contribute zero
            grouped_out = grouped_out.new_zeros(len(order), grouped_out.shape[1]).index_put((keep.nonzero().flatten(),), grouped_out)
        slot_outputs = permute_rows(grouped_out, inverse, order).view(models * tokens, k, -1)  # (token, slot) order
        y = torch.bmm(mix.reshape(models * tokens, 1, k), slot_outputs).squeeze(1)  # weighted sum over the k slots
        return (y.view(models, tokens, -1), dropped, slot_outputs.view(models, tokens, k, -1),
                counts.view(models, experts))

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

    def _shazeer_load(self, logits, noisy_logits, noise_std, top_logits, counts) -> torch.Tensor:
        """Expected number of tokens per expert (Shazeer et al. 2017), differentiable through the noise.

        For each expert: the probability that its noisy logit would still be in the top k if its
        noise were drawn again, the other experts' noisy logits fixed. The threshold it must beat
        is the k-th largest noisy logit if it is itself outside the top k, else the (k+1)-th. These
        are noisy *logits* on both sides. Without learned noise (or with k = E) the load is the
        hard count of tokens per expert (`counts`).
        """
        if noise_std is None or self.k >= self.num_experts:
            return counts.float()
        threshold_if_in = top_logits[..., self.k : self.k + 1]
        threshold_if_out = top_logits[..., self.k - 1 : self.k]
        is_in = noisy_logits > threshold_if_in
        # no argument validation: NaN logits of a diverging run must reach the loss, where the trainer
        # reports the divergence, instead of failing here
        normal = torch.distributions.Normal(0.0, 1.0, validate_args=False)
        prob_if_in = normal.cdf((logits - threshold_if_in) / noise_std)
        prob_if_out = normal.cdf((logits - threshold_if_out) / noise_std)
        return torch.where(is_in, prob_if_in, prob_if_out).sum(-2)

    def _aux_losses(self, logits, gates, expert_index, weights=None, load=None, outputs=None) -> dict:
        """Each weighted auxiliary loss of each model, [G]."""
        if not self.training or not self.aux_weights:
            return {}
        losses = {}
        for name, weight in self.aux_weights.items():
            if name == "switch_balance":
                value = switch_balance(gates, expert_index, self.k)
            elif name == "cv_balance":
                importance = (gates.sum(-2) if weights is None
                              else torch.zeros_like(gates).scatter(-1, expert_index, weights).sum(-2))
                value = cv_squared(importance) + (cv_squared(load) if load is not None else 0.0)
            elif name == "z_loss":
                value = router_z_loss(logits)
            elif name == "diversity":
                value = output_similarity(outputs)
            else:
                value = kl_to_uniform(gates)
            losses[name] = weight * value
        return losses


@dataclass
class LayerWeights:
    """A MoE layer's weights for G models of the same architecture at once (a layer of its own: G = 1):
    routers [G, E, d_in] and [G, E]; experts stacked model after model, [G * E, ...], so that model g's
    experts are experts g * E ... g * E + E - 1 of one layer of G * E experts."""

    router_weight: torch.Tensor | None  # None: the hash router
    router_bias: torch.Tensor | None
    noise_weight: torch.Tensor | None  # learned noise (noisy top-k)
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    expert_bias: torch.Tensor | None  # [G, E], bias balancing
    shared: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None  # shared experts' w1, b1, w2, b2
    norm: NormState | None = None  # batch norm inside the experts
    shared_norm: NormState | None = None


def normal_like(t: torch.Tensor, generators: list[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise shaped like t [G, ...], each model's from its own generator."""
    if generators is None:
        return torch.randn_like(t)
    return torch.stack([torch.randn(t.shape[1:], generator=g, device=t.device, dtype=t.dtype) for g in generators])


def expert_counts(expert_index: torch.Tensor, num_experts: int) -> torch.Tensor:
    """[G, E]: the (token, slot) pairs each model sent to each of its experts; expert_index [G, T, k]."""
    models = expert_index.shape[0]
    offset = torch.arange(models, device=expert_index.device).view(-1, 1, 1) * num_experts
    return torch.bincount((expert_index + offset).reshape(-1), minlength=models * num_experts).view(models, num_experts)


def add_experts(module: nn.Module, count: int, d_in: int, d_hidden: int, d_out: int, batch_norm: bool,
                dropout: float) -> None:
    """`count` two-layer MLP experts with stacked weights (w1: [count, d_in, d_hidden], b1, w2, b2), their
    batch norm and dropout, as attributes of `module`."""
    module.w1 = nn.Parameter(torch.empty(count, d_in, d_hidden))
    module.b1 = nn.Parameter(torch.empty(count, d_hidden))
    module.w2 = nn.Parameter(torch.empty(count, d_hidden, d_out))
    module.b2 = nn.Parameter(torch.empty(count, d_out))
    module.norm = ExpertBatchNorm(count, d_hidden) if batch_norm else None
    module.dropout_p = dropout


def init_experts(module: nn.Module) -> None:
    """The distribution nn.Linear uses, per expert."""
    for w, b in ((module.w1, module.b1), (module.w2, module.b2)):
        bound = 1.0 / math.sqrt(w.shape[1])
        nn.init.uniform_(w, -bound, bound)
        nn.init.uniform_(b, -bound, bound)


class SharedExperts(nn.Module):
    """Always-on experts (DeepSeekMoE): every token goes through each of them; their outputs are summed
    (MoE._shared)."""

    def __init__(self, count: int, d_in: int, d_hidden: int, d_out: int, batch_norm: bool, dropout: float):
        super().__init__()
        add_experts(self, count, d_in, d_hidden, d_out, batch_norm, dropout)
        init_experts(self)


@torch.no_grad()
def sinkhorn(logits: torch.Tensor, iterations: int = SINKHORN_ITERATIONS) -> torch.Tensor:
    """A balanced assignment [..., T, E] from router logits: exp(logits) scaled alternately so every
    token's row sums to 1 and every expert's column to T/E (BASE layers' balanced assignment, relaxed)."""
    scores = (logits - logits.amax(dim=(-2, -1), keepdim=True)).exp().double() + 1e-30
    tokens, experts = scores.shape[-2:]
    for _ in range(iterations):
        scores = scores / scores.sum(dim=-2, keepdim=True) * (tokens / experts)
        scores = scores / scores.sum(dim=-1, keepdim=True)
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


@dataclass
class NormState:
    """An ExpertBatchNorm's parameters and running statistics, [G * E, H] for G models (G = 1: its own)."""

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor


class ExpertBatchNorm(nn.Module):
    """Batch norm with statistics of its own for each expert, over the tokens that expert sees."""

    def __init__(self, num_experts: int, width: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(num_experts, width))
        self.bias = nn.Parameter(torch.zeros(num_experts, width))
        self.register_buffer("running_mean", torch.zeros(num_experts, width))
        self.register_buffer("running_var", torch.ones(num_experts, width))

    def state(self) -> NormState:
        return NormState(self.weight, self.bias, self.running_mean, self.running_var)

    def all_experts(self, h: torch.Tensor, state: NormState) -> torch.Tensor:  # h: [G, T, E, H]
        models, tokens, experts, width = h.shape
        if self.training and tokens > 1:
            mean, var = h.mean(1), h.var(1, unbiased=False)
            self._update(state, mean.flatten(0, 1), (var * tokens / (tokens - 1)).flatten(0, 1),
                         torch.ones(models * experts, dtype=torch.bool, device=h.device))
        else:
            mean, var = state.running_mean.view(models, experts, width), state.running_var.view(models, experts, width)
        shape = (models, 1, experts, width)
        return ((h - mean.unsqueeze(1)) / torch.sqrt(var.unsqueeze(1) + self.eps) * state.weight.view(shape)
                + state.bias.view(shape))

    def grouped(self, h: torch.Tensor, experts: torch.Tensor, sizes: list[int], state: NormState) -> torch.Tensor:
        """h: [N, H], rows sorted by expert (`experts` per row, `sizes` rows per expert)."""
        if self.training:  # every expert's statistics at once, over its own block of rows
            counts = torch.tensor(sizes, device=h.device)
            rows = counts.clamp(min=1).unsqueeze(1).to(h.dtype)
            mean = segment_sum(h, counts) / rows
            var = segment_sum((h - mean[experts]).square(), counts) / rows
            var = torch.where(counts.unsqueeze(1) > 0, var, torch.ones_like(var))  # no rows: the identity
            n = counts.clamp(min=2).unsqueeze(1).to(h.dtype)
            self._update(state, mean, var * n / (n - 1), counts > 1)
        else:
            mean, var = state.running_mean, state.running_var
        return (h - mean[experts]) / torch.sqrt(var[experts] + self.eps) * state.weight[experts] + state.bias[experts]

    @torch.no_grad()
    def _update(self, state: NormState, mean: torch.Tensor, unbiased_var: torch.Tensor, seen: torch.Tensor) -> None:
        m = self.momentum * seen.unsqueeze(1).to(mean.dtype)  # experts without tokens keep their stats
        state.running_mean.mul_(1 - m).add_(m * mean.detach())
        state.running_var.mul_(1 - m).add_(m * unbiased_var.detach())


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
    """rows + bias[e] for consecutive blocks of `counts[e]` rows; the bias gradient is a sum per block
    (segment_reduce: one kernel for every block, deterministic, unlike a scatter-add)."""

    @staticmethod
    def forward(ctx, rows, bias, counts):
        # in place: `rows` is a fresh matmul result that nothing else needs
        ctx.save_for_backward(counts)
        ctx.mark_dirty(rows)
        return rows.add_(bias.repeat_interleave(counts, dim=0, output_size=len(rows)))

    @staticmethod
    def backward(ctx, grad):
        (counts,) = ctx.saved_tensors
        return grad, segment_sum(grad, counts), None


def add_segment_bias(rows: torch.Tensor, bias: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    return _SegmentBias.apply(rows, bias, counts)


def segment_sum(rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[len(counts), ...]: the sum of each block of counts[e] consecutive rows (0 for an empty block)."""
    return torch.segment_reduce(rows, "sum", lengths=counts, axis=0, unsafe=True)


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation over the last dimension; 0 when all entries are equal (a balanced
    routing)."""
    if x.shape[-1] <= 1:
        return x.new_zeros(x.shape[:-1])
    return x.float().var(dim=-1, unbiased=False) / (x.float().mean(dim=-1) ** 2 + 1e-10)


def switch_balance(gates: torch.Tensor, expert_index: torch.Tensor | None, k: int) -> torch.Tensor:
    """Switch Transformer balance loss (E/k) * sum_i f_i * P_i: f_i the share of tokens sent to
    expert i (summing to k), P_i its mean router probability. Equals 1 for a perfectly balanced
    routing. Under soft routing, f_i is the share of tokens whose top expert is i. gates [..., T, E]."""
    num_experts = gates.shape[-1]
    chosen = gates.argmax(dim=-1, keepdim=True) if expert_index is None else expert_index
    k = chosen.shape[-1]
    f = F.one_hot(chosen, num_experts).sum(dim=(-3, -2)).float() / gates.shape[-2]
    return num_experts / k * (f * gates.float().mean(-2)).sum(-1)


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean(logsumexp(z)^2) over the tokens: keeps router logits small (ST-MoE)."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean(-1)


def kl_to_uniform(gates: torch.Tensor) -> torch.Tensor:
    """KL(mean gate || uniform): 0 when experts get equal probability mass on average."""
    mean = gates.float().mean(-2).clamp_min(1e-12)
    return (mean * (mean * gates.shape[-1]).log()).sum(-1)


def output_similarity(outputs: torch.Tensor | None) -> torch.Tensor:
    """Mean pairwise cosine similarity of the expert outputs each token received ([..., T, n, d], n >= 2);
    penalising it pushes experts to produce different outputs. 0 when a token sees one expert."""
    if outputs is None or outputs.shape[-2] < 2:
        return torch.zeros(() if outputs is None else outputs.shape[:-3], device=None if outputs is None else outputs.device)
    unit = F.normalize(outputs.float(), dim=-1)
    sims = unit @ unit.transpose(-1, -2)  # [..., T, n, n]
    n = outputs.shape[-2]
    off_diagonal = sims.sum(dim=(-2, -1)) - sims.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    return (off_diagonal / (n * (n - 1))).mean(-1)
