"""Run one job: load its data once, train each of its variants, record states in status.json.

Local workers and SLURM tasks both call `run_job(job_dir)`; `run/train_models.py` runs it by hand.
A variant that raises is recorded as failed with its traceback and the job goes on with the next
variant; a variant whose results.json exists is skipped, so a rerun only does what is missing.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from moelab.data import load_dataset
from moelab.results.io import read_json, write_json
from moelab.results.status import DONE, FAILED, INTERRUPTED, RUNNING, host, now, read_status
from moelab.results.tree import JobTree
from moelab.train.trainer import StopRequested, resolve_device, train_variant


@dataclass
class JobOutcome:
    key: str
    state: str  # done, failed, interrupted, or busy (another process holds the job)
    seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)  # variant (or "job") -> last error line
    results: dict[str, dict] = field(default_factory=dict)  # variant -> results.json content
    status_file: str = ""


def run_job(job_dir: str | Path, fresh: bool = False, stop_requested: Callable[[], bool] = lambda: False,
            runtime_info: dict | None = None) -> JobOutcome:
    """Train every unfinished variant of the job in `job_dir`. `fresh` discards earlier outputs first."""
    job = JobTree(Path(job_dir))
    lock = FileLock(job.lock_file, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return JobOutcome(job.key, "busy", errors={"job": "another process is running this job"})
    try:
        return _run_locked(job, fresh, stop_requested, runtime_info or {})
    finally:
        lock.release()


def _run_locked(job: JobTree, fresh: bool, stop_requested, runtime_info: dict) -> JobOutcome:
    spec = read_json(job.config_file)
    config = spec["config"]
    live_plot_every = spec.get("report", {}).get("live_plot_every", 0)
    names = [v["name"] for v in config["variants"]]
    if fresh:
        for name in names:
            shutil.rmtree(job.variant(name).path, ignore_errors=True)
        job.status_file.unlink(missing_ok=True)
    previous = read_status(job) or {}
    status = {
        "key": job.key, "state": RUNNING, "attempts": previous.get("attempts", 0) + 1,
        "host": host(), "pid": os.getpid(), "started_at": now(), "finished_at": None, "elapsed_s": None,
        **runtime_info,
        "variants": {n: previous.get("variants", {}).get(n, {"state": "pending"}) for n in names},
    }
    started = time.perf_counter()
    outcome = JobOutcome(job.key, RUNNING, status_file=str(job.status_file))

    def finish(state: str) -> JobOutcome:
        status.update(state=state, finished_at=now(), elapsed_s=round(time.perf_counter() - started, 3),
                      peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
        write_json(job.status_file, status)
        outcome.state, outcome.seconds = state, status["elapsed_s"]
        return outcome

    write_json(job.status_file, status)
    try:
        device = resolve_device(config["train"]["device"])
        status["device"] = str(device)
        if device.type == "cuda":
            import torch

            status["gpu"] = torch.cuda.get_device_name(device)
        data = None
        for variant in config["variants"]:
            name = variant["name"]
            out = job.variant(name)
            if out.is_done():
                outcome.results[name] = read_json(out.results_file)
                status["variants"][name]["state"] = DONE
                continue
            if data is None:  # loaded once per job, only when something is left to train
                data = load_dataset(config["data"], config["seed"]).to(device)
            record = status["variants"][name] = {"state": RUNNING, "started_at": now()}
            write_json(job.status_file, status)
            variant_started = time.perf_counter()
            try:
                outcome.results[name] = train_variant(variant, data, config["train"], config["seed"], out, device,
                                                      stop_requested=stop_requested, live_plot_every=live_plot_every)
                record["state"] = DONE
            except (KeyboardInterrupt, StopRequested, SystemExit):
                record.update(state=INTERRUPTED, seconds=round(time.perf_counter() - variant_started, 3))
                raise
            except Exception as error:  # recorded; the job goes on with its other variants
                record.update(state=FAILED, error=_last_line(error), traceback=traceback.format_exc())
                outcome.errors[name] = record["error"]
            record.update(finished_at=now(), seconds=round(time.perf_counter() - variant_started, 3))
            write_json(job.status_file, status)
    except (KeyboardInterrupt, StopRequested, SystemExit):  # SystemExit: submitit's exit before a requeue
        finish(INTERRUPTED)
        raise
    except Exception as error:  # the job itself (data loading, device) failed
        status["error"], status["traceback"] = _last_line(error), traceback.format_exc()
        outcome.errors["job"] = status["error"]
        return finish(FAILED)
    return finish(FAILED if outcome.errors else DONE)


def _last_line(error: BaseException) -> str:
    message = str(error).strip()
    return f"{type(error).__name__}: {message.splitlines()[0]}" if message else type(error).__name__
