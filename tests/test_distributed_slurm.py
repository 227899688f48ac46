"""Distributed jobs on a real SLURM cluster (slurm/dev-cluster/start.sh): one task per process, gloo on CPU."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import TINY, launch, wait_until
from moelab.config import load_experiment
from moelab.launch.slurm.backend import SlurmFiles
from moelab.results.status import read_status
from moelab.results.tree import ExperimentTree
from test_distributed import _losses, _processes_naming
from test_launch import results_of
from test_slurm import all_final, cluster, profile, submit  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slurm

# no dropout, gate noise, batch norm or balance loss: 2 processes give the losses of 1
EXACT = {**TINY, "name": "dist", "variants": [
    {"name": "mlp", "model": "mlp", "hidden": 32, "dropout": 0.0},
    {"name": "moe", "model": "moe_routed", "hidden": 16, "num_experts": 4, "k": 2, "dropout": 0.0, "balance": "none",
     "batch_norm": False}]}


def test_two_tasks_give_the_losses_of_one_process_and_show_as_one_job(write_experiment, tmp_path, profile):
    experiment = write_experiment({**EXACT, "train": {**TINY["train"], "epochs": 3},
                                   "grid": {"train.distributed.processes": [1, 2]}})
    dry = submit(tmp_path, experiment, profile, "--dry-run")
    assert "# sbatch script of distributed job" in dry.stdout and "#SBATCH --ntasks-per-node=2" in dry.stdout
    submitted = submit(tmp_path, experiment, profile)
    assert "(2 processes, one task each)" in submitted.stdout, submitted.stdout
    final = wait_until(lambda: all_final(experiment, tmp_path / "out"), 300, "both jobs")
    assert set(final.values()) == {"done"}, final
    tree = ExperimentTree(tmp_path / "out" / "dist")
    one, two = (tree.job(job.key) for job in load_experiment(experiment).jobs())
    for variant in ("mlp", "moe"):
        for (train1, val1), (train2, val2) in zip(_losses(one, variant), _losses(two, variant), strict=True):
            assert train2 == pytest.approx(train1, abs=1e-5) and val2 == pytest.approx(val1, abs=1e-5)
    status = launch(tmp_path, "status", str(tree.path))
    assert status.returncode == 0 and "2 DONE (2 jobs)" in status.stdout, status.stdout
    assert status.stdout.count("(2 processes)") == 1


def test_experts_sharded_over_two_tasks_train_as_data_parallel_tasks_do(write_experiment, tmp_path, profile):
    """Expert parallelism on the cluster: each task holds half the experts; the losses are those of the same
    job data parallel (both those of one process, test_distributed.py)."""
    sharded = {**EXACT, "name": "sharded", "variants": EXACT["variants"][1:],
               "train": {**TINY["train"], "epochs": 3, "distributed": {"processes": 2}},
               "grid": {"train.distributed.expert_parallel": [False, True]}}
    experiment = write_experiment(sharded)
    submit(tmp_path, experiment, profile)
    final = wait_until(lambda: all_final(experiment, tmp_path / "out"), 300, "both jobs")
    assert set(final.values()) == {"done"}, final
    tree = ExperimentTree(tmp_path / "out" / "sharded")
    replicated, experts = (tree.job(job.key) for job in load_experiment(experiment).jobs())
    for (train1, val1), (train2, val2) in zip(_losses(replicated, "moe"), _losses(experts, "moe"), strict=True):
        assert train2 == pytest.approx(train1, abs=1e-5) and val2 == pytest.approx(val1, abs=1e-5)
    status = launch(tmp_path, "status", str(tree.path))
    assert status.stdout.count("(2 processes, experts sharded)") == 1 and status.stdout.count("(2 processes)") == 1
    gathered = torch.load(experts.variant("moe").best_weights, weights_only=True)
    assert {k: v.shape for k, v in gathered.items()} == {
        k: v.shape for k, v in torch.load(replicated.variant("moe").best_weights, weights_only=True).items()}


def test_a_distributed_job_signalled_before_its_time_limit_is_requeued_and_resumes(write_experiment, tmp_path,
                                                                                   profile):
    """The signal SLURM sends before a time limit, sent once the job has a checkpoint: the allocation is
    requeued, every rank resumes from that checkpoint, and the results are those of an uninterrupted run."""
    epochs = 30
    long = {**EXACT, "name": "long", "variants": EXACT["variants"][:1], "grid": {},
            "train": {**TINY["train"], "epochs": epochs, "batch_size": 16, "distributed": {"processes": 2}}}
    experiment = write_experiment(long)
    submit(tmp_path, experiment, profile)
    tree = ExperimentTree(tmp_path / "out" / "long")
    job = tree.job(load_experiment(experiment).jobs()[0].key)
    out = job.variant("mlp")

    def first_line_once_checkpointed():
        lines = out.metrics_file.read_text().splitlines() if out.metrics_file.is_file() else []
        return lines[0] if out.last_checkpoint.is_file() and len(lines) < epochs // 2 else None

    first_line = wait_until(first_line_once_checkpointed, 300, "the job's first checkpoint")
    slurm_job = SlurmFiles(tree).submitted_ids()[job.key][0]
    subprocess.run(["scancel", "--signal=USR2", slurm_job], check=True)  # what --signal=USR2@90 sends
    final = wait_until(lambda: all_final(experiment, tmp_path / "out"), 300, "the requeued job")
    assert set(final.values()) == {"done"}, final
    status = read_status(job)
    assert status.slurm["restart_count"] >= 1 and status.attempts >= 2, (status.slurm, status.attempts)
    assert out.metrics_file.read_text().splitlines()[0] == first_line  # resumed, not trained again
    # the reference: the same job uninterrupted, on the cluster (here the last digits may differ)
    launch(tmp_path, "submit", str(experiment), "--profile", str(profile), "--experiments-dir", "reference")
    wait_until(lambda: all_final(experiment, tmp_path / "reference"), 300, "the uninterrupted job")
    assert results_of(tree.path) == results_of(tmp_path / "reference" / "long")


def test_a_rank_killed_on_the_cluster_fails_the_job_and_leaves_no_process(write_experiment, tmp_path, profile):
    long = {**EXACT, "name": "killed", "variants": EXACT["variants"][:1], "grid": {},
            "train": {**TINY["train"], "epochs": 500, "batch_size": 16, "early_stopping": {"patience": 500},
                      "distributed": {"processes": 2}}}
    experiment = write_experiment(long)
    submit(tmp_path, experiment, profile)
    tree = ExperimentTree(tmp_path / "out" / "killed")
    job = tree.job(load_experiment(experiment).jobs()[0].key)
    metrics = job.variant("mlp").metrics_file
    wait_until(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 2, 300, "two epochs")
    # rank 1: the task whose log says so (the ranks run the same command line)
    slurm_job = SlurmFiles(tree).submitted_ids()[job.key][0]
    log = tree.path / "slurm" / f"{slurm_job}_1_log.out"
    wait_until(lambda: log.is_file() and "rank 1 of 2" in log.read_text(), 60, "rank 1 to start")
    try:
        rank1 = [pid for pid in _processes_naming(str(tree.path / "slurm"))
                 if _environment(pid).get("SLURM_PROCID") == "1" and _environment(pid).get("SLURM_JOB_ID") == slurm_job]
        assert len(rank1) == 1, rank1
        os.kill(rank1[0], signal.SIGKILL)
        final = wait_until(lambda: all_final(experiment, tmp_path / "out"), 300, "the job to end")
        # rank 0 ends by itself: the allocation leaves the queue, no process of the job is left
        wait_until(lambda: not _queued(slurm_job), 120, "the SLURM job to end")
    except BaseException:
        subprocess.run(["scancel", slurm_job], capture_output=True)
        raise
    assert set(final.values()) == {"failed"}, final
    error = read_status(job).variants["mlp"].error
    # named from the heartbeats: rank 0 cannot see the other tasks' processes
    assert (f"RankFailed: rank 1 of 2 stopped answering (killed, out of memory, its node lost: "
            f"slurm/{slurm_job}_1_log.* says how)") in error, error
    assert not _processes_naming(str(tree.path))
    assert "CANCELLED" not in (tree.path / "slurm" / f"{slurm_job}_0_log.err").read_text()
    checkpoint = torch.load(job.variant("mlp").last_checkpoint, weights_only=False)
    assert metrics.read_text().count("\n") == checkpoint["next_epoch"]  # nothing of the killed epoch written


def _environment(pid: int) -> dict:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _queued(slurm_job: str) -> bool:
    return bool(subprocess.run(["squeue", "-h", "-j", slurm_job], capture_output=True, text=True).stdout.strip())
