"""What a task is measured by: its loss and its metrics (the first metric is the primary one).

Every primary metric is higher-is-better, which early stopping and the tables rely on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from moelab.data import CLASSIFICATION, REGRESSION


@dataclass(frozen=True)
class Task:
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # mean over the batch
    # name -> metric computed from the summed statistics of a whole split
    metrics: tuple[str, ...]

    @property
    def primary(self) -> str:
        return self.metrics[0]


def batch_stats(task: str, y_hat: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over a batch that `finish_metrics` turns into split-level metrics (no host sync here)."""
    if task == CLASSIFICATION:
        return {"correct": (y_hat.argmax(dim=1) == y).sum()}
    return {"squared_error": ((y_hat - y) ** 2).mean(dim=1).sum(), "abs_error": (y_hat - y).abs().mean(dim=1).sum()}


def finish_metrics(task: str, sums: dict[str, float], count: int) -> dict[str, float]:
    if task == CLASSIFICATION:
        return {"acc": sums["correct"] / count}
    mse = sums["squared_error"] / count
    # targets are in [0, 1], so the peak signal is 1
    return {"psnr": float(10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12)))), "mse": mse, "mae": sums["abs_error"] / count}


TASKS = {
    CLASSIFICATION: Task(loss=F.cross_entropy, metrics=("acc",)),
    REGRESSION: Task(loss=F.mse_loss, metrics=("psnr", "mse", "mae")),
}
