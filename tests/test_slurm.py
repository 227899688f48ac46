"""submit against a real SLURM cluster (slurm/dev-cluster/start.sh): arrays, requeue, cancel, failure.

Outside CI these tests skip when no cluster answers; in CI (CI=true) an unreachable cluster fails them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, launch, wait_until
from moelab.config import load_experiment
from moelab.launch.slurm import queue
from moelab.launch.slurm.backend import SlurmBackend, SlurmFiles
from moelab.results.io import read_jsonl
from moelab.results.status import JobState, job_state, merge_states, read_status
from moelab.results.tree import ExperimentTree
from test_launch import results_of

pytestmark = pytest.mark.slurm

FINAL = {"done", "failed", "cancelled", "timeout", "out_of_memory", "node_fail"}


def cluster_answers() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch not found"
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        return f"sinfo failed: {done.stderr.strip()}"
    if not any(s.startswith(("idle", "mixed", "alloc")) for s in done.stdout.split()):
        return f"no node is up (sinfo: {done.stdout.split()})"
    accounting = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True)
    if accounting.returncode != 0:
        return f"accounting (sacct) is not available: {accounting.stderr.strip()}"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    problem = cluster_answers()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"SLURM is required in CI: {problem}. .ci/run starts slurm/dev-cluster/start.sh first.")
        pytest.skip(f"no SLURM cluster answers ({problem}); start one with: sudo bash slurm/dev-cluster/start.sh")


@pytest.fixture
def profile(tmp_path) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text("cpus_per_task: 1\nmem_gb: 1\ntimeout_min: 10\narray_parallelism: 2\n")
    return path


def states(experiment_file: Path, experiments_dir: Path, overrides=()) -> dict[str, str]:
    experiment = load_experiment(experiment_file, overrides)
    tree = ExperimentTree(experiments_dir / experiment.name)
    queued = SlurmBackend.queue_view(tree).states
    names = [v["name"] for v in experiment.doc["variants"]]
    return {job.key: merge_states(job_state(tree.job(job.key), names), queued.get(job.key)) for job in experiment.jobs()}


def all_final(experiment_file, experiments_dir, overrides=()):
    found = states(experiment_file, experiments_dir, overrides)
    return found if all(s in FINAL for s in found.values()) else None


def submit(cwd, experiment, profile, *args):
    done = launch(cwd, "submit", str(experiment), "--profile", str(profile), "--experiments-dir", "out", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def array_tasks(tree: Path) -> list[str]:
    """Every array task of the experiment's submissions, as sacct lists them."""
    arrays = sorted({a for ids in SlurmFiles(ExperimentTree(tree)).submitted_ids().values() for a in ids})
    return sorted(queue.query(arrays, whole_arrays=True))


def test_a_packed_grid_runs_as_few_tasks_and_equals_run_here(write_experiment, tmp_path, profile):
    """24 jobs, 8 per task: 3 array tasks (in arrays of at most 2), every job done once, the same
    numbers as run_here, and nothing in the tree tells how the jobs were packed."""
    grid = {**TINY, "variants": TINY["variants"][:2], "train": {**TINY["train"], "epochs": 2},
            "grid": {"seed": list(range(12)), "variants.*.num_experts": [2, 4]},
            "slurm": {"jobs_per_task": 8, "max_array_size": 2}}
    experiment = write_experiment(grid)
    submitted = submit(tmp_path, experiment, profile)
    assert "submitted 24 job(s) as 3 task(s) in 2 array(s)" in submitted.stdout, submitted.stdout
    assert not all_final(experiment, tmp_path / "out")  # non-blocking: it returned before the jobs ran
    final = wait_until(lambda: all_final(experiment, tmp_path / "out"), 600, "the packed grid")
    assert set(final.values()) == {"done"} and len(final) == 24
    tree = tmp_path / "out" / "tiny"
    assert len(wait_until(lambda: len(array_tasks(tree)) == 3 and array_tasks(tree), 60, "sacct to list the tasks")) == 3
    assert all(json.loads(p.read_text())["attempts"] == 1 for p in tree.glob("jobs/*/status.json"))

    local = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "local", "--no-report")
    assert local.returncode == 0
    assert results_of(tree) == results_of(tmp_path / "local" / "tiny")  # same numbers wherever a job ran

    status = launch(tmp_path, "status", str(tree))
    assert status.returncode == 0 and "24 DONE (24 jobs)" in status.stdout
    plots = subprocess.run([sys.executable, "-m", "moelab.report.cli", str(tree)], cwd=tmp_path, capture_output=True, text=True)
    assert plots.returncode == 0 and "48 of 48 runs finished" in plots.stdout

    again = submit(tmp_path, experiment, profile)
    assert "0 to submit" in again.stdout and "nothing to submit" in again.stdout


def test_slurm_fuse_trains_fused_groups_in_a_task_as_run_here_does(write_experiment, tmp_path, profile):
    """slurm.fuse: one task pulls 8 jobs and trains them as two fused groups of 4: the same keys and
    the same numbers as run_here with local.fuse."""
    grid = {**TINY, "variants": TINY["variants"][:2], "train": {**TINY["train"], "epochs": 2},
            "grid": {"seed": [0, 1, 2, 3], "variants.*.num_experts": [2, 4]},
            "slurm": {"jobs_per_task": 8, "fuse": 4}, "local": {"workers": 1, "fuse": 4}}
    experiment = write_experiment(grid)
    submitted = submit(tmp_path, experiment, profile)
    assert "submitted 8 job(s) as 1 task(s)" in submitted.stdout, submitted.stdout
    final = wait_until(lambda: all_final(experiment, tmp_path / "out"), 600, "the fused grid")
    assert set(final.values()) == {"done"} and len(final) == 8
    tree = tmp_path / "out" / "tiny"
    results = results_of(tree)
    assert {r["execution"]["fused_models"] for r in results.values()} == {4}
    local = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "local", "--no-report")
    assert local.returncode == 0, local.stdout + local.stderr
    assert results == results_of(tmp_path / "local" / "tiny")


def test_force_retrains_every_job_once_with_two_tasks_pulling(write_experiment, tmp_path, profile):
    """--force over finished jobs, packed as 2 tasks that pull the same plan, one after the other: each
    job trained once (one 'done' line with a training time in the tasks' logs: the second task finds
    the first one's work done, 'ran elsewhere', not finished jobs to force again), from zero."""
    epochs = 2
    experiment = write_experiment({**TINY, "train": {**TINY["train"], "epochs": epochs},
                                   "slurm": {"jobs_per_task": 2, "array_parallelism": 1}})
    submit(tmp_path, experiment, profile)
    wait_until(lambda: all_final(experiment, tmp_path / "out"), 300, "the grid")
    tree = tmp_path / "out" / "tiny"
    before = {p: p.stat().st_mtime_ns for p in tree.glob("jobs/*/*/results.json")}
    forced = submit(tmp_path, experiment, profile, "--force")
    assert "4 to submit" in forced.stdout and "as 2 task(s)" in forced.stdout, forced.stdout
    wait_until(lambda: all(p.is_file() and p.stat().st_mtime_ns != t for p, t in before.items()), 300, "the forced jobs")
    wait_until(lambda: all_final(experiment, tmp_path / "out"), 60, "the forced jobs to end")
    [array] = read_jsonl(SlurmFiles(ExperimentTree(tree)).submissions)[-1]["arrays"]
    ended = lambda: (records := queue.query([array], whole_arrays=True)) and all(
        queue.STATES.get(r.state) not in (JobState.QUEUED, JobState.RUNNING) for r in records.values())
    wait_until(ended, 120, "the forced array's tasks to end")
    logs = "".join(p.read_text() for p in SlurmFiles(ExperimentTree(tree)).folder.glob(f"{array}_*_0_log.out"))
    keys = [job.key for job in load_experiment(experiment).jobs()]
    assert {key: len(re.findall(rf"\] {key} done +[0-9.]+s ", logs)) for key in keys} == {key: 1 for key in keys}, logs
    assert all(json.loads(p.read_text())["attempts"] == 1 for p in tree.glob("jobs/*/status.json"))  # fresh status
    assert all(len(p.read_text().splitlines()) == epochs for p in tree.glob("jobs/*/*/metrics.jsonl"))


def test_a_grid_larger_than_max_submit_jobs_goes_as_fewer_fuller_tasks(write_experiment, tmp_path, profile):
    """The limit is set on an account of its own, which the grid is submitted under: jobs this user
    has queued in other accounts (other tests', or a dev cluster's leftovers) do not count against it."""
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    account = "moelab-limit-test"
    for command in (["add", "account", account], ["add", "user", user, f"account={account}"]):
        subprocess.run(["sacctmgr", "-i", *command], capture_output=True, text=True)  # exists already: fine
    limit = subprocess.run(["sacctmgr", "-i", "modify", "user", "where", f"name={user}", f"account={account}", "set",
                            "MaxSubmitJobs=2"], capture_output=True, text=True)
    assert limit.returncode == 0, limit.stderr
    try:
        profile.write_text(profile.read_text() + f"account: {account}\n")
        experiment = write_experiment({**TINY, "variants": TINY["variants"][:1], "train": {**TINY["train"], "epochs": 1},
                                       "grid": {"seed": [0, 1, 2, 3, 4, 5]}, "slurm": {"jobs_per_task": 1}})
        submitted = submit(tmp_path, experiment, profile)
        assert "MaxSubmitJobs" in submitted.stdout and "as 2 task(s)" in submitted.stdout, submitted.stdout
        final = wait_until(lambda: all_final(experiment, tmp_path / "out"), 300, "the limited grid")
        assert set(final.values()) == {"done"} and len(final) == 6
    finally:
        subprocess.run(["sacctmgr", "-i", "modify", "user", "where", f"name={user}", f"account={account}", "set",
                        "MaxSubmitJobs=-1"], check=True, capture_output=True)


def test_dry_run_prints_the_array_script_and_submits_nothing(write_experiment, tmp_path, profile):
    experiment = write_experiment()
    queued = lambda: set(subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True).stdout.split())
    before = queued()
    done = submit(tmp_path, experiment, profile, "--dry-run", "slurm.array_parallelism=3", "slurm.jobs_per_task=1")
    assert "#SBATCH --array=0-3%3" in done.stdout and "#SBATCH --signal=USR2@90" in done.stdout
    assert "submitit.core._submit" in done.stdout and "dry run: nothing is started or written" in done.stdout
    assert not (tmp_path / "out").exists()
    assert queued() <= before  # no new job (earlier tests' jobs may still be finishing)


def test_a_packed_task_signalled_before_its_time_limit_is_requeued_and_resumes_its_jobs(write_experiment, tmp_path,
                                                                                         profile):
    """The signal SLURM sends before a time limit (or on preemption), sent as soon as a job has a
    checkpoint: the task is requeued and finishes both its jobs, the interrupted one resumed from its
    checkpoint (its first epochs are not trained again), with the numbers of an uninterrupted run."""
    epochs = 30
    two_jobs = {**TINY, "name": "long", "variants": [TINY["variants"][2]], "grid": {"seed": [0, 1]},
                "train": {**TINY["train"], "epochs": epochs, "batch_size": 16}, "slurm": {"jobs_per_task": 2}}
    experiment = write_experiment(two_jobs)
    submitted = submit(tmp_path, experiment, profile)
    assert "as 1 task(s)" in submitted.stdout
    tree = ExperimentTree(tmp_path / "out" / "long")
    variant = two_jobs["variants"][0]["name"]

    def training_with_a_checkpoint():
        """The first line of each job's metrics, once a job has a checkpoint and most of its epochs to go."""
        outs = {job.key: tree.job(job.key).variant(variant) for job in load_experiment(experiment).jobs()}
        lines = {key: out.metrics_file.read_text().splitlines() if out.metrics_file.is_file() else []
                 for key, out in outs.items()}
        if any(out.last_checkpoint.is_file() and not out.is_done() and len(lines[key]) < epochs // 2
               for key, out in outs.items()):
            return {key: found[0] for key, found in lines.items() if found}
        return None

    first_lines = wait_until(training_with_a_checkpoint, 300, "a job to write its first checkpoint")
    task = SlurmFiles(tree).submitted_ids()[next(iter(first_lines))][0]
    subprocess.run(["scancel", "--signal=USR2", task], check=True)  # what --signal=USR2@90 sends to the steps
    final = wait_until(lambda: all_final(experiment, tmp_path / "out"), 300, "the requeued task")
    assert set(final.values()) == {"done"}
    statuses = {key: read_status(tree.job(key)) for key in final}
    resumed = [key for key, s in statuses.items() if s.slurm["restart_count"] >= 1 and s.attempts >= 2]
    assert resumed, {key: (s.slurm, s.attempts) for key, s in statuses.items()}
    interrupted_in_training = [key for key in resumed if key in first_lines]
    assert interrupted_in_training, (resumed, first_lines)
    for key in interrupted_in_training:  # an epoch trained again would rewrite its line (its seconds differ)
        assert tree.job(key).variant(variant).metrics_file.read_text().splitlines()[0] == first_lines[key]
    # the reference: the same jobs, uninterrupted, here
    reference = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "reference", "--no-report")
    assert reference.returncode == 0
    assert results_of(tree.path) == results_of(tmp_path / "reference" / "long")


def test_cancelled_job_shows_cancelled_and_rerun_failed_completes_it(write_experiment, tmp_path, profile):
    slow = {**TINY, "data": {"name": "digits"}, "grid": {"seed": [0, 1]},
            "train": {**TINY["train"], "epochs": 30, "batch_size": 16, "early_stopping": {"patience": 100}}}
    experiment = write_experiment(slow)
    submit(tmp_path, experiment, profile)
    tree = ExperimentTree(tmp_path / "out" / "tiny")
    key, arrays = sorted(SlurmFiles(tree).submitted_ids().items())[0]
    wait_until(lambda: states(experiment, tmp_path / "out").get(key) == "running", 120, "the job to run")
    subprocess.run(["scancel", *arrays], check=True)
    wait_until(lambda: states(experiment, tmp_path / "out").get(key) == "cancelled", 60, "sacct to say CANCELLED")
    status = launch(tmp_path, "status", str(tree.path))
    assert f"{key}  CANCELLED" in status.stdout and "--rerun-failed" in status.stdout

    plain = launch(tmp_path, "submit", str(experiment), "--profile", str(profile), "--experiments-dir", "out")
    assert plain.returncode == 1, plain.stdout + plain.stderr  # the grid stays incomplete: said, not hidden
    assert f"CANCELLED {key}" in plain.stdout and "resubmit them with: bash run/launch_experiment.sh submit " \
        f"{experiment} --profile {profile} --experiments-dir out --rerun-failed" in plain.stdout, plain.stdout
    rerun = submit(tmp_path, experiment, profile, "--rerun-failed")
    assert "to submit" in rerun.stdout
    final = wait_until(lambda: all_final(experiment, tmp_path / "out"), 300, "the resubmitted job")
    assert set(final.values()) == {"done"}


def test_a_job_that_raises_is_failed_with_its_error_line(write_experiment, tmp_path, profile):
    experiment = write_experiment({**TINY, "grid": {}})
    key = load_experiment(experiment).jobs()[0].key
    blocked = tmp_path / "out" / "tiny" / "jobs" / key
    blocked.mkdir(parents=True)
    (blocked / "moe").write_text("a file where the variant's folder belongs")
    submit(tmp_path, experiment, profile)
    final = wait_until(lambda: all_final(experiment, tmp_path / "out"), 180, "the failing job")
    assert final == {key: "failed"}
    # SLURM itself records the task as failed, not completed
    def slurm_word():
        array = SlurmFiles(ExperimentTree(tmp_path / "out" / "tiny")).submitted_ids()[key][0]
        records = list(queue.query([array], whole_arrays=True).values())
        return records[0].state if records and records[0].state not in ("RUNNING", "COMPLETING", "PENDING") else None

    assert wait_until(slurm_word, 60, "sacct to record the end of the task") == "FAILED"
    status = launch(tmp_path, "status", str(tmp_path / "out" / "tiny"))
    assert f"FAILED {key}: " in status.stdout and "Error" in status.stdout
    assert "_0_log.err" in status.stdout


def test_the_plain_sbatch_script_runs_the_same_job_entry(write_experiment, tmp_path):
    from conftest import REPO

    experiment = write_experiment({**TINY, "grid": {"seed": [0, 1]}})
    env = {**os.environ, "MOELAB_PYTHON": sys.executable}
    done = subprocess.run(["sbatch", "--parsable", "--array=0-1", "--mem=1G", "--cpus-per-task=1",
                           f"--output={tmp_path}/plain-%A_%a.out", "slurm/run_training.slurm", str(experiment),
                           "--experiments-dir", str(tmp_path / "plain")],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    final = wait_until(lambda: all_final(experiment, tmp_path / "plain"), 180, "the plain sbatch array")
    assert set(final.values()) == {"done"}, [p.read_text() for p in tmp_path.glob("plain-*.out")]
    local = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "local", "--workers", "2", "--no-report")
    assert local.returncode == 0
    assert results_of(tmp_path / "plain" / "tiny") == results_of(tmp_path / "local" / "tiny")
