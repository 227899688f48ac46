"""The same training in a bare PyTorch loop and through moelab: equal losses, and moelab's overhead.

    python benchmarks/parity.py [--variant moe_topk] [--epochs 20] [--rounds 3]

In the spirit of PyTorch Lightning's parity test. The bare loop is what a researcher would write: the
model built from the same seed, AdamW with the cosine schedule, the same shuffling generator, one
validation pass per epoch. moelab's run (train_variant) also checkpoints every epoch, measures
routing flips and router health, and at the end tests, analyses the experts and writes its records.
Both run on one thread in alternating rounds (medians), so the ratio compares like with like on a
busy machine. Per-epoch training losses must agree to 1e-5 (relative).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from moelab.data import DataSettings, load_dataset
from moelab.models import build_model, model_params
from moelab.results.io import read_jsonl
from moelab.results.tree import VariantTree
from moelab.train.evaluate import evaluate
from moelab.train.settings import EarlyStoppingSettings, TrainSettings
from moelab.train.tasks import TASKS
from moelab.train.trainer import make_optimizer, make_scheduler, train_variant

VARIANTS = {
    "mlp": {"name": "mlp", "model": "mlp", "hidden": 64},
    "moe_topk": {"name": "moe_topk", "model": "moe_topk", "hidden": 32},
}


def bare_loop(variant: dict, data, settings: TrainSettings, seed: int) -> tuple[list[float], float, float]:
    """(per-epoch training loss, seconds of training, seconds of the whole run)."""
    started = time.perf_counter()
    task = TASKS[data.task]
    torch.manual_seed(seed)
    model = build_model(variant["model"], data.d_in, data.d_out, model_params(variant), data.input_shape)
    optimizer, shuffle = make_optimizer(model, settings), torch.Generator().manual_seed(seed)
    scheduler = make_scheduler(optimizer, settings)
    losses, training = [], 0.0
    for _ in range(settings.epochs):
        epoch_started = time.perf_counter()
        model.train()
        order = torch.randperm(len(data.x_train), generator=shuffle)
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            index = order[start:start + settings.batch_size]
            out = model(data.x_train[index], data.y_train[index])
            task_loss = task.loss(out.y, data.y_train[index])
            loss = task_loss + sum(out.aux_losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.after_step()
            total += task_loss.item() * len(index)
        scheduler.step()
        evaluate(model, data.x_val, data.y_val, data.task, settings.eval_batch_size)
        losses.append(total / len(order))
        training += time.perf_counter() - epoch_started
    return losses, training, time.perf_counter() - started


def through_moelab(variant: dict, data, settings: TrainSettings, seed: int) -> tuple[list[float], float, float]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        out = VariantTree(Path(folder) / variant["name"])
        results = train_variant(variant, data, settings, seed, out, torch.device("cpu"))
        losses = [row["train_loss"] for row in read_jsonl(out.metrics_file)]
    return losses, results["train_seconds"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="moe_topk")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(DataSettings(name="digits"), seed=0)
    settings = TrainSettings(epochs=args.epochs, lr=3e-3, early_stopping=EarlyStoppingSettings(patience=args.epochs))
    variant = VARIANTS[args.variant]
    timings = {"bare loop": [], "moelab": []}
    for _ in range(args.rounds):
        bare = bare_loop(variant, data, settings, 0)
        ours = through_moelab(variant, data, settings, 0)
        timings["bare loop"].append(bare[1:])
        timings["moelab"].append(ours[1:])
    worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(bare[0], ours[0]))
    print(f"{args.variant} on digits, {args.epochs} epochs, batch {settings.batch_size}, one thread, "
          f"median of {args.rounds} alternating rounds")
    print(f"largest relative difference of the per-epoch training losses: {worst:.2e} (goal: 1e-5)")
    print("\n| | training s/epoch | whole run s | ratio (training) | ratio (whole run) |\n|---|---|---|---|---|")
    base = [statistics.median(t[i] for t in timings["bare loop"]) for i in (0, 1)]
    for name, rows in timings.items():
        median = [statistics.median(t[i] for t in rows) for i in (0, 1)]
        print(f"| {name} | {median[0] / args.epochs:.4f} | {median[1]:.2f} | {median[0] / base[0]:.2f} | "
              f"{median[1] / base[1]:.2f} |")


if __name__ == "__main__":
    main()
