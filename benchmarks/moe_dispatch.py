"""MoE dispatch speed on the same inputs: dense MLP of equal active parameters, sparse top-k
(grouped matmul and split-per-expert), a naive per-expert loop with masks, soft MoE, hard top-1.

    python benchmarks/moe_dispatch.py [--device cpu|cuda] [--repeats 20]

Prints one table per scale: the issue's scale (T=4096, d=256, hidden=512, E=8, k=2) and digits
scale (T=256, d=64). Times are medians, in milliseconds; "train" is forward + backward.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from moelab.models.moe import MoE


def naive_topk(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The reference everyone writes first: every expert, a boolean mask, an index_add."""
    logits = moe.router(x)
    top, index = logits.topk(moe.k, dim=1)
    weights = top.softmax(dim=1)
    y = torch.zeros(x.shape[0], moe.w2.shape[2], device=x.device)
    for e in range(moe.num_experts):
        hit = index == e
        rows = hit.any(dim=1)
        if rows.any():
            h = torch.relu(x[rows] @ moe.w1[e] + moe.b1[e]) @ moe.w2[e] + moe.b2[e]
            y = y.index_add(0, rows.nonzero().flatten(), h * (weights * hit).sum(1)[rows, None])
    return y


def median_ms(step, repeats: int, device: str) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def table(tokens: int, d: int, hidden: int, experts: int, k: int, device: str, repeats: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(tokens, d, device=device)
    dense = nn.Sequential(nn.Linear(d, k * hidden), nn.ReLU(), nn.Linear(k * hidden, d)).to(device)
    grouped = MoE(d, hidden, d, experts, k=k, dispatch="auto").to(device)
    looped = MoE(d, hidden, d, experts, k=k, dispatch="loop").to(device)
    looped.load_state_dict(grouped.state_dict())
    soft = MoE(d, hidden, d, experts, train_routing="soft", eval_routing="soft").to(device)
    soft.load_state_dict(grouped.state_dict())
    hard = MoE(d, hidden, d, experts, k=1, train_routing="soft", eval_routing="topk").to(device)
    hard.load_state_dict(grouped.state_dict())

    def train(fn):
        def step():
            out = fn()
            (out.y if hasattr(out, "y") else out).square().mean().backward()
        return step

    def infer(fn):
        def step():
            with torch.no_grad():
                fn()
        return step

    rows = [
        (f"dense MLP, hidden {k * hidden} (= active params)", lambda: dense(x)),
        (f"top-{k} MoE, grouped matmul", lambda: grouped(x)),
        (f"top-{k} MoE, split per expert", lambda: looped(x)),
        (f"top-{k} naive loop with masks (reference)", lambda: naive_topk(grouped, x)),
        (f"soft MoE (all {experts} experts)", lambda: soft(x)),
        ("hard top-1 MoE (soft-trained)", lambda: hard(x)),
    ]
    with torch.no_grad():  # the fast paths compute the reference's numbers
        expected = naive_topk(grouped.eval(), x)
        assert torch.allclose(grouped(x).y, expected, atol=1e-4) and torch.allclose(looped.eval()(x).y, expected, atol=1e-4)
    results = {}
    for name, fn in rows:
        for module in (dense, grouped, looped, soft, hard):
            module.train()
        train_ms = median_ms(train(fn), repeats, device)
        for module in (dense, grouped, looped, soft, hard):
            module.eval()
        results[name] = (train_ms, median_ms(infer(fn), repeats, device))
    dense_train, dense_infer = results[rows[0][0]]
    print(f"\nT={tokens}, d={d}, hidden={hidden}, E={experts}, k={k}, device={device}, threads={torch.get_num_threads()}")
    print(f"{'path':<44} {'train ms':>9} {'x dense':>8} {'infer ms':>9} {'x dense':>8}")
    for name, (t, i) in results.items():
        print(f"{name:<44} {t:>9.2f} {t / dense_train:>8.2f} {i:>9.2f} {i / dense_infer:>8.2f}")
    soft_infer, hard_infer = results[rows[4][0]][1], results[rows[5][0]][1]
    print(f"hard top-1 inference is {soft_infer / hard_infer:.1f}x faster than soft inference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    table(4096, 256, 512, 8, 2, args.device, args.repeats)
    table(256, 64, 128, 8, 2, args.device, args.repeats)


if __name__ == "__main__":
    main()
