"""What the dashboard shows, as plain JSON-ready dicts: experiments, their jobs' states (from the disk,
merged with the queues for submitted jobs), learning curves, errors, and the report's files.

Everything here reads files that training may be writing at the same moment; what cannot be read is
listed in the answer's `problems`, and the rest of the answer stands.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from moelab.data import get_dataset_spec
from moelab.launch.backends import BACKENDS, backend_class
from moelab.launch.base import QueueView
from moelab.results.errors import DamagedRecord
from moelab.results.states import VariantView, view_job
from moelab.results.status import FAILURES, JobState
from moelab.results.tree import ExperimentTree, JobTree
from moelab.results.records import JobSpec, last_launch
from moelab.serve.catalog import Catalog, inside
from moelab.train.tasks import TASKS

QUEUE_TTL_S = 10.0  # ask a cluster queue at most this often per experiment (sacct is not free)
CURVE_POINTS = 200  # a curve longer than this is thinned for the page (the last epoch is kept)
TRACEBACK_CHARS = 4000  # the end of a traceback is where its error is


@dataclass
class Queues:
    """The queues' merged view of one experiment, and why a queue could not be asked."""

    view: QueueView = field(default_factory=QueueView)
    problems: list[str] = field(default_factory=list)
    details: dict[str, list[str]] = field(default_factory=dict)  # failed job key -> where its logs are


class Dashboard:
    def __init__(self, catalog: Catalog, ask_queues: bool = True):
        self.catalog = catalog
        self.ask_queues = ask_queues
        self._queues: dict[str, tuple[float, Queues]] = {}
        self._queue_lock = threading.Lock()

    def experiments(self) -> dict:
        return {"experiments": [self.experiment_summary(tree) for tree in self.catalog.trees().values()]}

    def experiment_summary(self, tree: ExperimentTree) -> dict:
        jobs = self.job_views(tree, curves=False)
        states = Counter(job["state"] for job in jobs)
        variants: list[str] = []
        datasets: list[str] = []
        for job in jobs:
            variants += [v["name"] for v in job["variants"] if v["name"] not in variants]
            if job.get("dataset") and job["dataset"] not in datasets:
                datasets.append(job["dataset"])
        problems = [f"job {job['key']}: {p}" for job in jobs for p in job["problems"]]
        return {
            "name": tree.name, "jobs": len(jobs), "states": dict(sorted(states.items())),
            "shown_states": {state: JobState(state).shown for state in states},
            "running": states.get(str(JobState.RUNNING), 0),
            "failed": sum(n for s, n in states.items() if s in FAILURES),
            "runs_done": sum(job["variants_done"] for job in jobs),
            "runs_total": sum(job["variants_total"] for job in jobs),
            "variants": variants, "datasets": datasets, "last_launch": self._last_launch(tree),
            **self.report_files(tree), "queue_problems": self._queues_of(tree).problems, "problems": problems,
        }

    def jobs(self, name: str, curves: bool = True) -> dict:
        tree = self.catalog.experiment(name)
        return {"experiment": tree.name, "jobs": self.job_views(tree, curves),
                "queue_problems": self._queues_of(tree).problems}

    def job_views(self, tree: ExperimentTree, curves: bool) -> list[dict]:
        queues = self._queues_of(tree)
        return [self.job_view(job, queues, curves) for job in self.catalog.jobs(tree)]

    def job_view(self, job: JobTree, queues: Queues, curves: bool) -> dict:
        reads = self.catalog.reads
        problems: list[str] = []
        try:
            spec: JobSpec | None = reads.job_spec(job)
        except DamagedRecord as error:
            spec = None
            problems.append(f"{error.path.name}: {error.problem}")
        queued = queues.view.states.get(job.key)
        current = view_job(job, spec.variant_names if spec else [], queued, read=reads.json)
        problems += current.problems
        state, disk, status = current.state, current.disk, current.status
        view = {
            "key": job.key, "grid_values": spec.grid_values if spec else {}, "seed": spec.seed if spec else None,
            "dataset": spec.data.get("name") if spec else None,
            "state": str(state), "shown": state.shown, "disk_state": str(disk),
            "queue_state": str(queued) if queued else None, "queue_note": queues.view.notes.get(job.key),
            "attempts": status.attempts if status else 0, "restarts": status.restarts if status else 0,
            "node": (status.host if status else None) or queues.view.nodes.get(job.key),
            "elapsed_s": (status.elapsed_s if status else None) or queues.view.elapsed_s.get(job.key),
            "started_at": status.started_at if status else None, "finished_at": status.finished_at if status else None,
            "error": None, "traceback": None, "details": [],
        }
        if state in FAILURES:
            view["error"] = (status.first_error() if status else None) or queues.view.notes.get(job.key) \
                or "no error recorded"
            view["details"] = queues.details.get(job.key, [])
        if status and status.traceback:
            view["traceback"] = status.traceback[-TRACEBACK_CHARS:]
        metric = _primary_metric(spec)
        variants = [self._variant_view(job, variant, current.variants[variant["name"]], metric, curves, problems)
                    for variant in (spec.variants if spec else [])]
        view.update(variants=variants, variants_done=sum(v["done"] for v in variants), variants_total=len(variants),
                    metric=metric, problems=problems)
        return view

    def _variant_view(self, job: JobTree, variant: dict, shown: VariantView, metric: str | None, curves: bool,
                      problems: list[str]) -> dict:
        name = variant["name"]
        out = job.variant(name)
        results = shown.results.values if shown.results else {}
        view = {"name": name, "model": variant["model"], "state": str(shown.state), "shown": shown.state.shown,
                "done": shown.state is JobState.DONE, "error": shown.error,
                "traceback": shown.traceback[-TRACEBACK_CHARS:] if shown.traceback else None,
                "epochs": 0, "best_val": _number(results.get(f"best_val_{metric}")),
                "test": _number(results.get(f"test_{metric}")), "best_epoch": results.get("best_epoch"), "last": None}
        rows = self._metrics(out, name, problems)
        if rows:
            last = rows[-1]
            view["epochs"] = len(rows)
            view["last"] = {k: _number(v) for k, v in last.items() if isinstance(v, (int, float))}
            if view["best_val"] is None and metric:
                values = [v for v in (_number(r.get(f"val_{metric}")) for r in rows) if v is not None]
                view["best_val"] = max(values) if values else None
            if curves:
                view["curve"] = _curve(rows, metric)
        return view

    def _metrics(self, out, name: str, problems: list[str]) -> list[dict]:
        try:
            rows, bad = self.catalog.reads.jsonl(out.metrics_file)
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as error:
            problems.append(f"{name}/metrics.jsonl is unreadable ({type(error).__name__})")
            return []
        if bad:
            problems.append(f"{name}/metrics.jsonl: skipped unreadable line(s) {bad}")
        return rows

    def report_files(self, tree: ExperimentTree) -> dict:
        """Addresses of the report and of the tables and plots create-plots wrote."""
        base = f"/files/{tree.name}"
        summary = tree.summary
        tables = [f for f in (summary.summary_csv, summary.runs_csv, summary.markdown, summary.latex) if f.is_file()]
        plots = sorted(summary.path.glob("*.png")) if summary.path.is_dir() else []
        report = _versioned(f"{base}/report/index.html", tree.report_file)
        def listed(files):
            # only what /files would serve (a link out of the experiment is not); a file replaced between
            # the listing and its stat is left for the next refresh
            entries = [{"name": f.name, "url": _versioned(f"{base}/summary/{f.name}", f)} for f in files
                       if inside(f, tree.path)]
            return [e for e in entries if e["url"]]

        return {"report": report if inside(tree.report_file, tree.path) else None, "tables": listed(tables),
                "plots": listed(plots)}

    def summary_table(self, name: str) -> dict:
        """summary.csv (per variant and grid point, seeds pooled) as columns and rows."""
        import pandas as pd

        tree = self.catalog.experiment(name)
        try:
            path = self.catalog.summary_file(tree, tree.summary.summary_csv.name)
        except Exception:
            return {"experiment": tree.name, "columns": [], "rows": [],
                    "problem": f"no summary table yet: run python run/create-plots.py on {tree.name}"}
        try:
            table = pd.read_csv(path)
        except Exception as error:  # pandas raises many kinds for a damaged CSV
            return {"experiment": tree.name, "columns": [], "rows": [],
                    "problem": f"summary.csv is unreadable ({type(error).__name__})"}
        rows = [[_cell(v) for v in row] for row in table.itertuples(index=False)]
        return {"experiment": tree.name, "columns": [str(c) for c in table.columns], "rows": rows, "problem": None}

    def _last_launch(self, tree: ExperimentTree) -> dict | None:
        try:
            last = last_launch(tree)
        except (OSError, UnicodeDecodeError, DamagedRecord):
            return None
        if last is None:
            return None
        return {"time": last.time, "mode": last.mode, "host": last.host, "git_commit": last.git_commit,
                "git_dirty": last.git_dirty}

    def _queues_of(self, tree: ExperimentTree) -> Queues:
        if not self.ask_queues:
            return Queues()
        key = str(tree.path)
        with self._queue_lock:
            cached = self._queues.get(key)
            if cached and time.monotonic() - cached[0] < QUEUE_TTL_S:
                return cached[1]
        queues = Queues()
        for mode in BACKENDS:
            try:
                backend = backend_class(mode)
                part = backend.queue_view(tree)
            except Exception as error:  # a backend's tools missing or failing: the disk still tells most
                queues.problems.append(f"the {mode} queue could not be asked ({type(error).__name__}: {error})")
                continue
            for name in ("states", "notes", "nodes", "elapsed_s"):
                getattr(queues.view, name).update(getattr(part, name))
            if part.problem:
                queues.problems.append(f"the {mode} queue could not be asked ({part.problem}); states are from the disk")
            for key_, queue_state in part.states.items():
                if queue_state in FAILURES:
                    try:
                        queues.details[key_] = backend.failure_details(tree, key_)
                    except Exception:
                        pass  # where the logs are is a hint, not worth failing a page over
        with self._queue_lock:
            self._queues[key] = (time.monotonic(), queues)
        return queues


def _versioned(url: str, path) -> str | None:
    """The address with the file's modification time: a rewritten plot gets a new address, so the page
    redraws it and a browser never shows a stale copy. None when the file is absent."""
    try:
        return f"{url}?v={path.stat().st_mtime_ns}"
    except OSError:
        return None


def _primary_metric(spec: JobSpec | None) -> str | None:
    try:
        return TASKS[get_dataset_spec(spec.data["name"]).task].primary
    except (AttributeError, KeyError, TypeError):
        return None


def _curve(rows: list[dict], metric: str | None) -> dict:
    if len(rows) > CURVE_POINTS:
        step = len(rows) / CURVE_POINTS
        picked = [rows[int(i * step)] for i in range(CURVE_POINTS - 1)] + [rows[-1]]
    else:
        picked = rows
    val = f"val_{metric}" if metric else None
    return {"metric": metric, "epoch": [_number(r.get("epoch")) for r in picked],
            "train_loss": [_number(r.get("train_loss")) for r in picked],
            "val_loss": [_number(r.get("val_loss")) for r in picked],
            "val_metric": [_number(r.get(val)) for r in picked] if val else []}


def _number(value) -> float | int | None:
    """A finite number or None: NaN and infinities (a diverged loss) are not JSON."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _cell(value):
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value
