"""What a task is measured by: its loss and its metrics (the first metric is the primary one).

Classification: accuracy, macro precision / recall / F1 (from the confusion matrix).
Regression (targets in [0, 1]): PSNR, MSE, RMSE, MAE, R^2.
Language modelling (next byte at every position): bits per byte, perplexity per byte, next-byte accuracy;
its primary metric, bits per byte, is lower-is-better (metric_names.higher_is_better says which).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from moelab.data import CLASSIFICATION, LANGUAGE_MODELING, REGRESSION
from moelab.results.metric_direction import higher_is_better
from moelab.train.metric_names import METRICS


@dataclass(frozen=True)
class Task:
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # mean over the batch
    metrics: tuple[str, ...]

    @property
    def primary(self) -> str:
        return self.metrics[0]

    @property
    def primary_higher_is_better(self) -> bool:
        return higher_is_better(self.primary)


def next_byte_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in nats per predicted byte: logits [B, T, V], targets [B, T] byte ids."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1).long())


def batch_stats(task: str, y_hat: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over a batch that `finish_metrics` turns into split-level metrics (no host sync here)."""
    if task == LANGUAGE_MODELING:
        flat, targets = y_hat.reshape(-1, y_hat.shape[-1]).float(), y.reshape(-1).long()
        return {"nll_sum": F.cross_entropy(flat, targets, reduction="sum"),
                "correct": (flat.argmax(dim=1) == targets).sum(), "tokens": targets.new_tensor(targets.numel())}
    if task == CLASSIFICATION:
        classes = y_hat.shape[1]
        confusion = torch.bincount(y * classes + y_hat.argmax(dim=1), minlength=classes * classes)
        return {"confusion": confusion.view(classes, classes)}  # rows: true class, columns: predicted
    error = y_hat - y
    return {"squared_error": error.square().sum(dim=0), "abs_error": error.abs().sum(dim=0),
            "target_sum": y.sum(dim=0), "target_square_sum": y.square().sum(dim=0)}


def finish_metrics(task: str, sums: dict, count: int) -> dict[str, float]:
    if task == LANGUAGE_MODELING:
        nats = sums["nll_sum"] / sums["tokens"]
        return {"bpb": nats / math.log(2), "perplexity": math.exp(min(nats, 700.0)), "acc": sums["correct"] / sums["tokens"]}
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
    LANGUAGE_MODELING: Task(loss=next_byte_loss, metrics=METRICS[LANGUAGE_MODELING]),
}
