"""The standard plots of a sweep, as PNG files. A plot whose data is missing is skipped with a reason."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes
import matplotlib.pyplot as plt
import pandas as pd

from moelab.results.io import atomic_write
from moelab.results.status import DONE


def learning_curves(curves: pd.DataFrame, grid_axes: list[str], metric: str, path: Path) -> str | None:
    """Validation metric and training loss per epoch, mean +- std over seeds, one column per grid point."""
    column = f"val_{metric}"
    if curves.empty or column not in curves:
        return "no per-epoch metrics yet"
    axes_keys = [a for a in grid_axes if a != "seed" and a in curves]
    points = _points(curves, axes_keys)
    fig, axes = plt.subplots(2, len(points), figsize=(4.2 * len(points), 6.5), squeeze=False, sharex=True)
    for col, (label, part) in enumerate(points):
        for variant, rows in part.groupby("variant", sort=False):
            for row_index, (value, ylabel) in enumerate(((column, f"validation {metric}"), ("train_loss", "training loss"))):
                stats = rows.groupby("epoch")[value].agg(["mean", "std", "count"])
                stats["std"] = stats["std"].fillna(0.0)
                ax = axes[row_index][col]
                # solid while every seed still trains; dashed once early stopping has ended some runs
                full = stats[stats["count"] == stats["count"].max()]
                line, = ax.plot(full.index, full["mean"], label=variant)
                ax.fill_between(full.index, full["mean"] - full["std"], full["mean"] + full["std"], alpha=0.2, color=line.get_color())
                tail = stats.loc[full.index.max():]
                if len(tail) > 1:
                    ax.plot(tail.index, tail["mean"], linestyle="--", linewidth=0.8, color=line.get_color())
                ax.set_ylabel(ylabel)
        axes[0][col].set_title(label or "all runs", fontsize=9)
        axes[1][col].set_xlabel("epoch")
        axes[1][col].set_yscale("log")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Learning curves (mean ± std over seeds; dashed: after early stopping ended some seeds)", fontsize=10)
    _save(fig, path)
    return None


def test_metric_bars(runs: pd.DataFrame, grid_axes: list[str], metric: str, path: Path) -> str | None:
    """Final test metric per variant and grid point, with std error bars over seeds."""
    column = f"test_{metric}"
    done = runs[runs["state"] == DONE] if "state" in runs else runs.iloc[0:0]
    if done.empty or column not in done:
        return "no finished runs yet"
    axes_keys = [a for a in grid_axes if a != "seed" and a in done]
    points = _points(done, axes_keys)
    variants = list(dict.fromkeys(done["variant"]))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(points) * len(variants) ** 0.5 + 3), 4.5))
    for i, variant in enumerate(variants):
        means, stds = [], []
        for _, part in points:
            values = part.loc[part["variant"] == variant, column]
            means.append(values.mean())
            stds.append(values.std() if len(values) > 1 else 0.0)
        positions = [p + (i - (len(variants) - 1) / 2) * width for p in range(len(points))]
        ax.bar(positions, means, width, yerr=stds, capsize=3, label=variant)
    ax.set_xticks(range(len(points)), [label or "all runs" for label, _ in points], fontsize=8)
    low = done[column].min()
    if metric == "acc":
        ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"Test {metric} per variant (mean ± std over seeds)")
    ax.legend(fontsize=8, ncols=min(4, len(variants)))
    _save(fig, path)
    return None


def params_vs_metric(runs: pd.DataFrame, metric: str, path: Path) -> str | None:
    column = f"test_{metric}"
    done = runs[runs["state"] == DONE] if "state" in runs else runs.iloc[0:0]
    if done.empty or column not in done or "num_parameters" not in done:
        return "no finished runs yet"
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for variant, rows in done.groupby("variant", sort=False):
        ax.scatter(rows["num_parameters"], rows[column], label=variant, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (count, log scale)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"Parameter count vs test {metric} (one point per run)")
    ax.legend(fontsize=8)
    _save(fig, path)
    return None


def _points(frame: pd.DataFrame, keys: list[str]) -> list[tuple[str, pd.DataFrame]]:
    if not keys:
        return [("", frame)]
    labelled = frame.assign(_point=frame[keys].astype(str).agg(", ".join, axis=1) if len(keys) > 1 else frame[keys[0]].astype(str))
    points = []
    for point, part in labelled.groupby("_point", sort=False):
        first = part.iloc[0]
        points.append((", ".join(f"{axis_label(k)}={first[k]}" for k in keys), part))
    return points


def axis_label(axis: str) -> str:
    """variants.*.num_experts -> num_experts; variants.moe.k -> moe.k; train.lr stays."""
    if axis.startswith("variants.*."):
        return axis[len("variants.*."):]
    return axis[len("variants."):] if axis.startswith("variants.") else axis


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format=path.suffix.lstrip("."), dpi=120), mode="wb")
    plt.close(fig)
