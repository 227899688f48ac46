"""What a task is measured by: its loss and its metrics (the first metric is the primary one).

Every primary metric is higher-is-better, which early stopping and the tables rely on.
Classification: accuracy, macro precision / recall / F1 (from the confusion matrix).
Regression (targets in [0, 1]): PSNR, MSE, RMSE, MAE, R^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from moelab.data import CLASSIFICATION, REGRESSION
from moelab.train.metric_names import METRICS


@dataclass(frozen=True)
class Task:
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # mean over the batch
    metrics: tuple[str, ...]

    @property
    def primary(self) -> str:
        return self.metrics[0]


def batch_stats(task: str, y_hat: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over a batch that `finish_metrics` turns into split-level metrics (no host sync here)."""
    if task == CLASSIFICATION:
        classes = y_hat.shape[1]
        confusion = torch.bincount(y * classes + y_hat.argmax(dim=1), minlength=classes * classes)
        return {"confusion": confusion.view(classes, classes)}  # rows: true class, columns: predicted
    error = y_hat - y
    return {"squared_error": error.square().sum(dim=0), "abs_error": error.abs().sum(dim=0),
            "target_sum": y.sum(dim=0), "target_square_sum": y.square().sum(dim=0)}


def finish_metrics(task: str, sums: dict, count: int) -> dict[str, float]:
    if task == CLASSIFICATION:
        confusion = torch.as_tensor(sums["confusion"], dtype=torch.float64)
        correct = confusion.diagonal()
        predicted, actual = confusion.sum(0), confusion.sum(1)
        precision = torch.where(predicted > 0, correct / predicted.clamp(min=1), torch.zeros_like(correct))
        recall = torch.where(actual > 0, correct / actual.clamp(min=1), torch.zeros_like(correct))
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                         torch.zeros_like(correct))
        present = actual > 0  # classes absent from the split do not count in the macro averages
        return {"acc": float(correct.sum() / count), "macro_precision": float(precision[present].mean()),
                "macro_recall": float(recall[present].mean()), "macro_f1": float(f1[present].mean())}
    outputs = len(sums["squared_error"])
    sse = sum(sums["squared_error"])
    mse = sse / (count * outputs)
    sst = sum(sq - s * s / count for sq, s in zip(sums["target_square_sum"], sums["target_sum"]))
    # targets are in [0, 1], so the peak signal is 1
    return {"psnr": 10 * math.log10(1.0 / max(mse, 1e-12)), "mse": mse, "rmse": math.sqrt(mse),
            "mae": sum(sums["abs_error"]) / (count * outputs), "r2": 1 - sse / sst if sst > 0 else float("nan")}


TASKS = {
    CLASSIFICATION: Task(loss=F.cross_entropy, metrics=METRICS[CLASSIFICATION]),
    REGRESSION: Task(loss=F.mse_loss, metrics=METRICS[REGRESSION]),
}
