"""Distributed jobs on a real SLURM cluster (slurm/dev-cluster/start.sh): one task per process, gloo on CPU."""

from __future__ import annotations

import subprocess

import pytest

from conftest import TINY, launch, wait_until
from moelab.config import load_experiment
from moelab.launch.slurm.backend import SlurmFiles
from moelab.results.status import read_status
from moelab.results.tree import ExperimentTree
from test_distributed import _losses
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
