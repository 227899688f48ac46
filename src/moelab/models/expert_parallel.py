"""Expert parallelism: the experts of an MoE layer sharded over the ranks of a process group.

    shard_experts(moe)        # after torch.distributed.init_process_group; every rank, the same moe
    out = moe(x_of_this_rank) # tokens travel to the rank holding their expert and back

Each rank keeps the router (replicated, like any data-parallel weight) and E / P consecutive experts:
rank r holds experts r*E/P .. (r+1)*E/P - 1, sliced from the full layer, so a layer built with the same
seed on every rank starts as the single-process layer would. In the forward pass each rank routes its
own tokens, sorts its (token, slot) pairs by expert (the layer's own dispatch), sends each rank the
pairs of that rank's experts with one `all_to_all_single`, runs its experts on everything it received,
and sends the results back with a second one; the backward pass is the same two exchanges with the
sizes swapped. An expert receives its pairs in source-rank order, and within a rank in token order, so
the per-expert batch norm sees exactly the tokens the single-process layer would give it.

The gradient an expert's weights receive is the sum over every rank's tokens: for the gradient of the
mean of the ranks' losses (what DistributedDataParallel averages the replicated weights to), divide
the experts' gradients by P (`expert_parameters` names them).

Covered: token-choice top-k routing (`router: topk`, with `balance: aux_loss | none | bias`, noisy
gating) and `router: hash`, without a capacity factor, in training and inference. Refused with the
reason: soft routing (every expert sees every token: nothing to exchange), `expert_choice` and
`sinkhorn` (an expert's choice reads the tokens of every rank), a capacity factor (which pairs an
expert drops depends on the global token order), and an expert count the ranks do not divide.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from moelab.models.base import dropout
from moelab.models.moe import LayerWeights, MoE, add_segment_bias, gather_pairs, permute_rows

EXPERT_PARALLEL_ROUTERS = ("topk", "hash")


def expert_parallel_problem(moe: MoE, world_size: int) -> str | None:
    """Why this layer cannot be sharded over `world_size` ranks (None: it can)."""
    if moe.router_kind not in EXPERT_PARALLEL_ROUTERS:
        return (f"router {moe.router_kind!r} is not covered: an expert's choice reads the tokens of every rank; "
                f"expert parallelism covers router {' and '.join(EXPERT_PARALLEL_ROUTERS)}")
    if "soft" in (moe.train_routing, moe.eval_routing):
        return ("soft routing runs every expert on every token, so there is nothing to exchange; expert parallelism "
                "needs sparse routing in training and inference (e.g. moe_topk or moe_routed)")
    if moe.capacity_factor is not None:
        return ("a capacity factor is not covered (which pairs an expert drops depends on the order of the tokens of "
                "every rank); remove capacity_factor")
    if moe.num_experts % world_size:
        return (f"num_experts={moe.num_experts} cannot be shared evenly by {world_size} processes; use a multiple of "
                f"{world_size}")
    return None


class ExpertShard:
    """The experts of one rank and how tokens reach them (set as `moe.expert_shard` by `shard_experts`)."""

    def __init__(self, rank: int, world_size: int, local_experts: int, group=None):
        self.rank, self.world_size, self.local_experts, self.group = rank, world_size, local_experts, group

    @property
    def first_expert(self) -> int:
        return self.rank * self.local_experts

    def sparse(self, moe: MoE, x: torch.Tensor, expert_index: torch.Tensor, mix: torch.Tensor, weights: LayerWeights,
               generators):
        """MoE._sparse across ranks, for one model (x [1, T, d]): the same (y, dropped, slot_outputs, processed),
        `processed` counting the pairs of this rank's tokens per expert (the load as this rank's routing sees it)."""
        if x.shape[0] != 1:
            raise ValueError("expert parallelism trains one model at a time, not several fused into one")
        x, expert_index, mix = x[0], expert_index[0], mix[0]
        tokens, k = expert_index.shape
        flat = expert_index.reshape(-1)
        order = torch.argsort(flat, stable=True)  # this rank's (token, slot) pairs grouped by expert
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        counts = torch.bincount(flat, minlength=moe.num_experts)
        grouped = gather_pairs(x, order, inverse, k)

        # how many pairs each rank sends to each of this rank's experts: [source rank, local expert]
        received_counts = torch.empty_like(counts)
        dist.all_to_all_single(received_counts, counts, group=self.group)
        received_counts = received_counts.view(self.world_size, self.local_experts)
        send_sizes = counts.view(self.world_size, self.local_experts).sum(1).tolist()
        receive_sizes = received_counts.sum(1).tolist()
        received = exchange(grouped, send_sizes, receive_sizes, self.group)

        # received rows come in blocks (source rank, expert); the experts want (expert, source rank)
        blocks = torch.arange(received_counts.numel(), device=x.device)
        block_of_row = blocks.repeat_interleave(received_counts.reshape(-1))
        expert_of_row = block_of_row % self.local_experts
        by_expert = torch.argsort(expert_of_row * self.world_size + block_of_row // self.local_experts, stable=True)
        back = torch.empty_like(by_expert)
        back[by_expert] = torch.arange(len(by_expert), device=x.device)
        rows = permute_rows(received, by_expert, back)
        expert_counts = received_counts.sum(0)
        sizes = expert_counts.tolist()

        h = add_segment_bias(moe._grouped_matmul(rows, weights.w1, expert_counts, sizes), weights.b1, expert_counts)
        if moe.norm is not None:
            h = moe.norm.grouped(h, expert_of_row[by_expert], sizes, weights.norm)
        h = dropout(F.relu(h, inplace=True), moe.dropout_p, moe.training, generators)
        out = add_segment_bias(moe._grouped_matmul(h, weights.w2, expert_counts, sizes), weights.b2, expert_counts)

        returned = exchange(permute_rows(out, back, by_expert), receive_sizes, send_sizes, self.group)
        slot_outputs = permute_rows(returned, inverse, order).view(tokens, k, -1)
        y = torch.bmm(mix.unsqueeze(1), slot_outputs).squeeze(1)
        return y.unsqueeze(0), None, slot_outputs.unsqueeze(0), counts.unsqueeze(0)


class _Exchange(torch.autograd.Function):
    """all_to_all_single of rows: `send_sizes[r]` rows to rank r, `receive_sizes[r]` from it. The gradient
    travels back the same way with the sizes swapped."""

    @staticmethod
    def forward(ctx, rows, send_sizes, receive_sizes, group):
        ctx.send_sizes, ctx.receive_sizes, ctx.group = send_sizes, receive_sizes, group
        received = rows.new_empty(sum(receive_sizes), rows.shape[1])
        dist.all_to_all_single(received, rows.contiguous(), receive_sizes, send_sizes, group=group)
        return received

    @staticmethod
    def backward(ctx, grad):
        sent = grad.new_empty(sum(ctx.send_sizes), grad.shape[1])
        dist.all_to_all_single(sent, grad.contiguous(), ctx.send_sizes, ctx.receive_sizes, group=ctx.group)
        return sent, None, None, None


def exchange(rows: torch.Tensor, send_sizes: list[int], receive_sizes: list[int], group=None) -> torch.Tensor:
    return _Exchange.apply(rows, send_sizes, receive_sizes, group)


def moe_layers(model: nn.Module) -> list[MoE]:
    return [module for module in model.modules() if isinstance(module, MoE)]


def expert_parallel_problems(model: nn.Module, world_size: int) -> list[str]:
    """Why the model's MoE layers cannot be sharded over `world_size` ranks: one line per reason."""
    if not moe_layers(model):
        return ["the model has no MoE layer: there are no experts to share out (expert_parallel needs an MoE model)"]
    return sorted({problem for layer in moe_layers(model) if (problem := expert_parallel_problem(layer, world_size))})


def shard_experts(model: nn.Module, group=None) -> None:
    """Keep, in every MoE layer of `model`, this rank's experts only, and route through the exchange.
    Every rank must call it on the same model (built from the same seed)."""
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    problems = expert_parallel_problems(model, world_size)
    if problems:
        raise ValueError(f"expert parallelism over {world_size} processes: {'; '.join(problems)}")
    for layer in moe_layers(model):
        local = layer.num_experts // world_size
        keep = slice(rank * local, (rank + 1) * local)
        for name in ("w1", "b1", "w2", "b2"):
            setattr(layer, name, nn.Parameter(getattr(layer, name).detach()[keep].clone()))
        if layer.norm is not None:
            norm = layer.norm
            norm.weight, norm.bias = (nn.Parameter(p.detach()[keep].clone()) for p in (norm.weight, norm.bias))
            norm.running_mean, norm.running_var = norm.running_mean[keep].clone(), norm.running_var[keep].clone()
        layer.expert_shard = ExpertShard(rank, world_size, local, group)


def expert_parameters(model: nn.Module) -> dict[str, ExpertShard]:
    """The parameters and buffers each rank holds its own shard of (not replicated: what data
    parallelism must neither average nor broadcast), by name, each with its layer's shard."""
    names = {}
    for prefix, module in model.named_modules():
        if isinstance(module, MoE) and module.expert_shard is not None:
            for name in ("w1", "b1", "w2", "b2"):
                names[f"{prefix}.{name}".lstrip(".")] = module.expert_shard
            if module.norm is not None:
                for name in ("weight", "bias", "running_mean", "running_var"):
                    names[f"{prefix}.norm.{name}".lstrip(".")] = module.expert_shard
    return names


def gather_experts(tensor: torch.Tensor, shard: ExpertShard) -> torch.Tensor | None:
    """On the group's first rank, the whole layer's expert tensor (every rank's slice, in expert order), on the
    CPU (it is gathered to be written, and the device need never hold every expert); None on the others.
    A collective: every rank calls it, for the same tensors in the same order."""
    first = shard.rank == 0
    slices = [torch.empty_like(tensor) for _ in range(shard.world_size)] if first else None
    destination = 0 if shard.group is None else dist.get_global_rank(shard.group, 0)
    dist.gather(tensor.contiguous(), slices, dst=destination, group=shard.group)
    return torch.cat([part.cpu() for part in slices]) if first else None


def local_experts(tensor: torch.Tensor, shard: ExpertShard) -> torch.Tensor:
    """This rank's slice of a whole layer's expert tensor."""
    return tensor[shard.first_expert : shard.first_expert + shard.local_experts]


def unsharded(model: nn.Module, whole_state: dict) -> nn.Module:
    """A copy of sharded `model` holding every expert, with the weights of `whole_state` (a state dict whose
    expert tensors are gathered): a model that runs alone, as if it had never been sharded."""
    whole = copy.deepcopy(model)
    for layer in moe_layers(whole):
        if layer.expert_shard is None:
            continue
        for module, name in [(layer, n) for n in ("w1", "b1", "w2", "b2")] + (
                [(layer.norm, n) for n in ("weight", "bias")] if layer.norm is not None else []):
            part = getattr(module, name)
            setattr(module, name, nn.Parameter(part.new_empty(layer.num_experts, *part.shape[1:])))
        if layer.norm is not None:
            for name in ("running_mean", "running_var"):
                part = getattr(layer.norm, name)
                setattr(layer.norm, name, part.new_empty(layer.num_experts, *part.shape[1:]))
        layer.expert_shard = None
    whole.load_state_dict(whole_state)
    return whole


def variant_problems(model: str, params: dict, d_in: int, d_out: int, input_shape, world_size: int) -> list[str]:
    """Why a variant's model cannot have its experts sharded over `world_size` ranks (built on the meta
    device: no memory, no weights drawn), one line per reason."""
    from moelab.models.registry import build_model

    with torch.device("meta"):
        built = build_model(model, d_in, d_out, params, input_shape)
    return expert_parallel_problems(built, world_size)
