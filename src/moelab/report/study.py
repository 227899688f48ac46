"""A search's study in the report: its plots and its box on the first screen.

Read from the plain files the search writes into the tree (results.tree.StudyFiles: the trials
table, the study summary, the best trial's experiment file), so the report needs neither Optuna nor
the search package: one row per trial, the counts, the best trial and the parameter importances.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
from matplotlib.ticker import MaxNLocator

from moelab.report.figures import legend_outside, save, subplots
from moelab.results.tree import ExperimentTree

# "ReportData" (report/data.py) is named in annotations only: data.py and plots.py import this
# module, so it imports neither of them
# plots with one panel per grid point draw, for a study, only the best trials' points
BEST_POINTS_DRAWN = 6


@dataclass(frozen=True)
class StudyData:
    trials: pd.DataFrame  # number, state, value, one column per searched key, epochs, jobs, ...
    summary: dict  # objective, counts by state, best trial, parameter importances, the space
    best_experiment: Path | None  # the best trial as an experiment file, when a trial completed

    @property
    def keys(self) -> list[str]:
        return list(self.summary.get("space", {}))

    @property
    def objective(self) -> dict:
        return self.summary["objective"]

    def count(self, state: str) -> int:
        return int((self.trials["state"] == state).sum()) if not self.trials.empty else 0

    def best_jobs(self, count: int) -> list[str]:
        """The jobs of the `count` best points among the complete trials (a point a sampler asked
        for again is one point)."""
        complete = self.trials[self.trials["state"] == "complete"].dropna(subset=["value"])
        ordered = complete.sort_values("value", ascending=self.objective["direction"] == "minimize", kind="stable")
        points = list(dict.fromkeys(str(jobs) for jobs in ordered["jobs"]))[:count]
        return [key for jobs in points for key in jobs.split()]


def read_study(tree: ExperimentTree) -> StudyData | None:
    """The study files of an experiment folder, or None when it is no search (or wrote none yet)."""
    files = tree.study
    try:
        summary = json.loads(files.summary.read_text())
        trials = pd.read_csv(files.trials_csv, dtype={"jobs": str})
    except (OSError, ValueError):
        return None
    return StudyData(trials, summary, files.best_experiment if files.best_experiment.is_file() else None)


def on_best_points(draw: Callable[["ReportData", Path], str | None]) -> Callable[["ReportData", Path], str | None]:
    """A plot with one panel per grid point, drawn for the best trials of a study only (a study has
    a point per trial: dozens of panels would be unreadable)."""

    def draw_best(data: "ReportData", path: Path) -> str | None:
        best = best_trials_data(data, BEST_POINTS_DRAWN)
        return draw(best, path) if best is not None else "no complete trial yet"

    return draw_best


def best_trials_data(data: "ReportData", count: int) -> "ReportData | None":
    """The report's data restricted to the jobs of the `count` best complete trials (by the
    validation objective: the test set plays no part in the choice)."""
    jobs = set(data.study.best_jobs(count))
    if not jobs:
        return None
    runs = data.runs[data.runs["job"].isin(jobs)]
    table = data.table
    if not table.empty and data.group_keys:
        points = runs[data.group_keys].drop_duplicates()
        table = table.merge(points, on=data.group_keys)
    return dataclasses.replace(data, runs=runs, table=table,
                               curves=data.curves[data.curves["job"].isin(jobs)] if not data.curves.empty else data.curves)


def history(data: "ReportData", path: Path) -> str | None:
    """The objective of every finished trial in the order they were asked for, and the best so far."""
    study = data.study
    trials = study.trials
    ended = trials[trials["state"].isin(["complete", "pruned"])].dropna(subset=["value"])
    if ended.empty:
        return "no trial has ended yet"
    objective = study.objective
    fig, ax = subplots(figsize=(9.0, 4.2))
    complete = ended[ended["state"] == "complete"]
    pruned = ended[ended["state"] == "pruned"]
    ax.scatter(complete["number"], complete["value"], label=f"complete ({len(complete)})", zorder=3)
    ax.scatter(pruned["number"], pruned["value"], marker="x", color="grey",
               label=f"pruned ({len(pruned)}; at the epoch it was stopped)", zorder=2)
    if not complete.empty:
        best = complete["value"].cummax() if objective["direction"] == "maximize" else complete["value"].cummin()
        ax.step(complete["number"], best, where="post", color="C3", label="best so far")
    failed = study.count("failed")
    pruner = "no pruner" if study.summary["pruner"] == "none" else f"{study.summary['pruner']} pruner"
    ax.set(xlabel="trial", ylabel=f"{objective['metric']} of {objective['variant']}",
           title=f"Optimisation history: {study.summary['sampler']} sampler, {pruner}"
                 + (f"; {failed} failed" if failed else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend_outside(ax)
    save(fig, path)
    return None


def importances(data: "ReportData", path: Path) -> str | None:
    """fANOVA parameter importances over the complete trials (computed by the search with Optuna)."""
    found = data.study.summary.get("importances")
    if not found:
        return f"parameter importances {data.study.summary.get('importances_note') or 'not computed'}"
    names = list(found)[::-1]
    fig, ax = subplots(figsize=(6.5, 1.0 + 0.45 * len(names)))
    ax.barh(names, [found[n] for n in names])
    ax.set(xlabel="importance (share of the objective's variance, fANOVA)", title="Parameter importances")
    save(fig, path)
    return None


def objective_vs_parameters(data: "ReportData", path: Path) -> str | None:
    """The objective of every ended trial against each searched parameter."""
    study = data.study
    trials = study.trials
    ended = trials[trials["state"].isin(["complete", "pruned"])].dropna(subset=["value"])
    if ended.empty:
        return "no trial has ended yet"
    keys = study.keys
    fig, axes = subplots(1, len(keys), figsize=(3.6 * len(keys) + 1.7, 3.6), squeeze=False, sharey=True)
    for ax, key in zip(axes[0], keys):
        entry = study.summary["space"][key]
        for state, marker, color in (("complete", "o", "C0"), ("pruned", "x", "grey")):
            part = ended[ended["state"] == state]
            values = part[key]
            if "choice" in entry:  # categories at their index, labelled with their values
                labels = [str(v) for v in entry["choice"]]
                values = values.astype(str).map({label: i for i, label in enumerate(labels)})
                ax.set_xticks(range(len(labels)), labels)
            ax.scatter(values, part["value"], marker=marker, color=color, label=state)
        if "loguniform" in entry or entry.get("log"):
            ax.set_xscale("log")
        ax.set_xlabel(key)
    axes[0][0].set_ylabel(f"{study.objective['metric']} of {study.objective['variant']}")
    legend_outside(axes[0][-1])
    save(fig, path)
    return None


def study_section(data: "ReportData", href: Callable[[Path], str]) -> str:
    """The study's box on the first screen: progress, best trial, importances, the ready-to-run file."""
    study = data.study
    summary, objective = study.summary, study.objective
    counts = ", ".join(f"{study.count(state)} {state}" for state in ("complete", "pruned", "failed", "running")
                       if study.count(state))
    lost = study.count("lost")
    pruner = "no pruner" if summary["pruner"] == "none" else f"{summary['pruner']} pruner"
    text = (f"<b>Search</b> ({_e(summary['sampler'])} sampler, {_e(pruner)}): "
            f"{summary.get('finished', 0)} of {summary['n_trials']} trials finished ({_e(counts) or 'none yet'})"
            + (f"; {lost} lost with their worker and retried" if lost else "") + ". ")
    best = summary.get("best")
    if best:
        point = ", ".join(f"{_e(k)} = {_e(_short(v))}" for k, v in best["params"].items())
        text += (f"Selected on validation: trial {best['number']}, {_e(objective['metric'])} of {_e(objective['variant'])} "
                 f"<b>{best['value']:.4f}</b> ({objective['direction']}, mean over {len(best['jobs'])} job(s)) at {point}.")
        if study.best_experiment is not None:
            text += f" Ready to run: <a href='{_e(href(study.best_experiment))}'>{_e(study.best_experiment.name)}</a>."
    else:
        text += "No trial has completed yet."
    found = summary.get("importances")
    if found:
        text += "<br>Importances: " + ", ".join(f"{_e(k)} {v:.2f}" for k, v in found.items()) + "."
    pruned = study.trials[study.trials["state"] == "pruned"] if not study.trials.empty else study.trials
    if not pruned.empty:
        complete = study.trials[study.trials["state"] == "complete"]
        text += (f"<br>{len(pruned)} trial(s) pruned after {pruned['epochs'].mean():.1f} epoch(s) of "
                 f"{_e(objective['variant'])} on average"
                 + (f" (complete trials: {complete['epochs'].mean():.1f})" if not complete.empty else "") + ".")
    return f"<div class='box headline'>{text}</div>"


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) and not math.isnan(value) else str(value)


def _e(text) -> str:
    return html.escape(str(text), quote=True)
