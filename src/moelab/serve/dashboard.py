"""What the dashboard shows, as plain JSON-ready dicts: experiments, their jobs' states (from the disk,
merged with the queues for submitted jobs), learning curves, errors, and the report's files.

Everything here reads files that training may be writing at the same moment; what cannot be read is
listed in the answer's `problems`, and the rest of the answer stands.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from moelab.data import get_dataset_spec
from moelab.launch.backends import BACKENDS, backend_class
from moelab.launch.base import QueueView
from moelab.results.claims import is_claimed
from moelab.results.errors import DamagedRecord
from moelab.results.io import file_signature
from moelab.results.states import VariantView, view_job
from moelab.results.status import FAILURES, JobState
from moelab.results.tree import ExperimentTree, JobTree, job_files_signature
from moelab.results.records import JobSpec, last_launch, read_report_headline
from moelab.serve.catalog import Catalog, inside
from moelab.serve.errors import BadInput, NotFound
from moelab.train.tasks import TASKS

QUEUE_TTL_S = 10.0  # ask a cluster queue at most this often per experiment (sacct is not free)
CURVE_POINTS = 200  # a curve longer than this is thinned for the page (the last epoch is kept)
TRACEBACK_CHARS = 4000  # the end of a traceback is where its error is
PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
VERSIONS_KEPT = 32  # versions of one experiment's rows remembered for `since` (a client further behind gets all)
ROWS_TTL_S = 2.0  # one pass over a large tree's jobs answers every request of the next seconds (list, filters, pages)
ETA_EPOCHS = 5  # the ETA extrapolates the mean of the last few epochs' seconds
# router-health measures, shown as columns whatever of them a run's metrics hold (any prefix: train_, val_)
ROUTER_HEALTH = ("load_cv", "max_vio", "dead_expert_fraction", "effective_experts")
SORTS = ("key", "state", "elapsed_s", "seed", "progress")


@dataclass
class Queues:
    """The queues' merged view of one experiment, and why a queue could not be asked."""

    view: QueueView = field(default_factory=QueueView)
    problems: list[str] = field(default_factory=list)
    details: dict[str, list[str]] = field(default_factory=dict)  # failed job key -> where its logs are


class Dashboard:
    def __init__(self, catalog: Catalog, ask_queues: bool = True, rows_ttl_s: float = ROWS_TTL_S):
        self.catalog = catalog
        self.rows_ttl_s = rows_ttl_s
        self._rows: dict[str, tuple[float, tuple]] = {}  # experiment -> (when read, job_rows' answer)
        self.ask_queues = ask_queues
        self._queues: dict[str, tuple[float, Queues]] = {}
        self._queue_lock = threading.Lock()
        self._versions: dict[str, OrderedDict[str, dict[str, str]]] = {}  # experiment -> version -> key -> row hash
        # experiment -> key -> (job, signature, row, hash)
        self._job_rows: dict[str, dict[str, tuple[JobTree, tuple | None, dict, str]]] = {}
        self._pass_locks: dict[str, threading.Lock] = {}

    def experiments(self) -> dict:
        return {"experiments": [self.experiment_summary(tree) for tree in self.catalog.trees().values()]}

    def experiment_summary(self, tree: ExperimentTree) -> dict:
        jobs = list(self.job_rows(tree)[1].values())  # the pass the jobs' pages share
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
            "progress": _share(sum(job["variants_done"] for job in jobs), sum(job["variants_total"] for job in jobs)),
            "headline": read_report_headline(tree), "search": tree.study.journal.is_file(),
            **self.report_files(tree), "queue_problems": self._queues_of(tree).problems, "problems": problems,
        }

    # -- the pages' API: compact rows, filtered, sorted and paged on the server, sent only when changed --

    def job_rows(self, tree: ExperimentTree) -> tuple[str, dict[str, dict], dict[str, str]]:
        """(version, key -> compact row, key -> row hash) of every job; the version names this state of
        the rows, and the rows of versions asked for recently are remembered for `since`. One pass at a
        time per experiment: a request arriving during a pass waits for it and shares its answer."""
        with self._queue_lock:
            lock = self._pass_locks.setdefault(tree.name, threading.Lock())
        with lock:
            cached = self._rows.get(tree.name)
            if cached and time.monotonic() - cached[0] < self.rows_ttl_s:
                return cached[1]
            answer = self._read_rows(tree)
            self._rows[tree.name] = (time.monotonic(), answer)
        return answer

    def _read_rows(self, tree: ExperimentTree) -> tuple[str, dict[str, dict], dict[str, str]]:
        """Every job's row, reread only for a job whose files, claim or queue entry changed since its
        row was made (a pass over a finished tree is stats only)."""
        queues = self._queues_of(tree)
        before = self._job_rows.get(tree.name, {})
        kept: dict[str, tuple[JobTree, tuple, dict, str]] = {}
        pids: dict[int, bool] = {}  # whether the claims' processes live, asked once per pass
        for key in self.catalog.job_keys(tree):
            known = before.get(key)
            job = known[0] if known else tree.job(key)
            names = [v["name"] for v in known[2]["variants"]] if known else self._variant_names(job)
            # taken before reading: a file changed during the read changes the next pass's signature
            files = job_files_signature(job, names)
            signature = (files, files[-1] and is_claimed(job, pids), _queue_entry(queues, key))
            if known is None or known[1] != signature:
                row = self._row(job, queues)
                if [v["name"] for v in row["variants"]] != names:
                    signature = None  # config.json named other variants than were stat'ed: read again next pass
                known = (job, signature, row, _digest(row))
            kept[key] = known
        self._job_rows[tree.name] = kept
        rows = {key: row for key, (_, _, row, _) in kept.items()}
        hashes = {key: digest for key, (_, _, _, digest) in kept.items()}
        version = _digest(sorted(hashes.items()))[:16]
        with self._queue_lock:
            history = self._versions.setdefault(tree.name, OrderedDict())
            history[version] = hashes
            history.move_to_end(version)
            while len(history) > VERSIONS_KEPT:
                history.popitem(last=False)
        return version, rows, hashes

    def _variant_names(self, job: JobTree) -> list[str]:
        try:
            return self.catalog.reads.job_spec(job).variant_names
        except DamagedRecord:
            return []

    def _row(self, job: JobTree, queues: Queues) -> dict:
        view = self.job_view(job, queues, curves=False)
        return {
            "key": view["key"], "state": view["state"], "shown": view["shown"], "grid_values": view["grid_values"],
            "seed": view["seed"], "dataset": view["dataset"], "processes": view["processes"], "node": view["node"],
            "elapsed_s": view["elapsed_s"], "error": view["error"], "variants_done": view["variants_done"], "variants_total": view["variants_total"],
            "variants": [{"name": v["name"], "state": v["state"], "epochs": v["epochs"], "best_val": v["best_val"],
                          **_router_health(v["last"])} for v in view["variants"]],
            "problems": view["problems"]}

    def job_page(self, name: str, states: list[str] = (), variant: str | None = None, grid: dict | None = None,
                 sort: str = "key", descending: bool = False, offset: int = 0, limit: int = PAGE_SIZE,
                 since: str | None = None) -> dict:
        """One page of an experiment's jobs: those in `states`, having `variant`, at the `grid` values;
        running jobs first, then by `sort`. With `since` (a version this answered before) only the rows
        that changed since are sent; `keys` always lists the page in order."""
        if sort not in SORTS and not sort.startswith("grid."):
            raise BadInput(f"sort must be one of {', '.join(SORTS)} or grid.<axis>; got {sort!r}")
        if not 0 < limit <= MAX_PAGE_SIZE or offset < 0:
            raise BadInput(f"limit must be 1 to {MAX_PAGE_SIZE} and offset 0 or more")
        tree = self.catalog.experiment(name)
        with self._queue_lock:
            before = self._versions.get(tree.name, {}).get(since) if since else None
        version, rows, hashes = self.job_rows(tree)
        grid = grid or {}
        matched = [row for row in rows.values()
                   if (not states or row["state"] in states)
                   and (variant is None or any(v["name"] == variant for v in row["variants"]))
                   and all(str(row["grid_values"].get(axis)) == value for axis, value in grid.items())]
        matched.sort(key=lambda row: _sort_key(row, sort), reverse=descending)
        matched.sort(key=lambda row: row["state"] != str(JobState.RUNNING))  # stable: running first
        page = matched[offset:offset + limit]
        changed = [row for row in page if before is None or before.get(row["key"]) != hashes[row["key"]]]
        counts = Counter(row["state"] for row in rows.values())
        axes: dict[str, list] = {}
        for row in rows.values():
            for axis, value in row["grid_values"].items():
                if value not in axes.setdefault(axis, []):
                    axes[axis].append(value)
        return {"experiment": tree.name, "version": version, "since": since if before is not None else None,
                "total": len(rows), "matched": len(matched), "offset": offset, "limit": limit,
                "states": dict(sorted(counts.items())), "grid_axes": axes,
                "keys": [row["key"] for row in page], "rows": changed,
                "queue_problems": self._queues_of(tree).problems}

    def job_detail(self, name: str, key: str) -> dict:
        """One job: each variant's epoch n of N, elapsed seconds, an ETA from its epochs' seconds, every
        numeric column of its metrics as curves, and its router-health values."""
        tree = self.catalog.experiment(name)
        job = self.catalog.job(tree, key)
        view = self.job_view(job, self._queues_of(tree), curves=False)
        try:
            epochs_total = int(self.catalog.reads.job_spec(job).train.get("epochs"))
        except (DamagedRecord, TypeError, ValueError):
            epochs_total = None
        for variant in view["variants"]:
            rows = self._metrics(job.variant(variant["name"]), variant["name"], [])
            seconds = [s for s in (_number(r.get("seconds")) for r in rows) if s is not None]
            recent = seconds[-ETA_EPOCHS:]
            left = max(epochs_total - len(rows), 0) if epochs_total else None
            variant.update(epochs_total=epochs_total, elapsed_s=sum(seconds) if seconds else None,
                           eta_s=(sum(recent) / len(recent) * left) if recent and left is not None
                           and variant["state"] == str(JobState.RUNNING) else None,
                           curves=_all_curves(rows), **_router_health(variant["last"]))
        return {"experiment": tree.name, **view}

    def run_table(self, name: str) -> dict:
        """One row per job x variant: grid values, state, epochs, best validation, test, router health."""
        tree = self.catalog.experiment(name)
        version, rows, _ = self.job_rows(tree)
        table = [{"job": row["key"], "seed": row["seed"], **{f"grid.{a}": v for a, v in row["grid_values"].items()},
                  "variant": v["name"], "state": v["state"], "epochs": v["epochs"], "best_val": v["best_val"],
                  **{k: x for k, x in v.items() if k in ROUTER_HEALTH}}
                 for row in rows.values() for v in row["variants"]]
        columns: list[str] = []
        for entry in table:
            columns += [c for c in entry if c not in columns]
        return {"experiment": tree.name, "version": version, "columns": columns,
                "rows": [[entry.get(c) for c in columns] for entry in table]}

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
            # one job trained by several processes (train.distributed) shows as one job with its count
            "processes": spec.train.get("distributed", {}).get("processes", 1) if spec else 1,
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

    def study_version(self, name: str) -> str:
        """Names the state of the files study_views reads (taken before reading them)."""
        files = self.catalog.experiment(name).study
        return _digest([file_signature(files.trials_csv), file_signature(files.summary)])[:16]

    def study_views(self, name: str) -> dict:
        """A search's history (each ended trial's objective, the best so far), its parameter importances
        and its trials as parallel coordinates, from the files the search writes when a trial ends
        (read as the report reads them: report/study.py)."""
        from moelab.report.study import read_study

        tree = self.catalog.experiment(name)
        if not tree.study.journal.is_file():
            raise NotFound(f"experiment {tree.name} is not a search (no study in {tree.study.path.name}/)")
        study = read_study(tree)
        if study is None:
            return {"experiment": tree.name, "problem": "no trial has ended yet (the study's table is written when "
                    "one ends)", "history": None, "importances": None, "parallel": None}
        summary, objective = study.summary, study.objective
        trials = study.trials
        ended = trials[trials["state"].isin(["complete", "pruned"])].dropna(subset=["value"])
        complete, pruned = ended[ended["state"] == "complete"], ended[ended["state"] == "pruned"]
        best = complete["value"].cummax() if objective["direction"] == "maximize" else complete["value"].cummin()
        label = f"{objective['metric']} of {objective['variant']}"
        dimensions = []
        for key in study.keys:
            dimensions.append({"label": key, **_axis(complete[key].tolist(), summary["space"][key])})
        dimensions.append({"label": label, "values": [_number(v) for v in complete["value"]]})
        return {
            "experiment": tree.name, "problem": None, "objective": {**objective, "label": label},
            "sampler": summary.get("sampler"), "pruner": summary.get("pruner"), "counts": summary.get("counts", {}),
            "best": summary.get("best"),
            "history": {"complete": {"trial": complete["number"].tolist(), "value": complete["value"].tolist()},
                        "pruned": {"trial": pruned["number"].tolist(), "value": pruned["value"].tolist()},
                        "best_so_far": {"trial": complete["number"].tolist(), "value": best.tolist()}},
            "importances": summary.get("importances"),
            "importances_note": summary.get("importances_note"),
            "parallel": {"trials": complete["number"].tolist(), "dimensions": dimensions} if len(complete) else None,
        }

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


def _digest(value) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _queue_entry(queues: Queues, key: str) -> tuple:
    """What the queues say of one job: a row made before they said otherwise is made again."""
    view = queues.view
    return (view.states.get(key), view.notes.get(key), view.nodes.get(key), view.elapsed_s.get(key),
            tuple(queues.details.get(key, ())))


def _axis(values: list, entry: dict) -> dict:
    """A searched parameter as a parallel-coordinates axis (Plotly's values, range, tickvals, ticktext)
    spanning its whole range: a choice at its index labelled with its values, a log-scaled range as
    log10 labelled with rounded values, any other range as it is."""
    if "choice" in entry:
        labels = [str(v) for v in entry["choice"]]
        index = {label: i for i, label in enumerate(labels)}
        return {"values": [index.get(str(v)) for v in values], "range": [0, max(len(labels) - 1, 1)],
                "tickvals": list(range(len(labels))), "ticktext": labels}
    low, high = (entry.get("loguniform") or entry.get("uniform") or entry["int"])[:2]
    if "loguniform" in entry or entry.get("log"):
        ticks = [low * (high / low) ** (i / 4) for i in range(5)]
        return {"values": [math.log10(v) if _number(v) and v > 0 else None for v in values],
                "range": [math.log10(low), math.log10(high)], "tickvals": [math.log10(t) for t in ticks],
                "ticktext": [str(round(t)) if "int" in entry else f"{t:.3g}" for t in ticks]}
    return {"values": [_number(v) for v in values], "range": [low, high]}


def _share(done: int, total: int) -> float | None:
    return done / total if total else None


def _sort_key(row: dict, sort: str) -> tuple:
    if sort == "progress":
        value = _share(row["variants_done"], row["variants_total"])
    elif sort.startswith("grid."):
        value = row["grid_values"].get(sort[5:])
    else:
        value = row.get(sort)
    # absent values last; numbers and words never compared with each other
    return (value is None, isinstance(value, str), value if value is not None else 0)


def _router_health(last: dict | None) -> dict:
    """The last epoch's router-health values, keyed by their measure (train_load_cv -> load_cv)."""
    found = {}
    for column, value in (last or {}).items():
        for measure in ROUTER_HEALTH:
            if column == measure or column.endswith("_" + measure):
                found.setdefault(measure, value)
    return found


def _all_curves(rows: list[dict]) -> dict:
    """Every numeric column of the metrics, thinned to CURVE_POINTS like `_curve`."""
    if len(rows) > CURVE_POINTS:
        step = len(rows) / CURVE_POINTS
        rows = [rows[int(i * step)] for i in range(CURVE_POINTS - 1)] + [rows[-1]]
    columns: list[str] = []
    for row in rows:
        columns += [c for c, v in row.items() if c not in columns and isinstance(v, (int, float))
                    and not isinstance(v, bool)]
    return {column: [_number(r.get(column)) for r in rows] for column in columns}


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
