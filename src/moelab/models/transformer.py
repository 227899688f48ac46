"""Byte-level causal transformers (nanoGPT's shape): token and position embeddings, pre-norm blocks of
causal self-attention and an MLP, a final layer norm and an output layer tied to the token embedding.

    transformer      every block's MLP is dense: linear, ReLU, dropout, linear (the same shape as one expert)
    moe_transformer  the MLP of every `moe_every`-th block is an MoE layer (models/moe.py) with its router,
                     balancing, shared and fine-grained experts

An MoE layer sees the tokens of a batch position-major (every sequence's first token, then every
second...), so an expert's capacity is filled by earlier positions first: a token is never dropped
because of a later one, and the model stays causal. The hash router hashes each token's byte.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moelab.models.base import Model, ModelOutput, Routing, count_flops
from moelab.models.moe import MoE, SharedExperts
from moelab.models.params import MoETransformerParams, TransformerParams


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class DenseMLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.up, self.down, self.dropout = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.down(self.dropout(F.relu(self.up(x)))), None


class MoEMLP(nn.Module):
    """An MoE layer in place of a block's MLP, on tokens in position-major order (causal capacity)."""

    def __init__(self, p: MoETransformerParams):
        super().__init__()
        m = p.granularity
        self.moe = MoE(p.d_model, p.d_ff // m, p.d_model, p.num_experts * m, p.k * m, dropout=p.dropout,
                       aux_weights={"switch_balance": p.switch_balance, "z_loss": p.z_loss},
                       noisy_gating=p.noisy_gating, capacity_factor=p.capacity_factor, router=p.router,
                       balance=p.balance, bias_rate=p.bias_rate, shared_experts=p.shared_experts,
                       hash_seed=p.hash_seed, top1_probability=True)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor):
        b, t, d = x.shape
        out = self.moe(x.transpose(0, 1).reshape(t * b, d), route_key=token_ids.t().reshape(-1))
        return out.y.view(t, b, d).transpose(0, 1), out


class Block(nn.Module):
    def __init__(self, p: TransformerParams, mlp: nn.Module):
        super().__init__()
        self.ln1, self.attention = nn.LayerNorm(p.d_model), CausalSelfAttention(p.d_model, p.heads, p.dropout)
        self.ln2, self.mlp = nn.LayerNorm(p.d_model), mlp
        self.dropout = nn.Dropout(p.dropout)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor):
        x = x + self.dropout(self.attention(self.ln1(x)))
        y, routed = self.mlp(self.ln2(x), token_ids)
        return x + self.dropout(y), routed


class Transformer(Model):
    """Inputs: byte ids [B, T] (any integer dtype), T at most the context; outputs: next-byte logits [B, T, V]."""

    def __init__(self, d_in: int, d_out: int, p: TransformerParams, input_shape=None):
        super().__init__()
        self.context, self.params = d_in, p
        self.token_embedding = nn.Embedding(d_out, p.d_model)
        self.position_embedding = nn.Embedding(d_in, p.d_model)
        self.embedding_dropout = nn.Dropout(p.dropout)
        moe = set(p.moe_blocks())
        self.blocks = nn.ModuleList(Block(p, MoEMLP(p) if i in moe else DenseMLP(p.d_model, p.d_ff, p.dropout))
                                    for i in range(p.layers))
        self.ln_f = nn.LayerNorm(p.d_model)
        self.apply(_init_weights)
        self._counts = p.parameter_counts(d_in, d_out)

    @property
    def moe_layers(self) -> list[MoE]:
        return [block.mlp.moe for block in self.blocks if isinstance(block.mlp, MoEMLP)]

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        token_ids = x.long()
        b, t = token_ids.shape
        if t > self.context:
            raise ValueError(f"a window of {t} bytes is longer than the model's context of {self.context}")
        h = self.embedding_dropout(self.token_embedding(token_ids) + self.position_embedding.weight[:t])
        layers: list[Routing] = []
        aux: dict[str, torch.Tensor] = {}
        dropped = []
        for block in self.blocks:
            h, routed = block(h, token_ids)
            if routed is None:
                continue
            # back to batch-major order: row b * T + t is token t of sequence b, as in y
            order = torch.arange(t * b, device=h.device).view(t, b).t().reshape(-1)
            layers.append(Routing(routed.gate_probs[order], routed.expert_index[order], routed.expert_weights[order],
                                  routed.expert_load))
            for name, value in routed.aux_losses.items():
                aux[name] = aux[name] + value / len(self.moe_layers) if name in aux else value / len(self.moe_layers)
            if routed.dropped_fraction is not None:
                dropped.append(routed.dropped_fraction)
        logits = self.ln_f(h) @ self.token_embedding.weight.t()
        first = layers[0] if layers else Routing(None, None, None, None)
        return ModelOutput(y=logits, aux_losses=aux, gate_probs=first.gate_probs, expert_index=first.expert_index,
                           expert_weights=first.expert_weights, expert_load=first.expert_load, layers=layers,
                           metrics={"dropped": torch.stack(dropped).mean()} if dropped else {})

    def after_step(self) -> None:
        for moe in self.moe_layers:
            moe.after_step()

    def active_parameters(self) -> int:
        return self._counts.active

    def flops_per_sample(self, d_in: int) -> int:
        """Of one window of the context: the linear layers and experts (hooks), and attention's two matrix
        products (scores and mixing, causal mask ignored)."""
        counted = count_window_flops(self, self.context)
        return counted + self.params.layers * 4 * self.context * self.context * self.params.d_model


def count_window_flops(model: Transformer, context: int) -> int:
    return count_flops(model, context, sample=torch.zeros(1, context, dtype=torch.long))


def _init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation, for dense MLPs and experts alike (so their comparison starts equal)."""
    if isinstance(module, nn.Linear) and module.bias is not None:  # not the noise projection (zeros, moe.py)
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    elif isinstance(module, (MoE, SharedExperts)):  # stacked expert weights
        for weight, bias in ((module.w1, module.b1), (module.w2, module.b2)):
            nn.init.normal_(weight, std=0.02)
            nn.init.zeros_(bias)
