"""Job and variant states as recorded on disk, readable while jobs run.

    pending      no attempt yet
    running      a process holds the job's lock right now
    interrupted  an attempt stopped (Ctrl-C, time limit, killed) before finishing: the next launch resumes it
    failed       an attempt finished and at least one variant raised
    done         every variant wrote its results.json
"""

from __future__ import annotations

import json
import socket
from datetime import datetime, timezone

from filelock import FileLock, Timeout

from moelab.results.io import read_json
from moelab.results.tree import JobTree

PENDING, RUNNING, INTERRUPTED, FAILED, DONE = "pending", "running", "interrupted", "failed", "done"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def host() -> str:
    return socket.gethostname()


def read_status(job: JobTree) -> dict | None:
    """status.json, or None when absent or unreadable (a job never started, or a damaged file)."""
    try:
        return read_json(job.status_file)
    except (OSError, json.JSONDecodeError):
        return None


def is_locked(job: JobTree) -> bool:
    if not job.lock_file.exists():
        return False
    lock = FileLock(job.lock_file, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def job_state(job: JobTree, variant_names: list[str] | None = None) -> str:
    status = read_status(job)
    if variant_names is not None and variant_names and all(job.variant(v).is_done() for v in variant_names):
        return DONE
    if status is None:
        return RUNNING if is_locked(job) else PENDING
    state = status.get("state", PENDING)
    if state == RUNNING and not is_locked(job):
        return INTERRUPTED  # the process that wrote "running" is gone
    return state
