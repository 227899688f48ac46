"""What each task of a distributed job's SLURM allocation runs: one rank of that one job.

A job with `train.distributed.processes: P` is never packed with others: it is submitted alone, as P
tasks (`nodes` x `tasks_per_node`, one GPU per task on GPU partitions), and submitit starts this in each
task through srun. The ranks and the rendezvous come from submitit's TorchDistributedEnvironment. Rank 0
claims the job and runs it like any worker would (claim, heartbeat, status, metrics, checkpoints,
results); the other ranks train what rank 0 tells them (train/distributed.py). Before the time limit
submitit calls `checkpoint` on every task: rank 0 stops at the next batch (its checkpoint is the last
finished epoch's) and submitit requeues the allocation, whose ranks resume from that checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import submitit

from moelab.launch.plan import PlanFile
from moelab.launch.slurm.job import JobFailed, slurm_info
from moelab.results.status import JobState, read_status
from moelab.results.tree import ExperimentTree
from moelab.train.stop import request_stop, stop_requested


class DistributedTask(submitit.helpers.Checkpointable):
    def __call__(self, experiment_dir: str, plan_path: str, key: str) -> dict:
        from moelab.train.process import prepare_process

        prepare_process()
        import torch

        from moelab.results.io import read_json
        from moelab.train.distributed import follow_rank_zero, standing_ranks
        from moelab.train.ranks import Ranks
        from moelab.train.settings import TrainSettings
        from moelab.train.trainer import resolve_device

        # SLURM gave each task its GPU: the rank's device is the first it sees
        environment = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                             overwrite=True)
        ranks = Ranks(environment.rank, environment.world_size)
        job = ExperimentTree(Path(experiment_dir)).job(key)
        settings = TrainSettings.from_dict(read_json(job.config_file)["config"]["train"])
        device = resolve_device(settings.device)
        if device.type == "cuda":
            device = torch.device("cuda", environment.local_rank % torch.cuda.device_count())
        print(f"rank {ranks.rank} of {ranks.world_size} on {os.environ.get('SLURMD_NODENAME', '?')} ({device}), "
              f"job {key}", flush=True)
        if ranks.rank != 0:
            follow_rank_zero(str(job.path), ranks, device)
            return {"rank": ranks.rank}
        from moelab.train.job import run_job

        plan = PlanFile.read(Path(plan_path))
        status = read_status(job)
        # a forced job is discarded once per launch: a requeued attempt of this launch resumes
        fresh = plan.fresh and (status is None or status.launch_id != plan.launch_id)
        with standing_ranks(ranks, device):
            outcome = run_job(job.path, fresh=fresh, stop_requested=stop_requested,
                              runtime_info={"slurm": slurm_info(), "launch_id": plan.launch_id})
        if outcome.state not in (JobState.DONE, JobState.INTERRUPTED, JobState.PRUNED, JobState.RUNNING):
            raise JobFailed(f"job {key} failed: {outcome.errors} (details in its status.json)")
        return {"ran": [key], "state": str(outcome.state)}

    def checkpoint(self, *args) -> submitit.helpers.DelayedSubmission:
        request_stop(grace_s=None)  # rank 0 stops at its next batch; every rank restarts from its checkpoint
        return submitit.helpers.DelayedSubmission(DistributedTask(), *args)
