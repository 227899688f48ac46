"""run_here end to end, as a user runs it: the tree, skipping, --force, --rerun-failed, Ctrl-C, dead workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY, launch
from moelab.config import load_experiment
from moelab.results.io import read_json, read_jsonl

TIMING_WORDS = ("seconds", "latency", "throughput")


def results_of(experiment_dir) -> dict:
    found = {}
    for path in sorted(experiment_dir.glob("jobs/*/*/results.json")):
        found[f"{path.parent.parent.name}/{path.parent.name}"] = {k: v for k, v in read_json(path).items() if not any(word in k for word in TIMING_WORDS)}
    return found


@pytest.mark.slow
def test_run_here_writes_the_tree_and_the_tables(write_experiment, tmp_path):
    experiment = write_experiment()
    done = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out")
    assert done.returncode == 0, done.stdout + done.stderr
    root = tmp_path / "out" / "tiny"
    jobs = sorted((root / "jobs").iterdir())
    assert len(jobs) == 4
    for job in jobs:
        status = read_json(job / "status.json")
        assert status["state"] == "done" and status["attempts"] == 1 and status["host"]
        assert read_json(job / "config.json")["key"] == job.name
        for variant in ("mlp", "moe", "moe_topk", "moe_hard"):
            assert (job / variant / "results.json").is_file() and (job / variant / "weights" / "best.pt").is_file()
            assert len(read_jsonl(job / variant / "metrics.jsonl")) == 4
    launches = read_jsonl(root / "launches.jsonl")
    assert launches[0]["mode"] == "run_here" and launches[0]["jobs_run"] == 4 and "git_commit" in launches[0]
    assert (root / "experiment.yaml").is_file()
    assert not list(root.rglob("*.tmp"))

    summary = pd.read_csv(root / "summary" / "summary.csv")
    assert set(summary["variant"]) == {"mlp", "moe", "moe_topk", "moe_hard"}
    assert set(summary["n"]) == {2} and len(summary) == 8  # 4 variants x 2 expert counts, 2 seeds each
    assert summary["test_acc_mean"].between(0.3, 1.0).all()
    runs = pd.read_csv(root / "summary" / "runs.csv")
    assert len(runs) == 16 and {"seed", "variants.*.num_experts", "train.lr", "params.hidden", "test_acc"} <= set(runs.columns)
    assert runs.loc[runs["variant"] == "moe_hard", "test_acc@soft"].notna().all()
    for plot in ("learning_curves.png", "test_acc.png", "params_vs_metric.png"):
        assert (root / "summary" / plot).stat().st_size > 10_000
    assert "summary.csv" in done.stdout and "learning_curves.png" in done.stdout

    # launching again skips every finished job
    again = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out")
    assert again.returncode == 0 and "0 to run" in again.stdout and "nothing to run" in again.stdout
    assert read_jsonl(root / "launches.jsonl")[-1]["jobs_skipped"] == {"done": 4}

    # the same experiment run elsewhere gives identical metrics (determinism)
    twin = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "twin", "--no-report")
    assert twin.returncode == 0
    assert results_of(root) == results_of(tmp_path / "twin" / "tiny")

    # --force reruns everything from scratch
    forced = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out", "--force", "--no-report")
    assert forced.returncode == 0 and "4 to run" in forced.stdout
    assert all(read_json(job / "status.json")["attempts"] == 1 for job in jobs)  # fresh status


@pytest.mark.slow
def test_failed_jobs_are_reported_skipped_and_rerun_on_request(write_experiment, tmp_path):
    experiment = write_experiment({**TINY, "train": {**TINY["train"], "epochs": 1}, "grid": {"seed": [0, 1]}})
    key = load_experiment(experiment).jobs()[0].key
    blocked = tmp_path / "out" / "tiny" / "jobs" / key
    blocked.mkdir(parents=True)
    (blocked / "moe").write_text("a file where the variant's folder belongs makes it fail for real")

    failed = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out")
    assert failed.returncode == 1
    assert "1 done" in failed.stdout and "1 failed" in failed.stdout and f"FAILED {key} moe:" in failed.stdout
    assert f"out/tiny/jobs/{key}/status.json" in failed.stdout
    status = read_json(blocked / "status.json")
    assert status["state"] == "failed" and status["variants"]["mlp"]["state"] == "done"
    assert status["variants"]["moe"]["state"] == "failed" and "Traceback" in status["variants"]["moe"]["traceback"]
    summary_md = (tmp_path / "out" / "tiny" / "summary" / "summary.md").read_text()
    assert f"job {key} variant moe: failed" in summary_md

    skipped = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out", "--no-report")
    assert skipped.returncode == 1 and "0 to run" in skipped.stdout and "--rerun-failed" in skipped.stdout

    (blocked / "moe").unlink()
    rerun = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out", "--rerun-failed")
    assert rerun.returncode == 0, rerun.stdout
    assert "1 to run" in rerun.stdout
    status = read_json(blocked / "status.json")
    assert status["state"] == "done" and status["attempts"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 3])
def test_force_trains_each_job_once_whatever_the_number_of_workers(write_experiment, tmp_path, workers):
    epochs = 2
    experiment = write_experiment({**TINY, "variants": TINY["variants"][:2], "train": {**TINY["train"], "epochs": epochs}})
    first = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out", "--no-report")
    assert first.returncode == 0, first.stdout + first.stderr
    forced = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out", "--no-report", "--force",
                    "--workers", str(workers))
    assert forced.returncode == 0 and "4 to run" in forced.stdout, forced.stdout + forced.stderr
    keys = [job.key for job in load_experiment(experiment).jobs()]
    # one line per training: a job trained twice is printed twice
    assert {key: len(re.findall(rf"\] {key} done ", forced.stdout)) for key in keys} == {key: 1 for key in keys}, forced.stdout
    root = tmp_path / "out" / "tiny"
    statuses = [read_json(root / "jobs" / key / "status.json") for key in keys]
    assert all(s["state"] == "done" and s["attempts"] == 1 for s in statuses)  # fresh status
    assert len({s["launch_id"] for s in statuses}) == 1
    assert all(len(read_jsonl(p)) == epochs for p in root.glob("jobs/*/*/metrics.jsonl"))


def wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def running_variant_with_epochs(root) -> bool:
    for status_file in root.glob("jobs/*/status.json"):
        try:
            status = read_json(status_file)
        except (OSError, json.JSONDecodeError):
            continue
        for name, variant in status["variants"].items():
            metrics = status_file.parent / name / "metrics.jsonl"
            if variant["state"] == "running" and metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                return True
    return False


@pytest.mark.slow
def test_ctrl_c_stops_promptly_leaves_no_torn_file_and_the_next_launch_resumes(write_experiment, tmp_path):
    slow = {**TINY, "data": {"name": "digits", "max_train_samples": 100},
            "train": {**TINY["train"], "epochs": 200, "early_stopping": {"patience": 200}}, "grid": {"seed": [0]}}
    experiment = write_experiment(slow)
    args = [sys.executable, "-m", "moelab.launch", "run_here", str(experiment), "--experiments-dir", "out"]
    process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    root = tmp_path / "out" / "tiny"
    try:
        assert wait_for(lambda: running_variant_with_epochs(root))
        epochs_before = {p: len(p.read_text().splitlines()) for p in root.glob("jobs/*/*/metrics.jsonl")}
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output
    # promptly: each variant within the epoch in progress, not at the end of its 200 epochs
    epochs_after = {p: len(p.read_text().splitlines()) for p in root.glob("jobs/*/*/metrics.jsonl")}
    assert all(n <= epochs_before.get(p, 0) + 1 for p, n in epochs_after.items()), (epochs_before, epochs_after)
    assert "run the same command again to resume" in output
    assert not list(root.rglob("*.tmp")) and not list(root.rglob(".*.tmp"))
    status = read_json(next(root.glob("jobs/*/status.json")))
    assert status["state"] == "interrupted"
    # Ctrl-C lands inside a variant (then it is marked interrupted) or between two of them
    finished_before = {n: (root / "jobs" / status["key"] / n / "results.json").read_bytes()
                       for n, v in status["variants"].items() if v["state"] == "done"}
    assert all(v["state"] in ("done", "interrupted", "pending") for v in status["variants"].values())
    assert len(finished_before) < 4

    resumed = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out", "--no-report")
    assert resumed.returncode == 0, resumed.stdout
    status = read_json(next(root.glob("jobs/*/status.json")))
    assert status["state"] == "done" and status["attempts"] == 2
    for name in status["variants"]:
        variant = root / "jobs" / status["key"] / name
        assert [r["epoch"] for r in read_jsonl(variant / "metrics.jsonl")] == list(range(200))
        if name in finished_before:  # finished variants are not trained again
            assert (variant / "results.json").read_bytes() == finished_before[name]


def slow_experiment(write_experiment, epochs: int, seeds: list[int]):
    return write_experiment({**TINY, "data": {"name": "digits", "max_train_samples": 100},
                             "train": {**TINY["train"], "epochs": epochs, "early_stopping": {"patience": epochs}},
                             "grid": {"seed": seeds}})


def start_launch(experiment, cwd, *extra) -> subprocess.Popen:
    args = [sys.executable, "-m", "moelab.launch", "run_here", str(experiment), "--experiments-dir", "out", "--no-report",
            *extra]
    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def running_job(root):
    for status_file in root.glob("jobs/*/status.json"):
        try:
            status = read_json(status_file)
        except (OSError, json.JSONDecodeError):
            continue
        if status["state"] == "running":
            return status
    return None


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_taken_over_and_the_job_completes_once(write_experiment, tmp_path):
    experiment = slow_experiment(write_experiment, 150, [0, 1])
    process = start_launch(experiment, tmp_path)
    root = tmp_path / "out" / "tiny"
    try:
        assert wait_for(lambda: running_variant_with_epochs(root))
        killed = running_job(root)
        os.kill(killed["pid"], signal.SIGKILL)
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output
    assert f"worker process died with exit code -9 (killed: out of memory?) while running {killed['key']}" in output
    assert "2 done" in output and "0 failed" in output
    status = read_json(root / "jobs" / killed["key"] / "status.json")
    assert status["state"] == "done" and status["attempts"] == 2  # taken over once, from its checkpoint
    for name in status["variants"]:
        assert [r["epoch"] for r in read_jsonl(root / "jobs" / killed["key"] / name / "metrics.jsonl")] == list(range(150))


@pytest.mark.slow
def test_sigterm_and_sighup_stop_a_launch_like_ctrl_c(write_experiment, tmp_path):
    experiment = slow_experiment(write_experiment, 200, [0])
    root = tmp_path / "out" / "tiny"
    for signum in (signal.SIGTERM, signal.SIGHUP):
        process = start_launch(experiment, tmp_path)
        try:
            assert wait_for(lambda: running_variant_with_epochs(root))
            os.kill(process.pid, signum)  # the launcher alone, as `kill` or a closing terminal does
            output, _ = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        assert process.returncode == 130, output
        assert "0 done" in output and "interrupted: run the same command again to resume" in output
        assert read_json(next(root.glob("jobs/*/status.json")))["state"] == "interrupted"
        assert wait_for(lambda: not pids_in_group(process.pid))  # no worker left behind


def pids_in_group(group: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_workers_stop_when_their_launcher_is_killed(write_experiment, tmp_path):
    experiment = slow_experiment(write_experiment, 200, [0])
    root = tmp_path / "out" / "tiny"
    process = start_launch(experiment, tmp_path)
    try:
        assert wait_for(lambda: running_variant_with_epochs(root))
        os.kill(process.pid, signal.SIGKILL)  # no chance to clean up: the OOM killer, a lost SSH session
        process.wait(timeout=30)
        assert wait_for(lambda: not pids_in_group(process.pid)), "orphaned workers kept running"
    finally:
        for pid in pids_in_group(process.pid):
            os.kill(pid, signal.SIGKILL)
    status = read_json(next(root.glob("jobs/*/status.json")))
    assert status["state"] == "interrupted" and not list(root.rglob("*.tmp"))
    resumed = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out", "--no-report")
    assert resumed.returncode == 0 and "1 to run" in resumed.stdout, resumed.stdout


@pytest.mark.slow
def test_two_launches_at_once_train_every_job_once_and_both_succeed(write_experiment, tmp_path):
    experiment = slow_experiment(write_experiment, 30, [0, 1, 2, 3])
    # single-thread workers: two launches of one 2-thread worker each would oversubscribe the cores
    first = start_launch(experiment, tmp_path, "--workers", "2")
    second = start_launch(experiment, tmp_path, "--workers", "2")
    outputs = [p.communicate(timeout=900)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    root = tmp_path / "out" / "tiny"
    statuses = [read_json(p) for p in root.glob("jobs/*/status.json")]
    assert len(statuses) == 4 and all(s["state"] == "done" and s["attempts"] == 1 for s in statuses)
    assert "FAILED" not in "".join(outputs)
    assert any("ran elsewhere" in output for output in outputs)


def test_cpu_workers_never_hold_more_threads_than_cores():
    from moelab.launch.pool import worker_slots

    assert [s.threads for s in worker_slots(6, None, 1, [], 2)] == [1, 1]  # single-thread workers for small jobs
    assert [s.threads for s in worker_slots(1, None, 1, [], 8)] == [8]  # one job: all cores
    assert [s.threads for s in worker_slots(3, None, 1, [], 8)] == [2, 2, 2]
    assert [s.threads for s in worker_slots(10, 2, 1, [], 8)] == [4, 4]
    gpu = worker_slots(10, None, 4, [0, 1], 16)
    assert [s.gpus for s in gpu] == [(0,), (1,)] * 4 and {s.threads for s in gpu} == {2}
