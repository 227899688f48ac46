"""Job and variant states: one vocabulary for the disk, the queues, the tables and the screen.

status.json is read and written only through `JobStatus`; the state of a job as a launch sees it
comes from `job_state`, which merges what the disk says with whether a process holds the job.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from moelab.results.claims import is_claimed
from moelab.results.io import read_json, write_json
from moelab.results.tree import JobTree, VariantTree


class JobState(str, Enum):
    PENDING = "pending"  # no attempt yet
    QUEUED = "queued"  # waiting in a cluster queue
    RUNNING = "running"  # a live process holds the job's claim
    INTERRUPTED = "interrupted"  # stopped (Ctrl-C, time limit, killed) before finishing: the next launch resumes it
    FAILED = "failed"  # an attempt finished and at least one variant raised
    CANCELLED = "cancelled"  # a queue cancelled or preempted it
    TIMEOUT = "timeout"  # a queue ended it at its time limit, past its requeues
    OUT_OF_MEMORY = "out_of_memory"
    NODE_FAIL = "node_fail"
    PRUNED = "pruned"  # a search stopped it early: its trial did not promise to beat the others
    DONE = "done"  # every variant wrote its results.json
    DAMAGED = "damaged"  # a variant's results.json is unreadable, or missing although status.json says done

    def __str__(self) -> str:
        return self.value

    # equal to its word, so hashed as its word: "done" in {JobState.DONE}
    __hash__ = str.__hash__

    @property
    def shown(self) -> str:
        """The word `status` prints."""
        return "NOT_STARTED" if self is JobState.PENDING else self.value.upper()


# what --rerun-failed reruns: failures recorded on disk, and the ways a queue ends a job early
FAILURES = frozenset({JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.OUT_OF_MEMORY,
                      JobState.NODE_FAIL})
# a queue's word is trusted over the disk's for these, the disk for the rest
QUEUE_ONLY = frozenset({JobState.QUEUED, JobState.RUNNING, *FAILURES})


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def host() -> str:
    return socket.gethostname()


@dataclass
class VariantStatus:
    state: JobState = JobState.PENDING
    started_at: str | None = None
    finished_at: str | None = None
    seconds: float | None = None
    error: str | None = None  # the last line of the exception
    traceback: str | None = None
    provenance: dict | None = None  # where its training starts when not at random: init_from, continued_from
    trained_with: str | None = None  # the first variant of the group whose one training it shared, if any


@dataclass
class JobStatus:
    """status.json. Keys written by older versions that are not fields here are kept in `extra`."""

    key: str
    state: JobState = JobState.PENDING
    attempts: int = 0
    host: str | None = None
    pid: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    elapsed_s: float | None = None
    device: str | None = None
    gpu: str | None = None
    peak_rss_mb: float | None = None
    error: str | None = None
    traceback: str | None = None
    slurm: dict | None = None  # job and array ids, node, restart count, when run by SLURM
    launch_id: str | None = None  # the launch whose plan the last attempt came from (launches/<id>/)
    variants: dict[str, VariantStatus] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def restarts(self) -> int:
        return max(self.attempts - 1, (self.slurm or {}).get("restart_count", 0), 0)

    def first_error(self) -> str | None:
        return next((v.error for v in self.variants.values() if v.error), None) or self.error

    def to_dict(self) -> dict:
        data = asdict(self)
        extra = data.pop("extra")
        data["state"] = str(self.state)
        for name, variant in data["variants"].items():
            variant["state"] = str(variant["state"])
        if self.slurm is None:
            del data["slurm"]
        return {**extra, **data}

    @classmethod
    def from_dict(cls, data: dict) -> "JobStatus":
        known = {f.name for f in fields(cls)} - {"extra", "variants", "state"}
        variant_fields = {f.name for f in fields(VariantStatus)} - {"state"}
        variants = {
            name: VariantStatus(state=_state(v.get("state")), **{k: v[k] for k in variant_fields if k in v})
            for name, v in (data.get("variants") or {}).items() if isinstance(v, dict)
        }
        return cls(state=_state(data.get("state")), variants=variants,
                   extra={k: v for k, v in data.items() if k not in known | {"variants", "state"}},
                   **{k: data[k] for k in known if k in data})

    def write(self, job: JobTree) -> None:
        write_json(job.status_file, self.to_dict())


def _state(word) -> JobState:
    try:
        return JobState(word)
    except ValueError:
        return JobState.PENDING


def read_status(job: JobTree) -> JobStatus | None:
    """status.json, or None when absent or unreadable (a job never started, or a damaged file)."""
    try:
        data = read_json(job.status_file)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return JobStatus.from_dict({"key": job.key, **data}) if isinstance(data, dict) else None


def job_state(job: JobTree, variant_names: list[str] | None = None) -> JobState:
    return disk_state(job, variant_names, read_status(job))


def disk_state(job: JobTree, variant_names: list[str] | None, status: JobStatus | None,
               read: Callable[[Path], Any] = read_json) -> JobState:
    """`job_state` from a status.json already read (None: absent or unreadable); `read` parses a
    results.json (a caller reading many jobs passes its cache)."""
    if variant_names and all(_readable_results(job.variant(v), read) for v in variant_names):
        return JobState.DONE
    if status is None:
        return JobState.RUNNING if is_claimed(job) else JobState.PENDING
    if status.state is JobState.RUNNING and not is_claimed(job):
        return JobState.INTERRUPTED  # the process that wrote "running" is gone
    if status.state is JobState.DONE and variant_names:
        return JobState.INTERRUPTED  # a variant's results.json was lost or damaged since: it is redone
    return status.state


def _readable_results(variant: VariantTree, read: Callable[[Path], Any]) -> bool:
    """A variant is done when its results.json holds a record; a damaged one is redone (train/job.py)."""
    try:
        return isinstance(read(variant.results_file), dict)
    except (OSError, ValueError):
        return False


def merge_states(disk: JobState, queue: JobState | None) -> JobState:
    """The disk is trusted for finished work (a queue's accounting can lag behind results files) and
    for a job a live process has claimed; the queue for what the disk cannot know: queued,
    cancelled, timed out, out of memory, node failure."""
    if disk in (JobState.DONE, JobState.FAILED, JobState.RUNNING) or queue is None:
        return disk
    return queue
