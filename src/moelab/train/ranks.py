"""Which rank of a distributed training this process is (train/distributed.py starts the ranks): what the
trainer asks to take its slice of each batch, wrap the model in DistributedDataParallel and sum the
epoch's figures. None when the process trains alone.

Where the weights are (`weight_layout`): whole in every process (alone, or data parallel), or, with
expert parallelism, each MoE layer's experts sharded over the ranks. Checkpoints, best weights and the
tested model always hold the whole model, so a job's files are the same whichever way it trained, and
a checkpoint resumes under any process count."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes training a job."""

    rank: int
    world_size: int
    expert_parallel: bool = False  # train.distributed.expert_parallel

    def share(self, index: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's slice of a batch, and the weight of its mean loss: its share of the batch times P, so that
        the average of the ranks' gradients (DistributedDataParallel's) is the gradient of the whole batch."""
        mine = index.tensor_split(self.world_size)[self.rank]
        if len(mine) == 0:
            raise ValueError(f"a batch of {len(index)} samples cannot be shared by {self.world_size} processes (the "
                             f"last batch of the epoch?); use a train.batch_size and a training set size that leave "
                             f"at least {self.world_size} samples in every batch")
        return mine, self.world_size * len(mine) / len(index)

    def sum(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over the ranks, in place."""
        for tensor in tensors:
            dist.all_reduce(tensor)


_current: Ranks | None = None


def current_ranks() -> Ranks | None:
    """The ranks of the training this process takes part in; None when it trains alone."""
    return _current


@contextlib.contextmanager
def taking_part(ranks: Ranks):
    global _current
    _current = ranks
    try:
        yield
    finally:
        _current = None


def data_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """The module a training step calls: DistributedDataParallel around `model` when this process trains with
    others, else `model` itself. Sharded experts are left out of it: each rank's are its own, and their
    gradients already hold every rank's tokens (summed: divided by P here, to the ranks' mean that
    DistributedDataParallel takes of the replicated weights)."""
    if _current is None:
        return model
    from torch.nn.parallel import DistributedDataParallel

    from moelab.models.expert_parallel import expert_parameters

    sharded = expert_parameters(model)
    if sharded:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(sharded))
        world_size = _current.world_size
        for name, parameter in model.named_parameters():
            if name in sharded:
                parameter.register_hook(lambda grad: grad / world_size)
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


class WholeWeights:
    """Every process holds the whole model: state dicts and optimizer states are the model's own."""

    def place(self, model: nn.Module) -> None:
        """Keep what this process holds of a model just built (the whole of it)."""

    def state_dict(self, model: nn.Module) -> dict:
        return model.state_dict()

    def load_state_dict(self, model: nn.Module, state: dict) -> None:
        model.load_state_dict(state)

    def optimizer_state(self, model: nn.Module, optimizer) -> dict:
        return optimizer.state_dict()

    def load_optimizer_state(self, model: nn.Module, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def gradients(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The gradients, each with a model dimension of 1: (those every rank holds whole, those each rank
        holds a slice of)."""
        return [p.grad.unsqueeze(0) for p in model.parameters() if p.grad is not None], []

    def tested_model(self, model: nn.Module) -> nn.Module | None:
        """The model to test after training (None: this process tests nothing)."""
        return model


class ShardedExperts(WholeWeights):
    """Expert parallelism: each rank holds E / P experts of every MoE layer (models/expert_parallel.py) and
    everything else whole. What leaves the training (checkpoints, best weights, the tested model) is whole
    on rank 0: the experts gathered from every rank to its CPU (collectives: every rank calls these in the
    same order; the others get their own part, written only to their scratch folder, never read); what
    comes in is sliced to this rank's experts. Rank 0 alone tests, on the gathered model."""

    def __init__(self, ranks: Ranks):
        self.ranks = ranks

    def place(self, model: nn.Module) -> None:
        from moelab.models.expert_parallel import shard_experts

        shard_experts(model)

    def state_dict(self, model: nn.Module) -> dict:
        from moelab.models.expert_parallel import expert_parameters, gather_experts

        sharded, state = expert_parameters(model), model.state_dict()
        gathered = {name: gather_experts(value, sharded[name]) if name in sharded else value
                    for name, value in state.items()}
        return gathered if self.ranks.rank == 0 else state

    def load_state_dict(self, model: nn.Module, state: dict) -> None:
        from moelab.models.expert_parallel import expert_parameters, local_experts

        sharded = expert_parameters(model)
        model.load_state_dict({name: local_experts(value, sharded[name]) if name in sharded else value
                               for name, value in state.items()})

    def optimizer_state(self, model: nn.Module, optimizer) -> dict:
        from moelab.models.expert_parallel import gather_experts

        state = optimizer.state_dict()
        gathered = self._per_expert_state(model, state, gather_experts)
        return gathered if self.ranks.rank == 0 else state

    def load_optimizer_state(self, model: nn.Module, optimizer, state: dict) -> None:
        from moelab.models.expert_parallel import local_experts

        optimizer.load_state_dict(self._per_expert_state(model, state, local_experts))

    def gradients(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        from moelab.models.expert_parallel import expert_parameters

        sharded = expert_parameters(model)
        whole, sliced = [], []
        for name, parameter in model.named_parameters():
            if parameter.grad is not None:
                (sliced if name in sharded else whole).append(parameter.grad.unsqueeze(0))
        return whole, sliced

    def tested_model(self, model: nn.Module) -> nn.Module | None:
        from moelab.models.expert_parallel import unsharded

        state = self.state_dict(model)
        return unsharded(model, state) if self.ranks.rank == 0 else None

    @staticmethod
    def _per_expert_state(model: nn.Module, state: dict, convert) -> dict:
        """The optimizer `state` with `convert(tensor, shard)` applied to the per-expert tensors of the sharded
        parameters (Adam's moments, SGD's momentum: the parameter's shape; a step count is left alone).
        The optimizer's parameters are the model's, in order (trainer.make_optimizer)."""
        from moelab.models.expert_parallel import expert_parameters

        sharded = expert_parameters(model)
        names = [name for name, _ in model.named_parameters()]
        indices = [index for group in state["param_groups"] for index in group["params"]]
        if len(indices) != len(names):
            raise ValueError(f"the optimizer holds {len(indices)} parameters and the model {len(names)}")
        converted = dict(state["state"])  # new entries: the optimizer's own stay as they are
        for index, name in zip(indices, names):
            if name in sharded and index in converted:
                converted[index] = {key: convert(value, sharded[name])
                                    if isinstance(value, torch.Tensor) and value.dim() > 0 else value
                                    for key, value in converted[index].items()}
        return {**state, "state": converted}


def weight_layout() -> WholeWeights:
    """Where the weights of the training this process takes part in are (alone: whole)."""
    if _current is not None and _current.expert_parallel:
        return ShardedExperts(_current)
    return WholeWeights()
