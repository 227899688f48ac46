"""Jobs larger than one process: the training step of 1 against 2 processes (DistributedDataParallel, gloo on
CPU, the same global batch), and what expert parallelism's token exchange costs.

    python benchmarks/distributed.py [--repeats 20] [--batch 512] [--width 2048]

Table 1: one training step (forward, backward, gradient averaging, AdamW) of an MLP d -> width -> width -> 10
on a global batch of --batch samples: 1 process with 1 thread, 1 process with 2 threads, 2 processes of 1 thread
each, each taking half the batch. Table 2: the MoE layer (T tokens, d=256, hidden=1024, E=8, top-2), forward +
backward, in 1 process and with its experts sharded over 2 (each rank routing T/2 tokens), and the two
all_to_all_single exchanges of the sharded layer alone (the rows each rank sends, there and back). Times are
medians in milliseconds. Table 3: a whole moelab job (MNIST-shaped synthetic data, 6,000 training images; an
MoE of E=8 experts, top-2) trained by 1 process, by 2 data parallel and by 2 with its experts sharded
(train.distributed.expert_parallel): the median epoch (training and validation), the first epoch's training loss,
and the parameters each process holds.
CPU only: the figures of several GPUs (NCCL) need a machine that has them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from moelab.models.expert_parallel import exchange, shard_experts
from moelab.models.moe import MoE


def median_ms(step, repeats: int) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        if dist.is_initialized():
            dist.barrier()  # every rank starts the step together: the step of the slowest is measured
        started = time.perf_counter()
        step()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def mlp(d: int, width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def data_parallel_step_ms(rank: int, world: int, args) -> float:
    model = mlp(args.d, args.width)
    stepped = DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(1)
    x, y = torch.randn(args.batch, args.d), torch.randint(0, 10, (args.batch,))
    mine = slice(rank * args.batch // world, (rank + 1) * args.batch // world)

    def step():
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(stepped(x[mine]), y[mine]).backward()
        optimizer.step()

    return median_ms(step, args.repeats)


def moe_layer() -> MoE:
    torch.manual_seed(0)
    return MoE(256, 1024, 256, 8, k=2)


def moe_ms(rank: int, world: int, args) -> tuple[float, float | None]:
    layer = moe_layer()
    torch.manual_seed(1)
    x = torch.randn(args.tokens, 256)
    if world > 1:
        shard_experts(layer)
    mine = x[rank * args.tokens // world : (rank + 1) * args.tokens // world]

    def step():
        layer.zero_grad(set_to_none=True)
        layer(mine).y.square().mean().backward()

    layer_ms = median_ms(step, args.repeats)
    if world == 1:
        return layer_ms, None
    # the rows this rank sends to each rank, as the layer's first step routes them: out and back
    with torch.no_grad():
        index = copy.deepcopy(layer)(mine).expert_index.reshape(-1)
    counts = torch.bincount(index, minlength=8).view(world, -1).sum(1)
    received = torch.empty_like(counts)
    dist.all_to_all_single(received, counts)
    rows = torch.randn(int(counts.sum()), 256)
    send, receive = counts.tolist(), received.tolist()
    return layer_ms, median_ms(lambda: exchange(exchange(rows, send, receive), receive, send), args.repeats)


def job_rows(args) -> list[tuple[str, float, float, int]]:
    """(how, median epoch seconds, first epoch's training loss, parameters held by each process) for one job
    trained each way."""
    import yaml

    from moelab.config import load_experiment
    from moelab.models import build_model, model_params
    from moelab.models.expert_parallel import moe_layers
    from moelab.results.io import write_json
    from moelab.results.tree import JobTree
    from moelab.train.job import run_job

    from fused import write_mnist_shaped  # benchmarks/fused.py

    variant = {"name": "moe", "model": "moe_routed", "hidden": args.job_hidden, "num_experts": 8, "k": 2,
               "dropout": 0.0, "balance": "none", "batch_norm": False}
    model = build_model("moe_routed", 28 * 28, 10, model_params(variant))
    total = sum(p.numel() for p in model.parameters())
    experts = sum(getattr(layer, name).numel() for layer in moe_layers(model) for name in ("w1", "b1", "w2", "b2"))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        write_mnist_shaped(Path(folder) / "data")
        data = {"name": "mnist", "root": str(Path(folder) / "data"), "val_fraction": 0.15}
        for how, distributed, held in (("1 process", {}, total),
                                       ("2 processes, data parallel", {"processes": 2}, total),
                                       ("2 processes, experts sharded", {"processes": 2, "expert_parallel": True},
                                        total - experts // 2)):
            path = Path(folder) / f"{len(rows)}.yaml"
            path.write_text(yaml.safe_dump({
                "name": "bench", "data": data, "variants": [variant], "grid": {},
                "train": {"epochs": args.job_epochs, "batch_size": 512, "lr": 0.003, "distributed": distributed}}))
            experiment = load_experiment(path)
            job = experiment.jobs()[0]
            tree = JobTree(Path(folder) / str(len(rows)) / "jobs" / job.key)
            write_json(tree.config_file, experiment.job_spec(job))
            outcome = run_job(tree.path)
            if outcome.state != "done":
                raise RuntimeError(f"{how}: {outcome.errors}")
            lines = [json.loads(line) for line in tree.variant("moe").metrics_file.read_text().splitlines()]
            rows.append((how, statistics.median(line["seconds"] for line in lines), lines[0]["train_loss"], held))
    return rows


def _rank(rank: int, world: int, port: int, args, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        step = data_parallel_step_ms(rank, world, args)
        layer, exchanged = moe_ms(rank, world, args)
        if rank == 0:
            results.put((step, layer, exchanged))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--job-epochs", type=int, default=3)
    parser.add_argument("--job-hidden", type=int, default=1024)
    args = parser.parse_args()

    alone = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        alone[threads] = data_parallel_step_ms(0, 1, args)
    torch.set_num_threads(1)
    moe_alone, _ = moe_ms(0, 1, args)
    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_rank, args=(2, free_port(), args, results), nprocs=2, join=True)
    two, moe_two, exchanged = results.get()

    parameters = sum(p.numel() for p in mlp(args.d, args.width).parameters())
    print(f"training step, MLP {args.d}-{args.width}-{args.width}-10 ({parameters / 1e6:.1f} M parameters), "
          f"global batch {args.batch}, CPU ({os.cpu_count()} cores), gloo:\n")
    print("| processes x threads | step (ms) | speed-up vs 1 x 1 |\n|---|---|---|")
    for label, ms in (("1 x 1", alone[1]), ("1 x 2", alone[2]), ("2 x 1 (DDP)", two)):
        print(f"| {label} | {ms:.1f} | {alone[1] / ms:.2f} |")
    print(f"\nMoE layer, T={args.tokens}, d=256, hidden=1024, E=8, k=2, forward + backward, 1 thread per process:\n")
    print("| | ms |\n|---|---|")
    print(f"| 1 process, all 8 experts | {moe_alone:.1f} |")
    print(f"| 2 processes, 4 experts each (T/2 tokens routed by each) | {moe_two:.1f} |")
    print(f"| of which the token exchange alone (all_to_all_single, there and back) | {exchanged:.1f} |")
    print(f"\nA moelab job: MNIST-shaped data, moe_routed hidden={args.job_hidden}, E=8, k=2, batch 512, {args.job_epochs} epochs, "
          f"1 thread per process:\n")
    print("| trained by | epoch (s, median) | epoch 0 train_loss | parameters per process |\n|---|---|---|---|")
    for how, seconds, train_loss, held in job_rows(args):
        print(f"| {how} | {seconds:.2f} | {train_loss:.6f} | {held:,} |")


if __name__ == "__main__":
    main()
