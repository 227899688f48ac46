"""The callable each SLURM array task runs: one job of the grid, checkpointable for requeueing.

Before a time limit (or on preemption) submitit sends a signal and calls `checkpoint`. The trainer
has already written the full training state of the last finished epoch (weights/last.pt) and
status.json, so `checkpoint` only asks for a requeue with the job folder: the requeued task reads
the newest state from disk, never stale pickled arguments, and ends as an uninterrupted run would.
"""

from __future__ import annotations

import os

import submitit

from moelab.results.status import JobState
from moelab.train.process import prepare_process


class JobFailed(RuntimeError):
    """Makes SLURM record the task as FAILED when a variant (or the job) raised."""


class TrainJob(submitit.helpers.Checkpointable):
    def __call__(self, job_dir: str, fresh: bool = False) -> dict:
        """`fresh` (submit --force) discards the job's earlier outputs; a requeue never does."""
        prepare_process()
        from moelab.train.job import run_job  # imports torch: after prepare_process

        outcome = run_job(job_dir, fresh=fresh, runtime_info={"slurm": slurm_info()})
        if outcome.state != JobState.DONE:
            errors = "; ".join(f"{name}: {error}" for name, error in outcome.errors.items())
            raise JobFailed(f"job {outcome.key} {outcome.state}: {errors} (details in {outcome.status_file})")
        return {"key": outcome.key, "state": outcome.state, "seconds": outcome.seconds}

    def checkpoint(self, job_dir: str, fresh: bool = False) -> submitit.helpers.DelayedSubmission:
        # resume from what this attempt wrote: the requeued task must not start fresh again
        return submitit.helpers.DelayedSubmission(TrainJob(), job_dir)


def slurm_info() -> dict:
    env = os.environ
    return {
        "job_id": env.get("SLURM_JOB_ID"),
        "array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
        "restart_count": int(env.get("SLURM_RESTART_COUNT", "0")),
        "node": env.get("SLURMD_NODENAME"),
    }
