"""Read experiments trees into pandas DataFrames, for the report and for your own analysis.

    from moelab.results import load_runs, load_curves
    runs = load_runs("experiments/default")      # one row per job x variant
    curves = load_curves("experiments/default")  # one row per job x variant x epoch

Reading never fails on a partial tree (jobs still running, failed variants) or on a damaged file:
what could not be read is listed in `Collection.problems` (and warned about), never raised.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from moelab.results.io import read_json, read_jsonl
from moelab.results.status import DONE, job_state, read_status
from moelab.results.tree import ExperimentTree, JobTree



@dataclass
class Collection:
    runs: pd.DataFrame
    curves: pd.DataFrame
    problems: list[str] = field(default_factory=list)  # one line per thing that is missing or unreadable
    grid_axes: list[str] = field(default_factory=list)


def load_runs(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    return collect(paths).runs


def load_curves(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    return collect(paths).curves


def collect(paths: str | Path | Iterable[str | Path]) -> Collection:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows, curve_rows, problems, axes = [], [], [], []
    for path in paths:
        tree = ExperimentTree(Path(path))
        if not tree.jobs_dir.is_dir():
            problems.append(f"{tree.path}: no jobs/ folder (nothing launched here yet)")
            continue
        for job in tree.jobs():
            _collect_job(tree, job, rows, curve_rows, problems, axes)
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    runs = pd.DataFrame(rows)
    curves = pd.DataFrame(curve_rows)
    return Collection(runs, curves, problems, axes)


def _collect_job(tree: ExperimentTree, job: JobTree, rows: list, curve_rows: list, problems: list, axes: list) -> None:
    try:
        spec = read_json(job.config_file)
        config = spec["config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        problems.append(f"{job.config_file}: unreadable ({type(error).__name__}: {error}); job skipped")
        return
    for axis in spec.get("grid_values", {}):
        if axis not in axes:
            axes.append(axis)
    names = [v["name"] for v in config["variants"]]
    state = job_state(job, names)
    status = read_status(job) or {}
    if job.status_file.exists() and not status:
        problems.append(f"{job.status_file}: unreadable; job state taken from the results on disk")
    base = {"experiment": spec.get("experiment", tree.path.name), "job": job.key, "job_state": state,
            "seed": config["seed"], **spec.get("grid_values", {}),
            **_flatten(config["data"], "data."), **_flatten(config["train"], "train."),
            "host": status.get("host"), "attempts": status.get("attempts")}
    for variant in config["variants"]:
        name = variant["name"]
        record = status.get("variants", {}).get(name, {})
        row = {**base, "variant": name, "model": variant["model"], "path": str(job.variant(name).path),
               **{f"params.{k}": v for k, v in variant.items() if k not in ("name", "model")},
               "state": record.get("state", "pending"), "error": record.get("error")}
        out = job.variant(name)
        if out.is_done():
            try:
                results = read_json(out.results_file)
                row.update({k: v for k, v in results.items() if not isinstance(v, (dict, list))})
                row["state"] = DONE
            except (OSError, json.JSONDecodeError) as error:
                problems.append(f"{out.results_file}: unreadable ({type(error).__name__}); variant counted as unfinished")
                row["state"] = "corrupt"
        elif row["state"] == DONE:
            row["state"] = "missing"
            problems.append(f"{out.results_file}: missing although status.json says done; variant counted as unfinished")
        if row["state"] != DONE and state == "interrupted":
            row["state"] = "interrupted"
        rows.append(row)
        if out.metrics_file.is_file():
            bad: list[int] = []
            for line in read_jsonl(out.metrics_file, on_bad_line=lambda number, _: bad.append(number)):
                curve_rows.append({"experiment": base["experiment"], "job": job.key, "variant": name,
                                   "seed": config["seed"], **spec.get("grid_values", {}),
                                   **{k: v for k, v in line.items() if not isinstance(v, list)}})
            if bad:
                problems.append(f"{out.metrics_file}: skipped unreadable line(s) {bad}")


def _flatten(section: dict, prefix: str) -> dict:
    flat = {}
    for key, value in section.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
