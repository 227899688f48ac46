"""Run one job: load its data once, train each of its variants, record states in status.json.

Every way of executing calls `run_job(job_dir)`: local workers, SLURM tasks, `run/train_models.py`.
Variants that train the same network (a soft MoE and the same MoE inferred hard, equal dense
baselines) train it once; each keeps its own folder, states and results.
A variant that raises is recorded as failed with its traceback and the job goes on with the next
variant; a variant whose results.json exists is skipped, so a rerun only does what is missing.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import time
import traceback
import weakref
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from moelab.data import DataSettings, load_dataset
from moelab.data.task_data import TaskData
from moelab.models import get_model_spec, model_params
from moelab.models.fused import fusion_problem
from moelab.report.figures import variant_curves
from moelab.results.claims import Claim, try_claim
from moelab.results.events import variant_events
from moelab.results.io import read_json
from moelab.results.status import JobState, JobStatus, VariantStatus, host, now, read_status
from moelab.results.tree import JobTree, VariantTree, set_aside
from moelab.train.distributed import train_members_distributed
from moelab.train.fused import FusedShare, settings_refusal, train_fused
from moelab.train.settings import TrainSettings
from moelab.train.tasks import TASKS
from moelab.train.trainer import Member, StopRequested, provenance, resolve_device, start_epoch, train_members

# a plot takes about 0.1 s; when epochs take milliseconds nobody watches them and redrawing would
# cost more than training, so the live curves of a process are redrawn at most about this often (each
# variant's every LIVE_PLOT_MIN_SECONDS x the variants training in the process: 32 in a fused group)
LIVE_PLOT_MIN_SECONDS = 5.0


@dataclass
class JobOutcome:
    key: str
    state: JobState  # RUNNING: another process holds the job, this call did not run it
    seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)  # variant (or "job") -> last error line
    results: dict[str, dict] = field(default_factory=dict)  # variant -> results.json content
    status_file: str = ""



class Pruned(Exception):
    """Raised after an epoch when the caller's `should_prune` says so (a search gave up on the
    job's trial); the epoch's checkpoint is on disk, so a later trial of the same point resumes it."""


def run_job(job_dir: str | Path, fresh: bool = False, stop_requested: Callable[[], bool] = lambda: False,
            runtime_info: dict | None = None, claim: Claim | None = None,
            should_prune: Callable[[str, list[dict]], bool] | None = None) -> JobOutcome:
    """Train every unfinished variant of the job in `job_dir`. `fresh` discards earlier outputs first.

    The job must be claimed: by the caller (a worker that pulled it, `claim`), else here. A job
    whose claim a live process holds is not run (RUNNING). Training stops at the end of an epoch
    when `stop_requested()` says so or when the claim is lost to a worker that took the job over.
    `should_prune(variant, history)` is asked after every epoch: True stops the job there, PRUNED."""
    job = JobTree(Path(job_dir))
    own_claim = claim is None
    if own_claim:
        claim = try_claim(job)
        if claim is None:
            return JobOutcome(job.key, JobState.RUNNING, errors={"job": "another process is running this job"})
    try:
        return _run_claimed(job, fresh, lambda: stop_requested() or claim.lost, runtime_info or {}, should_prune)
    finally:
        if own_claim:
            claim.release()


class JobRun:
    """A claimed job's records while this process runs it: its status.json (the job's state and each
    variant's), each running variant's live curves and TensorBoard events. `run_job` trains the job's
    trainings one after another; `run_fused_jobs` trains each training of several jobs at once."""

    def __init__(self, job: JobTree, fresh: bool, runtime_info: dict):
        self.job = job
        spec = read_json(job.config_file)
        self.spec, self.config = spec, spec["config"]
        self.seed = self.config["seed"]
        self.continued = spec.get("continued_from")  # a finished job with fewer epochs, chosen by the launch
        self.settings = TrainSettings.from_dict(self.config["train"])
        self.live_plot_every = spec.get("report", {}).get("live_plot_every", 0)
        names = [v["name"] for v in self.config["variants"]]
        previous = read_status(job)
        if previous is None and (job.status_file.exists() or job.status_file.is_symlink()):
            _warn_set_aside(job.status_file, "cannot be read", "the job's attempts count again from 1")
        if fresh:
            for name in names:
                shutil.rmtree(job.variant(name).path, ignore_errors=True)
            job.status_file.unlink(missing_ok=True)
            previous = None
        previous = previous or JobStatus(job.key)
        self.status = JobStatus(job.key, JobState.RUNNING, attempts=previous.attempts + 1, host=host(), pid=os.getpid(),
                                started_at=now(), slurm=runtime_info.get("slurm"), launch_id=runtime_info.get("launch_id"),
                                variants={n: previous.variants.get(n, VariantStatus()) for n in names})
        self.started = time.perf_counter()
        self.outcome = JobOutcome(job.key, JobState.RUNNING, status_file=str(job.status_file))
        self.data: TaskData | None = None
        self.started_at: dict[str, float] = {}
        self.curves: dict[str, LiveCurves] = {}
        self.events: dict = {}
        self.status.write(job)

    def open_device(self) -> torch.device:
        device = resolve_device(self.settings.device)
        self.status.device = str(device)
        if device.type == "cuda":
            self.status.gpu = torch.cuda.get_device_name(device)
        return device

    def left(self) -> list[dict]:
        """The variants still to train; finished ones are recorded as done."""
        left = []
        for variant in self.config["variants"]:
            name = variant["name"]
            out = self.job.variant(name)
            if out.results_file.exists():  # finished, unless the file is damaged
                results = _read_results(out)
                if results is not None:
                    self.outcome.results[name] = results
                    self.status.variants[name].state = JobState.DONE
                    continue
            left.append(variant)
        return left

    @property
    def train(self) -> Callable:
        """trainer.train_members, or the same by several processes (train.distributed, train/distributed.py)."""
        if self.settings.distributed.processes == 1:
            return train_members
        return partial(train_members_distributed, self.job.path)

    def load_data(self, device: torch.device) -> TaskData:
        """Loaded once per job, only when something is left to train."""
        if self.data is None:
            self.data = load_dataset(DataSettings(**self.config["data"]), self.seed).to(device)
        return self.data

    def members(self, group: list[dict], should_prune=None) -> list[Member]:
        """The variants of a training, marked running, each with its live curves and event file."""
        members = []
        for variant in group:
            name = variant["name"]
            out = self.job.variant(name)
            self.status.variants[name] = VariantStatus(JobState.RUNNING, started_at=now(),
                                                       provenance=provenance(variant, self.continued) or None,
                                                       trained_with=group[0]["name"] if len(group) > 1 else None)
            self.started_at[name] = time.perf_counter()
            self.curves[name] = LiveCurves(self.live_plot_every, TASKS[self.data.task].primary, out)
            self.events[name] = variant_events(out, self.spec)  # TensorBoard; None when off
            on_epoch = _each(self.curves[name], self.events[name])
            on_epoch = on_epoch if should_prune is None else _pruning(on_epoch, name, should_prune)
            members.append(Member(variant, out, on_epoch))
        self.status.write(self.job)
        return members

    def finished(self, member: Member, results: dict | None, error: Exception | None) -> None:
        """A member's training ended: done with its results, or failed (the job goes on with its other variants)."""
        name = member.variant["name"]
        record = self.status.variants[name]
        if self.events[name] is not None:
            self.events[name].close(results)
        if error is None:
            self.curves[name].close()
            self.outcome.results[name], record.state = results, JobState.DONE
        else:
            record.state, record.error = JobState.FAILED, _last_line(error)
            record.traceback = "".join(traceback.format_exception(error))
            self.outcome.errors[name] = record.error
        record.finished_at, record.seconds = now(), round(time.perf_counter() - self.started_at[name], 3)
        self.status.write(self.job)

    def interrupted(self, members: list[Member]) -> None:
        for member in members:
            record = self.status.variants[member.variant["name"]]
            if record.state == JobState.RUNNING:
                record.state = JobState.INTERRUPTED
                record.seconds = round(time.perf_counter() - self.started_at[member.variant["name"]], 3)

    def pruned(self, members: list[Member], left: list[dict]) -> JobOutcome:
        """Every variant not finished yet: a pruned job trains nothing more."""
        for variant in left:
            if self.status.variants[variant["name"]].state in (JobState.RUNNING, JobState.PENDING):
                self.status.variants[variant["name"]].state = JobState.PRUNED
        for member in members:
            record = self.status.variants[member.variant["name"]]
            record.finished_at = now()
            record.seconds = round(time.perf_counter() - self.started_at[member.variant["name"]], 3)
        return self.finish(JobState.PRUNED)

    def release_events(self) -> None:
        """An interrupted or pruned variant's event file ends where its checkpoint is."""
        for writer in self.events.values():
            if writer is not None:
                writer.release()

    def failed(self, error: Exception) -> JobOutcome:
        """The job itself (data loading, device) failed."""
        self.status.error, self.status.traceback = _last_line(error), "".join(traceback.format_exception(error))
        self.outcome.errors["job"] = self.status.error
        return self.finish(JobState.FAILED)

    def finish(self, state: JobState | None = None) -> JobOutcome:
        """Record the job's end: `state`, else done or failed by its variants."""
        status = self.status
        status.state = state or (JobState.FAILED if self.outcome.errors else JobState.DONE)
        status.finished_at = now()
        status.elapsed_s = round(time.perf_counter() - self.started, 3)
        status.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        status.write(self.job)
        self.outcome.state, self.outcome.seconds = status.state, status.elapsed_s
        return self.outcome


def _run_claimed(job: JobTree, fresh: bool, stop_requested, runtime_info: dict, should_prune=None) -> JobOutcome:
    run = JobRun(job, fresh, runtime_info)
    try:
        device = run.open_device()
        left = run.left()
        for group in trainings(left):
            data = run.load_data(device)
            members = run.members(group, should_prune)
            try:
                run.train(members, data, run.settings, run.seed, device, stop_requested, run.continued, run.finished)
            except (KeyboardInterrupt, StopRequested, SystemExit):
                run.interrupted(members)
                raise
            except Pruned:
                return run.pruned(members, left)
            finally:
                run.release_events()
    except (KeyboardInterrupt, StopRequested, SystemExit):  # SystemExit: submitit's exit before a requeue
        run.finish(JobState.INTERRUPTED)
        raise
    except Exception as error:
        return run.failed(error)
    return run.finish()


def run_fused_jobs(jobs: list[JobTree], fresh: list[bool], stop_requested: Callable[[], bool],
                   runtime_info: dict | None = None) -> list[JobOutcome]:
    """Run claimed jobs that differ only in their seed together: each training of theirs (variants that
    train one network) trains fused across the jobs whose share of it starts at the same epoch
    (train/fused.py), alone where it cannot be fused. Each job keeps its own records, exactly as
    `run_job` writes them; a job that fails (its data, its model) fails alone. Training stops at the
    end of an epoch when `stop_requested()` says so: every job of the group is then interrupted."""
    runs: list[JobRun] = []
    for job, discard in zip(jobs, fresh):
        runs.append(JobRun(job, discard, runtime_info or {}))
    outcomes: dict[str, JobOutcome] = {}
    active = list(runs)
    try:
        device = None
        left: dict[str, list[list[dict]]] = {}
        for run in list(active):
            try:
                device = run.open_device()
                left[run.job.key] = trainings(run.left())
                if left[run.job.key]:
                    run.load_data(device)
            except Exception as error:
                outcomes[run.job.key] = run.failed(error)
                active.remove(run)
        names = list(dict.fromkeys(tuple(v["name"] for v in g) for run in active for g in left[run.job.key]))
        for training_names in names:
            shares = []
            for run in active:
                group = next((g for g in left[run.job.key] if tuple(v["name"] for v in g) == training_names), None)
                if group is not None:
                    shares.append((run, run.members(group)))
            try:
                _train_together(shares, device, stop_requested)
            except (KeyboardInterrupt, StopRequested, SystemExit):
                for run, members in shares:
                    run.interrupted(members)
                raise
            finally:
                for run, _ in shares:
                    run.release_events()
    except (KeyboardInterrupt, StopRequested, SystemExit):
        for run in active:
            run.finish(JobState.INTERRUPTED)
        raise
    except Exception as error:  # beyond any one job's training (recorded by each): every job of the group
        for run in active:
            outcomes[run.job.key] = run.failed(error)
        return [outcomes[job.key] for job in jobs]
    for run in active:
        outcomes[run.job.key] = run.finish()
    return [outcomes[job.key] for job in jobs]


def _train_together(shares: list[tuple[JobRun, list[Member]]], device: torch.device, stop_requested) -> None:
    """One training of several jobs: fused in groups of shares that start at the same epoch, the rest alone."""
    settings = shares[0][0].settings
    lead = shares[0][1][0].variant
    problem = settings_refusal(settings) or (
        fusion_problem(lead["model"], model_params(lead)) if len(shares) > 1 else "one job")
    by_epoch: dict[int, list[tuple[JobRun, list[Member]]]] = {}
    alone = []
    for run, members in shares:
        starts = {start_epoch(m.out, run.continued, settings, device) for m in members}
        (by_epoch.setdefault(starts.pop(), []) if len(starts) == 1 and problem is None else alone).append((run, members))
    for group in by_epoch.values():
        if len(group) == 1:
            alone += group
            continue
        train_fused([FusedShare(members, run.data, run.seed, run.continued) for run, members in group], settings, device,
                    stop_requested, lambda member, results, error, owner={id(m): r for r, ms in group for m in ms}:
                    owner[id(member)].finished(member, results, error))
    if problem is not None and len(shares) > 1:
        print(f"note: {len(shares)} jobs train {lead['name']} unfused: {problem}", file=sys.stderr, flush=True)
    for run, members in alone:
        run.train(members, run.data, settings, run.seed, device, stop_requested, run.continued, run.finished)


def trainings(variants: list[dict]) -> list[list[dict]]:
    """The variants grouped by what they train (models.ModelSpec.training_identity), in the job's order:
    each group trains one network."""
    groups: dict[str, list[dict]] = {}
    for variant in variants:
        groups.setdefault(get_model_spec(variant["model"]).training_identity(variant), []).append(variant)
    return list(groups.values())


def _read_results(out: VariantTree) -> dict | None:
    """A finished variant's results.json; None when it cannot be read (then it is set aside and the
    variant trained again: from its last checkpoint, only its testing is redone)."""
    try:
        results = read_json(out.results_file)
        if isinstance(results, dict):
            return results
        problem = "holds no JSON object"
    except (OSError, ValueError) as error:
        problem = f"cannot be read ({type(error).__name__})"
    _warn_set_aside(out.results_file, problem, f"training {out.name} again")
    return None


def _warn_set_aside(path: Path, problem: str, consequence: str) -> None:
    aside = set_aside(path)
    print(f"warning: {path} {problem}; set aside as {aside.name}, {consequence}", file=sys.stderr, flush=True)


def _each(*callbacks: Callable[[list[dict]], None] | None) -> Callable[[list[dict]], None]:
    def after_epoch(history: list[dict]) -> None:
        for callback in callbacks:
            if callback is not None:
                callback(history)

    return after_epoch


def _pruning(on_epoch: Callable[[list[dict]], None], name: str, should_prune: Callable[[str, list[dict]], bool]):
    def after_epoch(history: list[dict]) -> None:
        on_epoch(history)
        if should_prune(name, history):
            raise Pruned(f"{name} pruned after epoch {history[-1]['epoch']}")

    return after_epoch


class LiveCurves:
    """The `on_epoch` callback that redraws a running variant's curves.png every `every` epochs (0:
    never), so a job on a cluster can be looked at while it trains."""

    drawing: weakref.WeakSet = weakref.WeakSet()  # this process's live curves: one budget of redraws

    def __init__(self, every: int, metric: str, out: VariantTree):
        self.every, self.metric, self.out = every, metric, out
        self.history: list[dict] = []
        self.last_drawn = time.monotonic()
        self.drew = False
        LiveCurves.drawing.add(self)

    def __call__(self, history: list[dict]) -> None:
        self.history = history
        interval = LIVE_PLOT_MIN_SECONDS * len(LiveCurves.drawing)
        if self.every and len(history) % self.every == 0 and time.monotonic() - self.last_drawn >= interval:
            self._draw()

    def close(self) -> None:
        """Draw the finished curves where earlier ones were drawn."""
        if self.drew:
            self._draw()

    def _draw(self) -> None:
        title = f"{self.out.name}: epoch {self.history[-1]['epoch']} ({self.out.path.parent.name})"
        variant_curves(self.history, self.metric, title, self.out.curves_plot)
        self.last_drawn, self.drew = time.monotonic(), True


def _last_line(error: BaseException) -> str:
    message = str(error).strip()
    return f"{type(error).__name__}: {message.splitlines()[0]}" if message else type(error).__name__
