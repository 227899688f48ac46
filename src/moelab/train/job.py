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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from moelab.data import DataSettings, load_dataset
from moelab.report.plots import variant_curves
from moelab.results.claims import Claim, try_claim
from moelab.results.events import variant_events
from moelab.results.io import read_json
from moelab.results.status import JobState, JobStatus, VariantStatus, host, now, read_status
from moelab.results.tree import JobTree, VariantTree, set_aside
from moelab.train.distributed import train_members_distributed
from moelab.train.settings import TrainSettings
from moelab.train.tasks import TASKS
from moelab.models import get_model_spec
from moelab.train.trainer import Member, StopRequested, provenance, resolve_device, train_members

# a plot takes about 0.1 s; when epochs take milliseconds nobody watches them and redrawing would
# cost more than training, so live curves are redrawn at most this often
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


def _run_claimed(job: JobTree, fresh: bool, stop_requested, runtime_info: dict, should_prune=None) -> JobOutcome:
    spec = read_json(job.config_file)
    config = spec["config"]
    continued = spec.get("continued_from")  # a finished job with fewer epochs, chosen by the launch
    settings = TrainSettings.from_dict(config["train"])
    live_plot_every = spec.get("report", {}).get("live_plot_every", 0)
    names = [v["name"] for v in config["variants"]]
    previous = read_status(job)
    if previous is None and (job.status_file.exists() or job.status_file.is_symlink()):
        _warn_set_aside(job.status_file, "cannot be read", "the job's attempts count again from 1")
    if fresh:
        for name in names:
            shutil.rmtree(job.variant(name).path, ignore_errors=True)
        job.status_file.unlink(missing_ok=True)
        previous = None
    previous = previous or JobStatus(job.key)
    status = JobStatus(job.key, JobState.RUNNING, attempts=previous.attempts + 1, host=host(), pid=os.getpid(),
                       started_at=now(), slurm=runtime_info.get("slurm"), launch_id=runtime_info.get("launch_id"),
                       variants={n: previous.variants.get(n, VariantStatus()) for n in names})
    started = time.perf_counter()
    outcome = JobOutcome(job.key, JobState.RUNNING, status_file=str(job.status_file))

    def finish(state: JobState) -> JobOutcome:
        status.state, status.finished_at = state, now()
        status.elapsed_s = round(time.perf_counter() - started, 3)
        status.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        status.write(job)
        outcome.state, outcome.seconds = state, status.elapsed_s
        return outcome

    status.write(job)
    try:
        device = resolve_device(settings.device)
        status.device = str(device)
        if device.type == "cuda":
            status.gpu = torch.cuda.get_device_name(device)
        data = None
        left = []
        for variant in config["variants"]:
            name = variant["name"]
            out = job.variant(name)
            if out.results_file.exists():  # finished, unless the file is damaged
                results = _read_results(out)
                if results is not None:
                    outcome.results[name] = results
                    status.variants[name].state = JobState.DONE
                    continue
            left.append(variant)
        for group in trainings(left):
            if data is None:  # loaded once per job, only when something is left to train
                data = load_dataset(DataSettings(**config["data"]), config["seed"]).to(device)
            members, started_at, curves, events = [], {}, {}, {}
            for variant in group:
                name = variant["name"]
                out = job.variant(name)
                status.variants[name] = VariantStatus(JobState.RUNNING, started_at=now(),
                                                      provenance=provenance(variant, continued) or None,
                                                      trained_with=group[0]["name"] if len(group) > 1 else None)
                started_at[name] = time.perf_counter()
                curves[name] = LiveCurves(live_plot_every, TASKS[data.task].primary, out)
                events[name] = variant_events(out, spec)  # TensorBoard; None when off
                on_epoch = _each(curves[name], events[name])
                on_epoch = on_epoch if should_prune is None else _pruning(on_epoch, name, should_prune)
                members.append(Member(variant, out, on_epoch))
            status.write(job)

            def finished(member: Member, results: dict | None, error: Exception | None) -> None:
                name = member.variant["name"]
                record = status.variants[name]
                if events[name] is not None:
                    events[name].close(results)
                if error is None:
                    curves[name].close()
                    outcome.results[name], record.state = results, JobState.DONE
                else:  # recorded; the job goes on with its other variants
                    record.state, record.error = JobState.FAILED, _last_line(error)
                    record.traceback = "".join(traceback.format_exception(error))
                    outcome.errors[name] = record.error
                record.finished_at, record.seconds = now(), round(time.perf_counter() - started_at[name], 3)
                status.write(job)

            try:
                train = train_members if settings.distributed.processes == 1 else partial(train_members_distributed, job.path)
                train(members, data, settings, config["seed"], device, stop_requested, continued, finished)
            except (KeyboardInterrupt, StopRequested, SystemExit):
                for member in members:
                    record = status.variants[member.variant["name"]]
                    if record.state == JobState.RUNNING:
                        record.state = JobState.INTERRUPTED
                        record.seconds = round(time.perf_counter() - started_at[member.variant["name"]], 3)
                raise
            except Pruned:  # every variant not finished yet: a pruned job trains nothing more
                for variant in left:
                    if status.variants[variant["name"]].state in (JobState.RUNNING, JobState.PENDING):
                        status.variants[variant["name"]].state = JobState.PRUNED
                for member in members:
                    record = status.variants[member.variant["name"]]
                    record.finished_at = now()
                    record.seconds = round(time.perf_counter() - started_at[member.variant["name"]], 3)
                return finish(JobState.PRUNED)
            finally:  # an interrupted or pruned variant's event file ends where its checkpoint is
                for writer in events.values():
                    if writer is not None:
                        writer.release()
    except (KeyboardInterrupt, StopRequested, SystemExit):  # SystemExit: submitit's exit before a requeue
        finish(JobState.INTERRUPTED)
        raise
    except Exception as error:  # the job itself (data loading, device) failed
        status.error, status.traceback = _last_line(error), traceback.format_exc()
        outcome.errors["job"] = status.error
        return finish(JobState.FAILED)
    return finish(JobState.FAILED if outcome.errors else JobState.DONE)


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

    def __init__(self, every: int, metric: str, out: VariantTree):
        self.every, self.metric, self.out = every, metric, out
        self.history: list[dict] = []
        self.last_drawn = time.monotonic()
        self.drew = False

    def __call__(self, history: list[dict]) -> None:
        self.history = history
        if self.every and len(history) % self.every == 0 and time.monotonic() - self.last_drawn >= LIVE_PLOT_MIN_SECONDS:
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
