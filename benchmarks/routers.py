"""Each router's training step (forward + backward) against a dense layer of equal active parameters.

    python benchmarks/routers.py [--device cpu|cuda] [--repeats 20]

One table per scale: T=4096 tokens of width 256 (hidden 512 per expert, 8 experts, top-1) and digits
scale (a batch of 64 samples of 64 pixels, hidden 32, 8 experts). The dense layer is a two-layer MLP
whose hidden width gives the parameter count of one routed expert plus the router. Times are medians
in milliseconds (on the CPU: one thread's compute time) over rounds that time every layer in turn, in
one run, so the ratios compare like with like on a machine whose load changes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from moelab.models.moe import MoE
from moelab.models.params import MLPParams, RoutedMoEParams

ROUTERS = [
    ("topk, aux loss", {}),
    ("topk, bias balancing", {"balance": "bias"}),
    ("topk, capacity 1.25", {"capacity_factor": 1.25}),
    ("expert choice", {"router": "expert_choice"}),
    ("sinkhorn", {"router": "sinkhorn"}),
    ("hash", {"router": "hash", "balance": "none"}),
    ("granularity 4 (top-4 of 32)", {"granularity": 4}),
    ("granularity 4 + 1 shared", {"granularity": 4, "shared_experts": 1}),
]


def step_ms(run, device: str) -> float:
    """One step's time: on a GPU wall time between synchronisations; on the CPU the time this thread
    spent computing (torch runs single-threaded here), which other processes on the machine do not inflate."""
    if device == "cuda":
        torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        torch.cuda.synchronize()
        return (time.perf_counter() - started) * 1000
    started = time.thread_time()
    run()
    return (time.thread_time() - started) * 1000


def layer(d: int, hidden: int, experts: int, options: dict) -> MoE:
    m = options.get("granularity", 1)
    kwargs = {k: v for k, v in options.items() if k != "granularity"}
    return MoE(d, hidden // m, d, experts * m, k=m, batch_norm=False, aux_weights={"switch_balance": 0.01}, **kwargs)


def table(tokens: int, d: int, hidden: int, experts: int, device: str, repeats: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(tokens, d, device=device)
    active = RoutedMoEParams(num_experts=experts, hidden=hidden, batch_norm=False).parameter_counts(d, d).active
    width = MLPParams.hidden_for(active, d, d, layers=1)
    dense = nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, d)).to(device)

    def step(module):
        def run():
            out = module(x)
            y = out.y + sum(out.aux_losses.values()) if hasattr(out, "y") else out
            y.square().mean().backward()
            if hasattr(module, "after_step"):
                module.after_step()
        return run

    layers = [(f"dense MLP, hidden {width}", step(dense))]
    layers += [(name, step(layer(d, hidden, experts, options).to(device).train())) for name, options in ROUTERS]
    # rounds over every layer, so a machine busy for a while slows them all alike
    times = {name: [] for name, _ in layers}
    for _, run in layers:
        run()  # warm up
    for _ in range(repeats):
        for name, run in layers:
            times[name].append(step_ms(run, device))
    medians = {name: statistics.median(t) for name, t in times.items()}
    dense_ms = medians[layers[0][0]]
    print(f"\nT={tokens}, d={d}, hidden={hidden}, E={experts}, top-1, device={device}, threads={torch.get_num_threads()}")
    print(f"{'layer':<32} {'train ms':>9} {'x dense':>8}")
    for name, ms in medians.items():
        print(f"{name:<32} {ms:>9.3f} {ms / dense_ms:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    table(4096, 256, 512, 8, args.device, args.repeats)
    table(64, 64, 32, 8, args.device, args.repeats)


if __name__ == "__main__":
    main()
