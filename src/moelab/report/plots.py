"""The plots of a sweep, as PNG (for the report) and SVG (for papers).

plots_for(data) is the table of a report's plots. Every draw function takes the report's data and
the PNG path and returns None when it drew, or the reason it did not (its data are missing): an
empty plot is never drawn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from operator import attrgetter
from pathlib import Path
from typing import Callable

import colorsys

import matplotlib.image
from matplotlib import colormaps
from matplotlib.ticker import MaxNLocator
import numpy as np
import pandas as pd

from moelab.report import study
from moelab.report.data import ReportData
from moelab.report.figures import legend_outside, save, subplots
from moelab.report.tables import axis_label, finished
from moelab.results.tree import VariantTree

PANELS_PER_ROW = 4  # grid points, heatmaps: wrapped into rows beyond this many, never squashed into a strip


@dataclass(frozen=True)
class Plot:
    name: str  # the file stem in summary/
    caption: str
    draw: Callable[[ReportData, Path], str | None]


def plots_for(data: ReportData) -> tuple[Plot, ...]:
    """The report's plots in page order; names and captions depend on the metric, and each numeric
    grid axis gets its own 'metric against axis' plot."""
    metric = data.metric
    by_axis = tuple(Plot(f"{metric}_vs_{axis_label(axis).replace('.', '_')}",
                         f"Final test {metric} against {axis_label(axis)}, per variant.", partial(metric_vs_axis, axis=axis))
                    for axis in data.grid_axes if axis != "seed")
    # a search has a grid point per trial: one panel each only for its best trials
    per_point, of_points = (study.on_best_points, f" Best {study.BEST_POINTS_DRAWN} trials of the search."
                            ) if data.study is not None else ((lambda draw: draw), "")
    searched = () if data.study is None else (
        Plot("study_history", "The search: the objective of each trial in the order they were asked for (pruned "
             "trials at the epoch they were stopped), and the best so far.", study.history),
        Plot("study_importances", "The search: how much of the objective's variance each parameter explains "
             "(fANOVA over the complete trials).", study.importances),
        Plot("study_parameters", "The search: the objective of each trial against each searched parameter.",
             study.objective_vs_parameters),
    )
    return (
        *searched,
        Plot("learning_curves", "Validation metric and training loss per epoch, mean ± std over seeds." + of_points,
             per_point(learning_curves)),
        Plot(f"test_{metric}", "Final test metric per variant and grid point (mean ± std over seeds)." + of_points,
             per_point(test_metric_bars)),
        *by_axis,
        Plot("latency_vs_accuracy", "Inference cost against accuracy, for soft and hard routing: when does an MoE beat "
             "a dense model of equal cost?", latency_vs_accuracy),
        Plot("utilisation", "Share of training samples each expert received, per epoch (first choice).",
             utilisation_heatmaps),
        Plot("router_health", "Router health per epoch, mean ± std over seeds: share of dead experts (first choice of "
             "under 1 % of the training samples), effective number of experts (exp of the first-choice entropy), and the "
             "share of test samples whose first expert changed since the previous epoch.", router_health),
        Plot("specialisation", "Which experts the test samples of each class (text: the bytes of each type, per MoE layer) went to.", specialisation_heatmaps),
        Plot("gate_batches", "Gate activations over all training batches.", gate_batches),
        Plot("confusion", "Test confusion matrices.", confusion_matrices),
        Plot("roc", "One-vs-rest ROC curves of every class from the test probabilities, with the macro AUC.", roc_curves),
        Plot("reconstructions", "The target image and each variant's fit.", reconstructions),
        Plot("training_time", "Training time per run.", training_time),
        Plot("params_vs_metric", "Parameter count against the test metric.", params_vs_metric),
        Plot("matched_sizes", f"Test {metric} against active parameters: each MoE variant (circle) joined to its dense "
             "MLP of equal active parameters (solid line) and of equal total parameters (dashed line), mean over seeds.",
             matched_sizes),
    )


def draw_plots(data: ReportData) -> tuple[list[Plot], dict[str, str]]:
    """Draw every plot into summary/: the plots drawn, and the reason for each one not drawn."""
    drawn, not_drawn = [], {}
    for plot in plots_for(data):
        try:
            reason = plot.draw(data, data.tree.summary.plot(plot.name))
        except Exception as error:  # a damaged analysis file costs its plot, never the report
            reason = f"could not draw it ({type(error).__name__}: {error})"
        if reason:
            not_drawn[plot.name] = reason
        else:
            drawn.append(plot)
    return drawn, not_drawn


def learning_curves(data: ReportData, path: Path) -> str | None:
    """Validation metric and training loss per epoch, mean +- std over seeds, one column per grid point."""
    curves, metric = data.curves, data.metric
    column = f"val_{metric}"
    if curves.empty or column not in curves:
        return "no per-epoch metrics yet"
    axes_keys = [a for a in data.grid_axes if a != "seed" and a in curves]
    points = _points(curves, axes_keys)
    colours = variant_colours(data)
    panels = _wrapped(len(points), len(colours), rows_per_point=2, height=3.2)
    fig, axes = subplots(*panels.shape, figsize=panels.figsize, squeeze=False, sharex=True)
    for index, (label, part) in enumerate(points):
        top, col = panels.place(index)
        for variant, rows in part.groupby("variant", sort=False):
            for row_index, (value, ylabel) in enumerate(((column, f"validation {metric}"), ("train_loss", "training loss"))):
                stats = rows.groupby("epoch")[value].agg(["mean", "std", "count"])
                stats["std"] = stats["std"].fillna(0.0)
                ax = axes[top + row_index][col]
                # solid while every seed still trains; dashed once early stopping has ended some runs
                full = stats[stats["count"] == stats["count"].max()]
                colour = colours[variant]
                ax.plot(full.index, full["mean"], label=variant, color=colour)
                ax.fill_between(full.index, full["mean"] - full["std"], full["mean"] + full["std"], alpha=0.2, color=colour)
                tail = stats.loc[full.index.max():]
                if len(tail) > 1:
                    ax.plot(tail.index, tail["mean"], linestyle="--", linewidth=0.8, color=colour)
                ax.set_ylabel(ylabel)
        axes[top][col].set_title(label or "all runs", fontsize=9)
        axes[top + 1][col].set_xlabel("epoch")
        axes[top + 1][col].set_yscale("log")
    panels.hide_unused(axes)
    legend_outside(axes[0][-1])
    fig.suptitle("Learning curves (mean ± std over seeds; dashed: after early stopping ended some seeds)", fontsize=10)
    save(fig, path)
    return None


def test_metric_bars(data: ReportData, path: Path) -> str | None:
    """Final test metric per variant and grid point, with std error bars over seeds."""
    metric = data.metric
    column = f"test_{metric}"
    done = finished(data.runs)
    if done.empty or column not in done:
        return "no finished runs yet"
    axes_keys = [a for a in data.grid_axes if a != "seed" and a in done]
    points = _points(done, axes_keys)
    colours = variant_colours(data)
    variants = list(dict.fromkeys(done["variant"]))
    width = 0.8 / len(variants)
    fig, ax = subplots(figsize=(max(6.0, 0.25 * len(points) * len(variants) + 4), 4.5))
    for i, variant in enumerate(variants):
        means, stds = [], []
        for _, part in points:
            values = part.loc[part["variant"] == variant, column]
            means.append(values.mean())
            stds.append(values.std() if len(values) > 1 else 0.0)
        positions = [p + (i - (len(variants) - 1) / 2) * width for p in range(len(points))]
        ax.bar(positions, means, width, yerr=stds, capsize=3, label=variant, color=colours[variant])
    ax.set_xticks(range(len(points)), [label or "all runs" for label, _ in points], fontsize=8,
                  rotation=30 if len(points) > PANELS_PER_ROW else 0, ha="right" if len(points) > PANELS_PER_ROW else "center")
    if metric == "acc":
        ax.set_ylim(max(0.0, done[column].min() - 0.05), 1.0)
    ax.set_xlabel("grid point")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"Test {metric} per variant (mean ± std over seeds)")
    legend_outside(ax)
    save(fig, path)
    return None


def metric_vs_axis(data: ReportData, path: Path, axis: str) -> str | None:
    """Final test metric against one numeric grid axis, a line per variant (other axes pooled)."""
    metric = data.metric
    column = f"test_{metric}"
    done = finished(data.runs)
    if done.empty or column not in done or axis not in done:
        return "no finished runs yet"
    values = pd.to_numeric(done[axis], errors="coerce")
    if values.isna().any() or values.nunique() < 2:
        return f"{axis} is not a numeric axis with two or more values"
    colours = variant_colours(data)
    fig, ax = subplots(figsize=(6, 4.5))
    for variant, rows in done.assign(_x=values).groupby("variant", sort=False):
        stats = rows.groupby("_x")[column].agg(["mean", "std"]).fillna(0.0)
        # a search's trials are unrelated points: markers only, no line from one trial to the next
        ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=variant,
                    color=colours[variant], linestyle="none" if data.study is not None else "-")
    ax.set_xlabel(axis_label(axis))
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"Test {metric} vs {axis_label(axis)} (mean ± std over seeds)")
    legend_outside(ax)
    save(fig, path)
    return None


def utilisation_heatmaps(data: ReportData, path: Path) -> str | None:
    """Share of training samples per expert and epoch, one panel per MoE variant (first seed, first grid point)."""
    found = [(v, pd.read_csv(p)) for v, p in _variant_files(data.runs, attrgetter("analysis.utilisation"))]
    if not found:
        return "no MoE variant has finished"
    panels = _wrapped(len(found), 0, height=3.6, width=3.6)
    fig, axes = subplots(*panels.shape, figsize=panels.figsize, squeeze=False)
    for ax, (variant, table) in zip(axes.flat, found):
        grid = table.pivot(index="expert", columns="epoch", values="share")
        image = ax.imshow(grid.values, aspect="auto", cmap="viridis", vmin=0, vmax=max(0.5, float(grid.values.max())),
                          extent=(grid.columns.min() - 0.5, grid.columns.max() + 0.5, len(grid) - 0.5, -0.5))
        ax.set(title=variant, xlabel="epoch", ylabel="expert")
        _integer_ticks(ax.xaxis, ax.yaxis)
    panels.hide_unused(axes)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="share of samples (first choice)")
    fig.suptitle("Expert utilisation during training", fontsize=10)
    save(fig, path, tight=False)
    return None


ROUTER_HEALTH = (("train_dead_expert_fraction", "dead experts (share)"), ("train_effective_experts", "effective experts"),
                 ("train_max_vio", "MaxVio"), ("test_routing_flip_rate", "test routing flips"))


def router_health(data: ReportData, path: Path) -> str | None:
    """Dead-expert share, effective number of experts, MaxVio and test routing flip rate per epoch, a line per
    MoE variant, one column per grid point."""
    curves = data.curves
    if curves.empty or "train_effective_experts" not in curves:
        return "no MoE variant has per-epoch routing yet"
    moe = curves[curves["train_effective_experts"].notna()]
    points = _points(moe, [a for a in data.grid_axes if a != "seed" and a in moe])
    health = [(column, label) for column, label in ROUTER_HEALTH if column in moe]  # trees before MaxVio lack it
    colours = variant_colours(data)
    panels = _wrapped(len(points), len(colours), rows_per_point=len(health), height=2.7)
    fig, axes = subplots(*panels.shape, figsize=panels.figsize, squeeze=False, sharex=True)
    for index, (label, part) in enumerate(points):
        top, col = panels.place(index)
        for variant, rows in part.groupby("variant", sort=False):
            for row_index, (column, ylabel) in enumerate(health):
                stats = rows.groupby("epoch")[column].agg(["mean", "std"]).dropna(subset=["mean"])
                ax = axes[top + row_index][col]
                ax.plot(stats.index, stats["mean"], label=variant, color=colours[variant])
                spread = stats["std"].fillna(0.0)
                ax.fill_between(stats.index, stats["mean"] - spread, stats["mean"] + spread, alpha=0.2, color=colours[variant])
                ax.set_ylabel(ylabel)
        axes[top][col].set_title(label or "all runs", fontsize=9)
        axes[top + len(health) - 1][col].set_xlabel("epoch")
    panels.hide_unused(axes)
    legend_outside(axes[0][-1])
    fig.suptitle("Router health (mean ± std over seeds)", fontsize=10)
    save(fig, path)
    return None


def roc_curves(data: ReportData, path: Path) -> str | None:
    """Each class's one-vs-rest ROC curve, one panel per variant (first seed, first grid point)."""
    found = [(v, pd.read_csv(p)) for v, p in _variant_files(data.runs, attrgetter("analysis.roc"))]
    found = [(v, t) for v, t in found if not t.empty]
    if not found:
        return "no finished classification runs"
    columns = min(4, len(found))
    rows = -(-len(found) // columns)
    fig, axes = subplots(rows, columns, figsize=(3.4 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(found):]:
        ax.axis("off")
    for ax, (variant, table) in zip(axes.flat, found):
        areas = []
        for c, curve in table.groupby("class"):
            ax.plot(curve["false_positive_rate"], curve["true_positive_rate"], linewidth=0.9, label=str(c))
            areas.append(np.trapezoid(curve["true_positive_rate"], curve["false_positive_rate"]))
        ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=0.8)
        ax.set(title=f"{variant}: macro AUC {np.mean(areas):.3f}", xlabel="false positive rate",
               ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    axes.flat[0].legend(title="class", fontsize=6, title_fontsize=7, ncols=2, loc="lower right")
    fig.suptitle("One-vs-rest ROC curves on the test set (first seed, first grid point)", fontsize=10)
    save(fig, path)
    return None


def specialisation_heatmaps(data: ReportData, path: Path) -> str | None:
    """Share of each class's test samples routed to each expert (rows sum to 1); for language models,
    of each byte type's test tokens, in each MoE layer."""
    found = [(v, pd.read_csv(p, index_col="class")) for v, p in _variant_files(data.runs, attrgetter("analysis.class_expert"))]
    rows_are = "class"
    if not found:
        found = [(v, _layer_rows(pd.read_csv(p))) for v, p in _variant_files(data.runs, attrgetter("analysis.token_type_expert"))]
        rows_are = "byte type"
    if not found:
        return "no MoE classification or language-model variant has finished"
    longest = max(len(table) for _, table in found)
    panels = _wrapped(len(found), 0, height=max(3.8, 0.22 * longest + 1.2), width=3.4 if rows_are == "class" else 4.6)
    fig, axes = subplots(*panels.shape, figsize=panels.figsize, squeeze=False)
    for ax, (variant, table) in zip(axes.flat, found):
        shares = table.div(table.sum(axis=1).replace(0, 1), axis=0)
        image = ax.imshow(shares.values, aspect="auto", cmap="magma", vmin=0, vmax=1)
        ax.set(title=variant, xlabel="expert", ylabel=rows_are, xticks=range(shares.shape[1]), yticks=range(len(shares)))
        if rows_are != "class":
            ax.set_yticklabels(shares.index, fontsize=6)
    panels.hide_unused(axes)
    fig.colorbar(image, ax=axes.ravel().tolist(), label=f"share of the {rows_are}'s test {'samples' if rows_are == 'class' else 'tokens'}")
    fig.suptitle(f"{rows_are.capitalize()} → expert routing (specialisation)", fontsize=10)
    save(fig, path, tight=False)
    return None


def _layer_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The token-type table (one row per MoE layer and byte type) with rows named "L<layer> <type>"."""
    names = [f"L{layer} {kind}" for layer, kind in zip(table["layer"], table["token_type"])]
    return table.drop(columns=["layer", "token_type"]).set_axis(names)


def gate_batches(data: ReportData, path: Path) -> str | None:
    """Share of each batch's samples per expert over all training batches, one panel per MoE variant."""
    found = [(v, pd.read_csv(p)) for v, p in _variant_files(data.runs, attrgetter("analysis.gates_per_batch"))]
    found = [(v, t) for v, t in found if not t.empty]
    if not found:
        return "no MoE variant has finished"
    fig, axes = subplots(len(found), 1, figsize=(9, 1.6 * len(found) + 1), squeeze=False)
    for ax, (variant, table) in zip(axes[:, 0], found):
        table = table.assign(step=table["epoch"] * (table["batch"].max() + 1) + table["batch"])
        grid = table.pivot(index="expert", columns="step", values="share")
        image = ax.imshow(grid.values, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set(ylabel=f"{variant}\nexpert")
        _integer_ticks(ax.yaxis)
    axes[-1, 0].set_xlabel("training batch (all epochs, in order)")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="share of the batch")
    fig.suptitle("Gate activations per batch", fontsize=10)
    save(fig, path, tight=False)
    return None


def latency_vs_accuracy(data: ReportData, path: Path) -> str | None:
    """Batch-1 latency and batch-1024 throughput against the test metric, per variant and routing
    (soft and hard for MoE models): when does an MoE beat a dense model of equal cost?"""
    metric = data.metric
    points = []
    for row in finished(data.runs).itertuples(index=False):
        file = VariantTree(Path(row.path)).analysis.inference
        try:
            figures = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for routing, values in figures.items():
            points.append({"label": row.variant if routing == "inferred" else f"{row.variant} ({routing})",
                           "latency": values["latency_ms"], "throughput": values["throughput"],
                           "score": values.get(f"test_{metric}")})
    if not points:
        return "no inference measurements yet"
    table = pd.DataFrame(points).groupby("label", sort=False).mean()
    colours = dict(zip(table.index, palette(len(table))))
    fig, (left, right) = subplots(1, 2, figsize=(11, 4.5))
    for label, row in table.iterrows():
        marker = "s" if "(soft)" in label else "o"
        left.scatter(row["latency"], row["score"], marker=marker, label=label, color=colours[label])
        right.scatter(row["throughput"], row["score"], marker=marker, label=label, color=colours[label])
    left.set(xlabel="latency at batch 1 (ms)", ylabel=f"test {metric}", title="Latency vs accuracy")
    right.set(xlabel="throughput at batch 1024 (samples/s, log scale)", ylabel=f"test {metric}", xscale="log",
              title="Throughput vs accuracy")
    legend_outside(right)
    fig.suptitle("Inference cost vs accuracy (squares: MoE scored with soft routing)", fontsize=10)
    save(fig, path)
    return None


def confusion_matrices(data: ReportData, path: Path) -> str | None:
    found = [(v, pd.read_csv(p, index_col="true")) for v, p in _variant_files(data.runs, attrgetter("analysis.confusion"))]
    if not found:
        return "no finished classification runs"
    columns = min(4, len(found))
    rows = -(-len(found) // columns)
    fig, axes = subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(found):]:
        ax.axis("off")
    for ax, (variant, table) in zip(axes.flat, found):
        shares = table.div(table.sum(axis=1).replace(0, 1), axis=0)
        image = ax.imshow(shares.values, cmap="Blues", vmin=0, vmax=1)
        ax.set(title=variant, xlabel="predicted class", ylabel="true class")
    fig.colorbar(image, ax=axes.ravel().tolist(), label="share of the true class")
    fig.suptitle("Test confusion matrices (first seed, first grid point)", fontsize=10)
    save(fig, path, tight=False)
    return None


def reconstructions(data: ReportData, path: Path) -> str | None:
    """image_fit: the target image next to each variant's fitted image."""
    done = finished(data.runs)
    found = _variant_files(done, attrgetter("reconstruction"))
    targets = _variant_files(done, attrgetter("target_image"))
    if not found or not targets:
        return "not an image_fit experiment, or nothing finished"
    fig, axes = subplots(1, len(found) + 1, figsize=(2.6 * (len(found) + 1), 3.0))
    axes[0].imshow(matplotlib.image.imread(targets[0][1]))
    axes[0].set_title("target")
    for ax, (variant, file) in zip(axes[1:], found):
        score = done.loc[done["variant"] == variant, "test_psnr"].iloc[0]
        ax.imshow(matplotlib.image.imread(file))
        ax.set_title(f"{variant}\n{score:.1f} dB", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle("Fitted images (first seed, first grid point; test PSNR)", fontsize=10)
    save(fig, path)
    return None


def training_time(data: ReportData, path: Path) -> str | None:
    done = finished(data.runs)
    if done.empty or "train_seconds" not in done:
        return "no finished runs yet"
    stats = done.groupby("variant", sort=False)["train_seconds"].agg(["mean", "std"]).fillna(0.0)
    fig, ax = subplots(figsize=(max(5.0, 0.8 * len(stats) + 2), 4))
    ax.bar(stats.index, stats["mean"], yerr=stats["std"], capsize=3, color="tab:gray")
    ax.set(ylabel="training time per run (s)", xlabel="variant", title="Training time per variant (mean ± std)")
    ax.tick_params(axis="x", rotation=30)
    save(fig, path)
    return None


def params_vs_metric(data: ReportData, path: Path) -> str | None:
    metric = data.metric
    column = f"test_{metric}"
    done = finished(data.runs)
    if done.empty or column not in done or "num_parameters" not in done:
        return "no finished runs yet"
    colours = variant_colours(data)
    fig, ax = subplots(figsize=(6, 4.5))
    for variant, rows in done.groupby("variant", sort=False):
        ax.scatter(rows["num_parameters"], rows[column], label=variant, alpha=0.7, color=colours[variant])
    ax.set_xscale("log")
    ax.set_xlabel("parameters (count, log scale)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"Parameter count vs test {metric} (one point per run)")
    legend_outside(ax)
    save(fig, path)
    return None


def palette(count: int) -> list[tuple[float, ...]]:
    """`count` colours, none repeated: tab10's up to ten, then tab20's (its ten dark shades first, so the
    first ten keep their colour), then evenly spaced hues in two lightnesses."""
    if count <= 10:
        return list(colormaps["tab10"].colors[:count])
    if count <= 20:
        tab20 = colormaps["tab20"].colors
        return list((tab20[0::2] + tab20[1::2])[:count])
    half = -(-count // 2)
    return [colorsys.hls_to_rgb(i / half, 0.4 if n == 0 else 0.65, 0.75) for n in range(2) for i in range(half)][:count]


def variant_colours(data: ReportData) -> dict[str, tuple[float, ...]]:
    """One colour per variant, in the order the runs (then the curves) name them: the same variant has
    the same colour in every plot of a report."""
    names = list(dict.fromkeys([*(data.runs.get("variant", ())), *(data.curves.get("variant", ()))]))
    return dict(zip(names, palette(len(names))))


def rounded(value) -> str:
    """A grid or search value for a label: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, (float, np.floating)) else str(value)


def _integer_ticks(*axes) -> None:
    for axis in axes:
        axis.set_major_locator(MaxNLocator(integer=True))


@dataclass(frozen=True)
class _Wrapped:
    """Panels of `count` items wrapped into rows of at most PANELS_PER_ROW, each item `rows_per_point`
    axes high."""
    count: int
    rows_per_point: int
    columns: int
    figsize: tuple[float, float]

    @property
    def shape(self) -> tuple[int, int]:
        return -(-self.count // self.columns) * self.rows_per_point, self.columns

    def place(self, index: int) -> tuple[int, int]:
        """(top row, column) of item `index`."""
        return (index // self.columns) * self.rows_per_point, index % self.columns

    def hide_unused(self, axes) -> None:
        for index in range(self.count, self.shape[0] // self.rows_per_point * self.columns):
            top, col = self.place(index)
            for row in range(self.rows_per_point):
                axes[top + row][col].axis("off")


def _wrapped(count: int, legend_entries: int, rows_per_point: int = 1, height: float = 3.2,
             width: float = 4.2) -> _Wrapped:
    columns = max(1, min(PANELS_PER_ROW, count))
    rows = -(-count // columns) * rows_per_point
    legend_width = 0.0 if not legend_entries else 1.8 if legend_entries <= 16 else 3.4
    return _Wrapped(count, rows_per_point, columns, (max(7.0, width * columns) + legend_width, height * rows + 0.6))


def _points(frame: pd.DataFrame, keys: list[str]) -> list[tuple[str, pd.DataFrame]]:
    if not keys:
        return [("", frame)]
    labelled = frame.assign(_point=frame[keys].astype(str).agg(", ".join, axis=1) if len(keys) > 1 else frame[keys[0]].astype(str))
    points = []
    for _, part in labelled.groupby("_point", sort=False):
        first = part.iloc[0]
        points.append((", ".join(f"{axis_label(k)}={rounded(first[k])}" for k in keys), part))
    return points


def _variant_files(runs: pd.DataFrame, file_of: Callable[[VariantTree], Path]) -> list[tuple[str, Path]]:
    """(variant, file) of each variant's first finished run (lowest seed of the first job) that has the
    file `file_of` names in its folder."""
    found = []
    done = finished(runs)
    if done.empty:
        return found
    for variant, rows in done.groupby("variant", sort=False):
        for row in rows.sort_values("seed").itertuples(index=False):
            file = file_of(VariantTree(Path(row.path)))
            if file.is_file():
                found.append((variant, file))
                break
    return found


def matched_sizes(data: ReportData, path: Path) -> str | None:
    """Test metric against active parameters, each MoE variant and grid point joined to its matched dense models."""
    matched = data.matched
    if not matched:
        return "no dense models matched to the MoE variants (baseline.match)"
    metric = data.metric
    fig, ax = subplots(figsize=(7.5, 5))
    names = list(dict.fromkeys(e["variant"] for e in matched))
    colours = dict(zip(names, palette(len(names))))
    labelled = set()
    for entry in matched:
        colour = colours[entry["variant"]]
        for match in entry["matches"]:
            ax.plot([entry["active_parameters"], match["parameters"]], [entry["score"], match["score"]], color=colour,
                    linestyle="-" if match["kind"].startswith("active") else "--", linewidth=1)
            ax.scatter(match["parameters"], match["score"], marker="s", color="white", edgecolor=colour, zorder=3)
        ax.scatter(entry["active_parameters"], entry["score"], marker="o", color=colour, zorder=3,
                   label=None if entry["variant"] in labelled else entry["variant"])
        labelled.add(entry["variant"])
        point = ", ".join(f"{axis_label(k)}={v}" for k, v in entry["point"].items())
        if point:
            ax.annotate(point, (entry["active_parameters"], entry["score"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    if data.baseline is not None:
        base = data.table[data.table["variant"] == data.baseline]
        ax.scatter(base["num_parameters_mean"], base[f"test_{metric}_mean"], marker="*", s=120, color="black", zorder=3,
                   label=f"{data.baseline} (baseline)")
    ax.set_xscale("log")
    ax.set(xlabel="active parameters (log scale)", ylabel=f"test {metric}")
    ax.set_title("MoE variants (circles) and dense models (squares) of equal size\n"
                 "solid: equal active parameters, dashed: equal total parameters; mean over seeds", fontsize=10)
    legend_outside(ax)
    save(fig, path)
    return None
