"""Which rank of a distributed training this process is (train/distributed.py starts the ranks): what the
trainer asks to take its slice of each batch, wrap the model in DistributedDataParallel and sum the
epoch's figures. None when the process trains alone."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes training a job."""

    rank: int
    world_size: int

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
    others, else `model` itself."""
    if _current is None:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


