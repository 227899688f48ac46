"""Read experiments trees into pandas DataFrames, for the report and for your own analysis.

    from moelab.results import load_runs, load_curves
    runs = load_runs("experiments/default")      # one row per job x variant
    curves = load_curves("experiments/default")  # one row per job x variant x epoch

Reading never fails on a partial tree (jobs still running, failed variants) or on a damaged file:
what could not be read is listed in `Collection.problems` (and warned about), never raised.
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from moelab.results import configurations
from moelab.results.errors import DamagedRecord
from moelab.results.io import atomic_write, read_jsonl
from moelab.results.records import read_job_spec
from moelab.results.states import view_job
from moelab.results.status import JobState, JobStatus
from moelab.results.tree import ExperimentTree, JobTree



@dataclass
class Collection:
    runs: pd.DataFrame
    curves: pd.DataFrame
    problems: list[str] = field(default_factory=list)  # one line per thing that is missing or unreadable
    grid_axes: list[str] = field(default_factory=list)


def load_runs(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    return collect(paths, curves=False).runs


def load_curves(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    return collect(paths).curves


@dataclass
class _JobRecord:
    signature: tuple
    rows: list
    curve_rows: list | None  # None when read without curves
    problems: list
    axes: list
    cacheable: bool


def collect(paths: str | Path | Iterable[str | Path], curves: bool = True, cache: bool = False) -> Collection:
    """Read experiment folders. `curves=False` skips the per-epoch files (tables need only final
    results). `cache=True` keeps what was read in <experiment>/summary/.cache.pkl and rereads only
    jobs whose files changed since (by size and modification time)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows, curve_rows, problems, axes = [], [], [], []
    for path in paths:
        tree = ExperimentTree(Path(path))
        if not tree.jobs_dir.is_dir():
            problems.append(f"{tree.path}: no jobs/ folder (nothing launched here yet)")
            continue
        cache_file = tree.summary.cache
        cached = _load_cache(cache_file) if cache else {}
        fresh = {}
        changed = False
        for job in tree.jobs():
            record = cached.get(job.key)
            if (record is None or record.signature != _signature(job, record) or (curves and record.curve_rows is None)
                    or any(configurations.COLUMN not in row for row in record.rows)):  # cached before the column existed
                record = _read_job(tree, job, curves)
                changed = True
            if record.cacheable:
                fresh[job.key] = record
            rows += record.rows
            curve_rows += record.curve_rows or []
            problems += record.problems
            axes += [a for a in record.axes if a not in axes]
        if cache and (changed or len(fresh) != len(cached)):
            _save_cache(cache_file, fresh)
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    return Collection(pd.DataFrame(rows), pd.DataFrame(curve_rows), problems, axes)


def _signature(job: JobTree, record: _JobRecord | None) -> tuple:
    """Sizes and modification times of every file a job's rows come from (plain os.stat on strings:
    this runs for every job of a large tree on every aggregation)."""
    files = [str(job.config_file), str(job.status_file)]
    for row in record.rows if record is not None else []:
        variant = job.variant(row["variant"])
        files += [str(variant.results_file), str(variant.metrics_file)]
    signature = []
    for file in files:
        try:
            info = os.stat(file)
            signature.append((info.st_mtime_ns, info.st_size))
        except OSError:
            signature.append(None)
    return tuple(signature)


def _load_cache(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception:  # absent, from another version, or damaged: read everything again
        return {}


def _save_cache(path: Path, records: dict) -> None:
    try:
        atomic_write(path, lambda f: pickle.dump(records, f, protocol=pickle.HIGHEST_PROTOCOL), mode="wb")
    except OSError:
        pass  # a read-only tree still aggregates, only without a cache


def _read_job(tree: ExperimentTree, job: JobTree, with_curves: bool) -> _JobRecord:
    rows, curve_rows, problems, axes = [], [] if with_curves else None, [], []
    state = _collect_job(tree, job, rows, curve_rows, problems, axes)
    record = _JobRecord((), rows, curve_rows, problems, axes, cacheable=state in (JobState.DONE, JobState.FAILED) and not problems)
    record.signature = _signature(job, record)
    return record


def _collect_job(tree: ExperimentTree, job: JobTree, rows: list, curve_rows: list | None, problems: list,
                 axes: list) -> str | None:
    try:
        spec = read_job_spec(job)
    except DamagedRecord as error:
        problems.append(f"{error.path}: {error.problem}; job skipped")
        return None
    for axis in spec.grid_values:
        if axis not in axes:
            axes.append(axis)
    view = view_job(job, spec.variant_names)
    problems += [f"{job.path}/{problem}" for problem in view.problems]
    status = view.status or JobStatus(job.key)
    base = {"experiment": spec.experiment or tree.path.name, "job": job.key, "job_state": str(view.disk),
            "seed": spec.seed, configurations.COLUMN: configurations.configuration_id(spec),
            **spec.grid_values, **configurations.flatten(spec.data, "data."), **configurations.flatten(spec.train, "train."),
            "host": status.host, "attempts": status.attempts}
    for variant in spec.variants:
        name = variant["name"]
        shown = view.variants[name]
        row = {**base, "variant": name, "model": variant["model"], "path": str(job.variant(name).path),
               **{f"params.{k}": v for k, v in variant.items() if k not in ("name", "model")},
               # the dense variants of this job built to this MoE variant's active / total size (baseline.match)
               **{f"matched_{kind}": dense for kind, dense in spec.matched.get(name, {}).items()},
               **(shown.results.scalars() if shown.results else {}),
               "state": str(shown.state), "error": shown.error}
        out = job.variant(name)
        rows.append(row)
        if curve_rows is not None and out.metrics_file.is_file():
            bad: list[int] = []
            for line in read_jsonl(out.metrics_file, on_bad_line=lambda number, _: bad.append(number)):
                curve_rows.append({"experiment": base["experiment"], "job": job.key, "variant": name,
                                   "seed": spec.seed, **spec.grid_values,
                                   **{k: v for k, v in line.items() if not isinstance(v, list)}})
            if bad:
                problems.append(f"{out.metrics_file}: skipped unreadable line(s) {bad}")
    return view.disk
