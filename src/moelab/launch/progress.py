"""A progress line per running job: variant, epoch n of N, validation metric and ETA.

Read from the job's own files (status.json names the running variant, its metrics.jsonl the epochs
done), so it works for any worker without a channel from the training loop. On a terminal each
running job has a tqdm bar; elsewhere (a SLURM log, a pipe) a plain line is printed per new epoch.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TextIO

from tqdm import tqdm

from moelab.results.errors import DamagedRecord
from moelab.results.io import read_jsonl
from moelab.results.records import read_job_spec
from moelab.results.status import JobState, read_status
from moelab.results.tree import ExperimentTree

READ_EVERY_S = 2.0  # the files of every running job are read at most this often


@dataclass(frozen=True)
class JobProgress:
    key: str
    variant: str
    epoch: int  # epochs done
    epochs: int  # the most it trains (early stopping may end it sooner)
    metric: str | None  # the validation metric's name, e.g. val_acc
    value: float | None
    eta_s: float | None  # at the pace so far, if it trains every epoch

    def line(self) -> str:
        score = f" {self.metric}={self.value:.4f}" if self.metric and isinstance(self.value, (int, float)) else ""
        return f"{self.key} {self.variant} epoch {self.epoch}/{self.epochs}{score} ETA {format_eta(self.eta_s)}"


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def read_progress(tree: ExperimentTree, key: str) -> JobProgress | None:
    """The running variant of job `key` and its last epoch; None before its first epoch or when the
    job's files cannot be read (progress is a courtesy: it never stops a launch)."""
    job = tree.job(key)
    try:
        status, spec = read_status(job), read_job_spec(job)
    except (DamagedRecord, OSError, ValueError):
        return None
    if status is None:
        return None
    running = next((name for name, v in status.variants.items() if v.state == JobState.RUNNING), None)
    if running is None:
        return None
    try:
        lines = read_jsonl(job.variant(running).metrics_file)
    except OSError:
        return None
    epochs = int((spec.variant(running) or {}).get("epochs") or spec.train.get("epochs") or 0)
    if not lines or not epochs:
        return None
    last = lines[-1]
    epoch = int(last.get("epoch", len(lines)))
    metric = next((k for k in last if k.startswith("val_") and k != "val_loss"), None)
    started = status.variants[running].started_at
    eta = None
    if started and epoch > 0:
        elapsed = (datetime.now(datetime.fromisoformat(started).tzinfo) - datetime.fromisoformat(started)).total_seconds()
        eta = max(0.0, elapsed / epoch * (epochs - epoch))
    return JobProgress(key, running, epoch, epochs, metric, last.get(metric) if metric else None, eta)


class ProgressLines:
    """Shows the progress of the jobs `update` is given: a tqdm bar each on a terminal, else a plain
    line whenever a job's epoch changes."""

    def __init__(self, tree: ExperimentTree, stream: TextIO | None = None):
        self.tree, self.stream = tree, stream or sys.stdout
        self.terminal = self.stream.isatty()
        self.shown: dict[str, JobProgress] = {}
        self.bars: dict[str, tqdm] = {}
        self.last_read = 0.0

    def update(self, running: list[str]) -> None:
        if time.monotonic() - self.last_read < READ_EVERY_S:
            return
        self.last_read = time.monotonic()
        for key in [k for k in self.bars if k not in running]:
            self.bars.pop(key).close()
        for key in running:
            progress = read_progress(self.tree, key)
            if progress is None or progress == self.shown.get(key):
                continue
            previous = self.shown.get(key)
            self.shown[key] = progress
            if self.terminal:
                self._bar(progress)
            elif previous is None or (previous.variant, previous.epoch) != (progress.variant, progress.epoch):
                print(progress.line(), file=self.stream, flush=True)

    def _bar(self, progress: JobProgress) -> None:
        bar = self.bars.get(progress.key)
        if bar is None:
            bar = self.bars[progress.key] = tqdm(total=progress.epochs, file=self.stream, leave=False, unit="epoch",
                                                 bar_format="{desc} {bar} {n}/{total} {postfix}")
        bar.total = progress.epochs
        bar.n = progress.epoch
        bar.set_description_str(f"{progress.key} {progress.variant}", refresh=False)
        score = f"{progress.metric}={progress.value:.4f} " if isinstance(progress.value, (int, float)) else ""
        bar.set_postfix_str(f"{score}ETA {format_eta(progress.eta_s)}", refresh=False)
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
