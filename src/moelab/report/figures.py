"""What every plot of the report shares: a figure without pyplot, the legend beside the axes, and
saving as PNG (for the report) and SVG (for papers); and a running variant's curves, which training
draws (this module imports matplotlib alone). Below plots.py and study.py, which both draw."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from moelab.results.io import atomic_write

FORMATS = ("png", "svg")


def subplots(*args, figsize, **kwargs):
    """A figure not registered with pyplot: no backend or global state, safe in workers and notebooks."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def legend_outside(ax) -> None:
    """The legend right of `ax`, outside every data area (tight_layout makes room for it)."""
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              ncols=1 if len(labels) <= 16 else 2)


def save(fig, path: Path, formats: tuple[str, ...] = FORMATS, tight: bool = True) -> None:
    if tight:
        fig.tight_layout()
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        atomic_write(target, lambda f: fig.savefig(f, format=fmt, dpi=110), mode="wb")


def variant_curves(history: list[dict], metric: str, title: str, path: Path) -> None:
    """One variant's curves so far: what a running job refreshes every few epochs."""
    epochs = [r["epoch"] for r in history]
    fig, (left, right) = subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [r["train_loss"] for r in history], label="train")
    left.plot(epochs, [r["val_loss"] for r in history], label="validation")
    left.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    left.legend(fontsize=8)
    right.plot(epochs, [r[f"train_{metric}"] for r in history], label="train")
    right.plot(epochs, [r[f"val_{metric}"] for r in history], label="validation")
    right.set(xlabel="epoch", ylabel=metric, title=metric)
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    save(fig, path, formats=("png",))
