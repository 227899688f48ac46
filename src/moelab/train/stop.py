"""Cooperative stopping: a signal asks a process to stop, and training stops at its next safe point.

Ctrl-C, SIGTERM, SIGHUP, the death of a worker's launcher and a SLURM pre-emption all end in
`request_stop()`; training asks `stop_requested()` between batches and after every epoch and stops
there, so no write (checkpoint, status, metrics) is ever cut short: the variant is recorded as
interrupted and resumes from its last checkpoint. A signal handler that raised instead would land
anywhere, e.g. inside a job's error handling, which then records the job as failed.
A process that has not stopped `GRACE_S` seconds after the request exits at once: its files are
still whole (every write is atomic) and its claim is stale as soon as it is gone.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable

# how long training may take to reach its next safe point before the process exits regardless
GRACE_S = 20.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# the shell's code for a process ended by Ctrl-C
INTERRUPTED_EXIT_CODE = 130

_requested = threading.Event()


def stop_requested() -> bool:
    return _requested.is_set()


def request_stop(grace_s: float | None = GRACE_S) -> None:
    """Ask this process to stop at its next safe point; after `grace_s` seconds (None: never) it
    exits at once. Further requests change nothing."""
    if _requested.is_set():
        return
    _requested.set()
    if grace_s is not None:
        timer = threading.Timer(grace_s, os._exit, (INTERRUPTED_EXIT_CODE,))
        timer.daemon = True  # a process that stopped in time exits without waiting for it
        timer.start()


def stop_on_signals(grace_s: float | None = GRACE_S, on_repeat: Callable[[], None] | None = None) -> dict:
    """Make SIGINT, SIGTERM and SIGHUP request a stop, SIGINT also in a process started with it
    ignored (`nohup ... &`). `on_repeat`: called on each further signal (None: they change nothing,
    as for a worker, which gets Ctrl-C from the terminal and again from its launcher). Returns the
    handlers it replaced."""

    def handle(signum, frame) -> None:
        if stop_requested() and on_repeat is not None:
            on_repeat()
        request_stop(grace_s)

    return {signum: signal.signal(signum, handle) for signum in STOP_SIGNALS}
