"""Byte-level language modelling: the models against reference compressors, and training speed.

    python benchmarks/text.py [--epochs 12] [--device cpu|cuda]

1. Bits per byte on the default corpus's test block (CPython's help texts, context 64): `xz -9` and
   `zstd -19 --ultra` on that block alone, and the dense default transformer (d_model 128, 4 layers,
   d_ff 512) trained for --epochs through moelab's own training loop (train_variant). Goal: the dense
   default at least 25 % below the best compressor.
2. Training tokens per second, forward + backward + optimizer step, of the dense default and of the
   MoE transformer of equal active parameters (top-1 of 4 experts of d_ff 512), timed in alternating
   rounds in one run (on the CPU: this thread's compute time), and their ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from moelab.data import DataSettings, load_dataset
from moelab.data.text import read_corpus, split_sizes
from moelab.models import build_model
from moelab.results.tree import VariantTree
from moelab.train.settings import TrainSettings
from moelab.train.tasks import TASKS
from moelab.train.trainer import make_optimizer, train_variant

COMPRESSORS = {"xz -9": ["xz", "-9", "-e", "-c"], "zstd -19": ["zstd", "-19", "--ultra", "-c", "-q"]}


def compressor_bits(block: bytes) -> dict[str, float]:
    """Bits per byte of each compressor found on this machine, on `block` alone."""
    found = {}
    for name, command in COMPRESSORS.items():
        if shutil.which(command[0]):
            size = len(subprocess.run(command, input=block, capture_output=True, check=True).stdout)
            found[name] = 8 * size / len(block)
    return found


def model_bits(epochs: int, device: torch.device) -> tuple[float, float]:
    """(test bits per byte, training seconds) of the dense default trained through moelab."""
    data = load_dataset(DataSettings(name="text"), seed=0).to(device)
    settings = TrainSettings(epochs=epochs, batch_size=64, lr=1e-3, schedule="cosine", checkpoint="best")
    with tempfile.TemporaryDirectory() as folder:
        results = train_variant({"name": "dense", "model": "transformer"}, data, settings, 0,
                                VariantTree(Path(folder) / "dense"), device)
    return results["test_bpb"], results["train_seconds"]


def tokens_per_second(device: torch.device, rounds: int = 5, steps: int = 4) -> dict[str, float]:
    models = {"dense transformer": ("transformer", {}),
              "MoE transformer, top-1 of 4": ("moe_transformer", {"num_experts": 4})}
    data = load_dataset(DataSettings(name="text"), seed=0)
    x, y = data.x_train[:64].to(device), data.y_train[:64].to(device)
    built = {}
    for name, (model, params) in models.items():
        torch.manual_seed(0)
        net = build_model(model, data.d_in, data.d_out, params).to(device)
        built[name] = (net, make_optimizer(net, TrainSettings()))
    timings = {name: [] for name in models}
    for _ in range(rounds + 1):  # the first round warms up
        for name, (net, optimizer) in built.items():
            started = _clock(device)
            for _ in range(steps):
                out = net(x)
                loss = TASKS["language_modeling"].loss(out.y, y) + sum(out.aux_losses.values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                net.after_step()
            timings[name].append((_clock(device) - started) / steps)
    return {name: x.numel() / statistics.median(times[1:]) for name, times in timings.items()}


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.thread_time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    settings = DataSettings(name="text")
    corpus = read_corpus(settings)
    train, val, _ = split_sizes(len(corpus), settings)
    block = corpus[train + val:]
    print(f"test block: {len(block):,} bytes of {len(corpus):,}")
    rows = list(compressor_bits(block).items())
    best = min(bits for _, bits in rows)
    bpb, seconds = model_bits(args.epochs, device)
    rows.append((f"dense default transformer, {args.epochs} epochs ({seconds:.0f} s)", bpb))
    print("\n| on the test block | bits per byte |\n| --- | --- |")
    for name, bits in rows:
        print(f"| {name} | {bits:.3f} |")
    print(f"\ndense default vs the best compressor: {100 * (1 - bpb / best):.1f} % fewer bits per byte (goal: 25 %)")
    speed = tokens_per_second(device)
    dense = speed["dense transformer"]
    print("\n| training, batch 64 x 64 bytes | tokens per second | ratio to dense |\n| --- | --- | --- |")
    for name, rate in speed.items():
        print(f"| {name} | {rate:,.0f} | {rate / dense:.2f} |")


if __name__ == "__main__":
    main()
