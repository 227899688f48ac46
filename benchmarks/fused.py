"""Fused training against one model per job: the default grid with 8 seeds, run_here, on this machine.

    python benchmarks/fused.py [--seeds 8] [--epochs 60] [--fuse 8] [--data mnist]

Runs experiments/configs/default.yaml twice with `grid.seed` of `--seeds` seeds (x 2 expert counts),
once as usual and once with `local.fuse`, each into a fresh folder, with every core the launcher
uses by default, and prints the wall times, their ratio, and how far the fused results are from the
unfused ones (training losses and test accuracies of every job x variant). `--data mnist`: the same
grid on MNIST-shaped data (28 x 28, 10 classes; synthetic files in torchvision's format, 6,000
training and 1,000 test images, written to a temporary folder: nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_mnist_shaped(root: Path, train: int = 6000, test: int = 1000) -> None:
    """MNIST's IDX files (torchvision reads them from root/MNIST/raw): noise plus a class-dependent stroke."""
    import numpy as np

    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, size=count)
        images = rng.integers(0, 60, size=(count, 28, 28))
        for digit in range(10):  # each class draws its own bar, at a jittered position
            rows = labels == digit
            images[rows, 2 + 2 * digit + rng.integers(0, 2, size=rows.sum())[:, None], 4:24] = 255
        for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            path = root / "MNIST" / "raw" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            path.write_bytes(header + array.astype(np.uint8).tobytes())


def run(experiment: Path, experiments: Path, overrides: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "moelab.launch", "run_here", str(experiment),
                           *overrides, "--experiments-dir", str(experiments), "--no-report"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - started


def results(experiments: Path) -> dict:
    found = {}
    for path in (experiments / "default" / "jobs").glob("*/*/results.json"):
        metrics = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
        found[f"{path.parent.parent.name}/{path.parent.name}"] = (json.loads(path.read_text()), metrics)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--fuse", type=int, default=8)
    parser.add_argument("--data", choices=["digits", "mnist"], default="digits")
    args = parser.parse_args()
    grid = [f"grid.seed=[{','.join(str(s) for s in range(args.seeds))}]", f"train.epochs={args.epochs}",
            "report.live_plot_every=0"]
    with tempfile.TemporaryDirectory() as folder:
        experiment = REPO / "experiments/configs/default.yaml"
        if args.data == "mnist":  # the default experiment with MNIST's data section
            write_mnist_shaped(Path(folder) / "data")
            doc = yaml.safe_load(experiment.read_text())
            doc["data"] = {"name": "mnist", "root": str(Path(folder) / "data"), "val_fraction": 0.15}
            experiment = Path(folder) / "default.yaml"
            experiment.write_text(yaml.safe_dump(doc, sort_keys=False))
        alone_dir, fused_dir = Path(folder) / "alone", Path(folder) / "fused"
        alone = run(experiment, alone_dir, grid)
        fused = run(experiment, fused_dir, [*grid, f"local.fuse={args.fuse}"])
        mine, theirs = results(fused_dir), results(alone_dir)
    assert mine.keys() == theirs.keys(), "the two runs wrote different jobs"
    loss_gap = max(abs(a["train_loss"] - b["train_loss"]) / abs(b["train_loss"])
                   for key in mine for a, b in zip(mine[key][1], theirs[key][1]))
    first_five = max(abs(a["train_loss"] - b["train_loss"]) / abs(b["train_loss"])
                     for key in mine for a, b in zip(mine[key][1][:5], theirs[key][1][:5]))
    accuracy = [abs(mine[key][0]["test_acc"] - theirs[key][0]["test_acc"]) for key in mine]
    print(f"default grid on {args.data}, {args.seeds} seeds x 2 expert counts = {len(mine) // 4} jobs x 4 variants, "
          f"{args.epochs} epochs, run_here with its default workers\n")
    print(f"{'run':<22}{'wall s':>9}{'ratio':>8}")
    print(f"{'one model per job':<22}{alone:>9.1f}{1.0:>8.2f}")
    print(f"{f'fused, local.fuse={args.fuse}':<22}{fused:>9.1f}{alone / fused:>8.2f}")
    print(f"\ntraining loss, fused vs alone: largest relative gap {first_five:.1e} over the first 5 epochs, "
          f"{loss_gap:.1e} over all {args.epochs}")
    print(f"test accuracy: equal in {sum(a == 0 for a in accuracy)} of {len(accuracy)} runs, largest gap {max(accuracy):.4f}")


if __name__ == "__main__":
    main()
