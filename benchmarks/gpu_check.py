"""What a GPU changes, checked in one run and printed as one table (benchmarks/gpu_check.sh runs it).

    python benchmarks/gpu_check.py [--device cuda] [--seeds 8] [--epochs 3]

On the device (the first GPU by default; the CPU when there is none, to check the script itself):
  - fused against one model per job: the default variants (digits) for `--seeds` seeds, epoch time of
    each trained alone against all trained fused (train/fused.py), and the largest relative gap of
    their per-epoch training losses;
  - precision: one model's epoch time and final training loss in fp32, bf16 and fp16 (autocast);
  - deterministic: the same training twice with train.deterministic, bit-identical or not;
  - MoE dispatch: one top-2 layer's forward + backward with torch._grouped_mm against the per-expert loop;
  - jobs per hour (`--jobs N`, 0 to skip): the default grid with N seeds run_here one job per GPU, 4 and
    8 per GPU (local.jobs_per_gpu), and fused 8 and 32 (local.fuse), each with the GPU's mean
    utilisation and peak memory (nvidia-smi, sampled every 0.5 s).
Every check but the last runs on tensors already on the device; times are medians of repeated epochs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from moelab.data import DataSettings, load_dataset
from moelab.models import build_model, model_params
from moelab.models.fused import FusedModel
from moelab.models.moe import MoE
from moelab.train.fused import FusedData, train_fused_epoch
from moelab.train.settings import TrainSettings
from moelab.train.trainer import deterministic_algorithms, make_optimizer, train_one_epoch

VARIANTS = [
    {"name": "mlp", "model": "mlp", "hidden": 128, "layers": 2, "dropout": 0.1},
    {"name": "moe", "model": "moe", "hidden": 64, "num_experts": 8},
    {"name": "moe_topk", "model": "moe_topk", "hidden": 64, "k": 2, "num_experts": 8},
]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def get_rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def build(variant: dict, data, seed: int, device: torch.device):
    torch.manual_seed(seed)
    return build_model(variant["model"], data.d_in, data.d_out, model_params(variant), data.input_shape).to(device)


def epochs_alone(variant, data, settings, seeds, epochs, device) -> tuple[float, list[list[float]]]:
    """Seconds per epoch of all seeds trained one after the other, and each seed's training losses."""
    models = [build(variant, data, s, device) for s in range(seeds)]
    optimizers = [make_optimizer(m, settings) for m in models]
    shuffles = [torch.Generator().manual_seed(s) for s in range(seeds)]
    # dropout and noise: model n draws from the state the fused run's generator n starts in
    states = [torch.Generator(device).manual_seed(1000 + n).get_state() for n in range(seeds)]
    times, losses = [], [[] for _ in range(seeds)]
    for _ in range(epochs):
        synchronize(device)
        started = time.perf_counter()
        for n in range(seeds):
            set_rng_state(device, states[n])
            losses[n].append(train_one_epoch(models[n], data, optimizers[n], shuffles[n], settings)["loss"])
            states[n] = get_rng_state(device)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times), losses


def epochs_fused(variant, data, settings, seeds, epochs, device) -> tuple[float, list[list[float]]]:
    models = [build(variant, data, s, device) for s in range(seeds)]
    fused = FusedModel(models)
    fused.generators = [torch.Generator(device).manual_seed(1000 + n) for n in range(seeds)]
    optimizer = make_optimizer(fused, settings)
    shuffles = [torch.Generator().manual_seed(s) for s in range(seeds)]
    fused_data = FusedData.of([data] * seeds)
    times, losses = [], [[] for _ in range(seeds)]
    for _ in range(epochs):
        synchronize(device)
        started = time.perf_counter()
        rows = train_fused_epoch(fused, fused_data, shuffles, optimizer, settings, [True] * seeds, lambda: False)
        synchronize(device)
        times.append(time.perf_counter() - started)
        for n, row in enumerate(rows):
            losses[n].append(row["loss"])
    return statistics.median(times), losses


REPO = Path(__file__).resolve().parents[1]


def jobs_per_hour(seeds: int, epochs: int, overrides: list[str]) -> tuple[float, str, str]:
    """(jobs per hour, mean GPU utilisation, peak GPU memory) of the default grid run_here with these overrides."""
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            answer = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                                     "--id=0"], capture_output=True, text=True)
            if answer.returncode == 0 and answer.stdout.strip():
                used, memory = answer.stdout.strip().split(",")[:2]
                samples.append((float(used), float(memory)))

    watcher = threading.Thread(target=sample, daemon=True)
    if shutil.which("nvidia-smi"):
        watcher.start()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "moelab.launch", "run_here", str(REPO / "experiments/configs/default.yaml"),
                              f"grid.seed=[{','.join(str(s) for s in range(seeds))}]", f"train.epochs={epochs}",
                              "report.live_plot_every=0", *overrides, "--experiments-dir", folder, "--no-report"],
                             capture_output=True, text=True)
        seconds = time.perf_counter() - started
    done.set()
    if run.returncode != 0:
        return 0.0, "failed", run.stderr.strip().splitlines()[-1][:60] if run.stderr.strip() else "failed"
    jobs = seeds * 2  # x 2 expert counts
    if not samples:
        return jobs * 3600 / seconds, "n/a", "n/a"
    return (jobs * 3600 / seconds, f"{statistics.mean(u for u, _ in samples):.0f} %",
            f"{max(m for _, m in samples):.0f} MiB")


def gap(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) / abs(y) for xs, ys in zip(a, b) for x, y in zip(xs, ys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=8, help="seeds of the jobs-per-hour grid (x 2 expert counts; 0: skip)")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    data = load_dataset(DataSettings(name="digits"), 0).to(device)
    rows: list[tuple[str, str, str]] = []

    for variant in VARIANTS:
        settings = TrainSettings.from_dict({"epochs": args.epochs, "batch_size": 64, "lr": 3e-3, "optimizer": "adamw"})
        alone, alone_losses = epochs_alone(variant, data, settings, args.seeds, args.epochs, device)
        fused, fused_losses = epochs_fused(variant, data, settings, args.seeds, args.epochs, device)
        rows.append((f"fused x{args.seeds}: {variant['name']}", f"{alone:.3f} s alone, {fused:.3f} s fused",
                     f"{alone / fused:.2f}x faster; losses within {gap(fused_losses, alone_losses):.1e}"))

    variant = VARIANTS[2]
    for precision in ("fp32", "bf16", "fp16"):
        settings = TrainSettings.from_dict({"epochs": args.epochs, "batch_size": 64, "lr": 3e-3, "precision": precision})
        seconds, losses = epochs_alone(variant, data, settings, 1, args.epochs, device)
        rows.append((f"precision {precision}: {variant['name']}", f"{seconds:.3f} s/epoch", f"final loss {losses[0][-1]:.4f}"))

    settings = TrainSettings.from_dict({"epochs": 2, "batch_size": 64, "lr": 3e-3, "deterministic": True})
    with deterministic_algorithms(True):
        first = epochs_alone(variant, data, settings, 1, 2, device)[1]
        second = epochs_alone(variant, data, settings, 1, 2, device)[1]
    rows.append(("deterministic: two runs", "bit-identical" if first == second else "DIFFERENT", f"losses {first[0]}"))

    for dispatch in ("grouped_mm", "loop"):
        layer = MoE(256, 512, 256, 16, k=2, dispatch=dispatch).to(device)
        x = torch.randn(8192, 256, device=device, requires_grad=True)
        try:
            times = []
            for _ in range(6):
                synchronize(device)
                started = time.perf_counter()
                layer(x).y.sum().backward()
                synchronize(device)
                times.append(time.perf_counter() - started)
            rows.append((f"MoE layer, dispatch {dispatch}", f"{statistics.median(times[1:]) * 1e3:.2f} ms", "8192 tokens, E=16, k=2"))
        except (RuntimeError, ValueError) as error:
            rows.append((f"MoE layer, dispatch {dispatch}", "unavailable", str(error).splitlines()[0][:60]))

    if args.jobs:
        base = None
        for label, overrides in (("1 job per GPU", ["local.jobs_per_gpu=1"]), ("4 jobs per GPU", ["local.jobs_per_gpu=4"]),
                                 ("8 jobs per GPU", ["local.jobs_per_gpu=8"]), ("fused 8", ["local.fuse=8"]),
                                 ("fused 32", ["local.fuse=32"])):
            rate, utilisation, memory = jobs_per_hour(args.jobs, 5, overrides)
            base = base or rate
            rows.append((f"jobs/hour, {label}", f"{rate:.0f} ({rate / base:.1f}x)" if base else "failed",
                         f"GPU {utilisation}, peak {memory}; {args.jobs * 2} jobs x 5 epochs"))

    print(f"device: {name} (torch {torch.__version__})\n")
    width = max(len(r[0]) for r in rows)
    for check, figure, note in rows:
        print(f"{check:<{width}}  {figure:<32}  {note}")


if __name__ == "__main__":
    main()
