"""What each SLURM array task runs: a pool of workers pulling the launch's plan on its node.

A task runs `jobs_per_gpu` workers per GPU it was given (on a CPU task, one single-thread worker per
cpu), each claiming the next job nobody holds, until no job is left for it. Before a time limit (or
on preemption) submitit sends a signal and calls `checkpoint`: the workers are interrupted (each
job's full training state of its last finished epoch is on disk) and the task is requeued with the
same plan; the requeued task pulls the unfinished jobs again and they resume from their checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path

import submitit

from moelab.launch.pool import WorkerPool, worker_slots
from moelab.results.status import JobState
from moelab.results.tree import ExperimentTree
from moelab.train.stop import request_stop


class JobFailed(RuntimeError):
    """Makes SLURM record the task as FAILED when a job it ran failed."""


class PackedTask(submitit.helpers.Checkpointable):
    def __init__(self) -> None:
        self.pool: WorkerPool | None = None

    def __call__(self, experiment_dir: str, plan_path: str, jobs_per_gpu: int, jobs_per_task: int) -> dict:
        gpus = visible_gpus()
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", "1"))
        slots = worker_slots(jobs_per_task, None, jobs_per_gpu, gpus, cpus)
        print(f"task on {os.environ.get('SLURMD_NODENAME', '?')}: {len(slots)} worker(s) "
              f"({len(gpus)} GPU(s), {cpus} cpu(s)), pulling {plan_path}", flush=True)
        self.pool = WorkerPool(ExperimentTree(Path(experiment_dir)), plan_path, slots,
                               runtime_info={"slurm": slurm_info()}, wait_for_others=False)
        result = self.pool.run()
        failed = {key: o["errors"] for key, o in result.outcomes.items()
                  if o["state"] not in (JobState.DONE, JobState.INTERRUPTED, JobState.PRUNED)}
        if failed:
            lines = "; ".join(f"{key}: {errors}" for key, errors in failed.items())
            raise JobFailed(f"{len(failed)} job(s) failed: {lines} (details in each job's status.json)")
        return {"ran": sorted(result.outcomes), "settled_elsewhere": sorted(result.settled)}

    def checkpoint(self, *args) -> submitit.helpers.DelayedSubmission:
        request_stop(grace_s=None)  # the stop every other signal requests (train/stop.py)
        if self.pool is not None:  # called from submitit's signal handler, in the middle of pool.run
            self.pool.stop(drain=False)  # interrupted jobs keep their last epoch's checkpoint
        # the requeued task pulls the same plan: whatever is unfinished, whoever held it
        return submitit.helpers.DelayedSubmission(PackedTask(), *args)


def visible_gpus() -> list[int]:
    """The GPUs SLURM gave this task, without importing torch in the task's own process."""
    devices = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return list(range(len(devices)))


def slurm_info() -> dict:
    env = os.environ
    return {
        "job_id": env.get("SLURM_JOB_ID"),
        "array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
        "restart_count": int(env.get("SLURM_RESTART_COUNT", "0")),
        "node": env.get("SLURMD_NODENAME"),
    }
