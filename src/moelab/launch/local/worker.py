"""A worker process: import torch once, then run jobs from a queue until told to stop.

This module must not import torch at the top: the GPU a worker may see is set in its environment
before torch is first imported.
"""

from __future__ import annotations

import signal
import traceback
from dataclasses import asdict

from moelab.results.status import JobState
from moelab.train.process import prepare_process


def _interrupt_once(signum, frame) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def worker_main(worker_id: int, gpu: int | None, threads: int, tasks, results) -> None:
    # Ctrl-C reaches a worker twice (from the terminal, then passed on by the launcher), and SIGTERM
    # ends a job like Ctrl-C: the first one interrupts, later ones must not cut short the writing of
    # status.json that the interruption triggers
    signal.signal(signal.SIGINT, _interrupt_once)
    signal.signal(signal.SIGTERM, _interrupt_once)
    try:
        prepare_process(threads, gpu)
        from moelab.train.job import JobOutcome, run_job  # imports torch: after prepare_process

        while (task := tasks.get()) is not None:
            key, job_dir, fresh = task
            results.put(("started", worker_id, key))
            try:
                outcome = run_job(job_dir, fresh=fresh)
            except KeyboardInterrupt:
                raise
            except BaseException as error:  # run_job records variant errors itself; this is the rest
                outcome = JobOutcome(key, JobState.FAILED, errors={"job": f"{type(error).__name__}: {error}"})
                traceback.print_exc()
            results.put(("finished", worker_id, key, asdict(outcome)))
    except KeyboardInterrupt:
        pass
