"""Cooperative stopping: a stop requested at any moment ends a variant as interrupted, with every
write completed, and it resumes to the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import REPO, TINY, make_job, wait_until
from moelab.results.io import read_json, read_jsonl

# loaded by every Python process started with its folder on PYTHONPATH: holds the training at the
# point MOELAB_TEST_PAUSE names (inside the checkpoint write of epoch 2, or inside the callback after
# it) until the test has sent its signal, so the signal lands exactly there
SITECUSTOMIZE = """
import os, pathlib, time

if os.environ.get("MOELAB_TEST_PAUSE"):
    import torch
    import moelab.train.job as job

    where, folder = os.environ["MOELAB_TEST_PAUSE"], pathlib.Path(os.environ["MOELAB_TEST_PAUSE_DIR"])

    def pause():
        if not (folder / "go").exists():
            (folder / "paused").touch()
            while not (folder / "go").exists():  # the test creates it right after its signal
                time.sleep(0.01)

    real_save, real_call = torch.save, job.LiveCurves.__call__

    def save(obj, f, *args, **kwargs):
        if where == "checkpoint" and isinstance(obj, dict) and obj.get("next_epoch") == 2:
            pause()
        return real_save(obj, f, *args, **kwargs)

    def call(self, history):
        real_call(self, history)
        if where == "callback" and len(history) == 2:
            pause()

    torch.save, job.LiveCurves.__call__ = save, call
"""


def train(job, env=None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "run" / "train_models.py"), str(job.path)],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def outputs_of(job) -> dict:
    """Each variant's metrics and results, without the timings."""
    found = {}
    for name in ("mlp", "moe", "moe_topk", "moe_hard"):
        variant = job.variant(name)
        found[name] = ([{k: v for k, v in row.items() if k != "seconds"} for row in read_jsonl(variant.metrics_file)],
                       {k: v for k, v in read_json(variant.results_file).items()
                        if not any(w in k for w in ("seconds", "latency", "throughput"))})
    return found


@pytest.mark.slow
@pytest.mark.parametrize("where", ["checkpoint", "callback"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_inside_a_write_or_a_callback_interrupts_and_resumes_identically(tmp_path, where, signum):
    reference = make_job(tmp_path / "reference", ["train.epochs=4"])
    assert train(reference).wait(timeout=300) == 0
    job = make_job(tmp_path / "stopped", ["train.epochs=4"])
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    env = {"PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]),
           "MOELAB_TEST_PAUSE": where, "MOELAB_TEST_PAUSE_DIR": str(hooks)}
    process = train(job, env)
    try:
        wait_until(lambda: (hooks / "paused").exists() or process.poll() is not None, 300, "the paused write")
        os.kill(process.pid, signum)
        (hooks / "go").touch()
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output
    assert "Traceback" not in output and "interrupted" in output, output
    status = read_json(job.status_file)
    assert status["state"] == "interrupted" and status["variants"]["mlp"]["state"] == "interrupted"
    # the paused epoch completed; the next one may have too: checkpoints are written while training goes on
    epochs = [r["epoch"] for r in read_jsonl(job.variant("mlp").metrics_file)]
    assert epochs[:2] == [0, 1] and epochs == list(range(len(epochs))), epochs
    checkpoint = torch.load(job.variant("mlp").last_checkpoint, weights_only=False)
    assert checkpoint["next_epoch"] == len(epochs) and len(checkpoint["history"]) == len(epochs)  # every write whole
    assert not list(job.path.rglob("*.tmp")) and not list(job.path.rglob(".*.tmp"))

    resumed = train(job)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert read_json(job.status_file)["state"] == "done"
    assert outputs_of(job) == outputs_of(reference)


@pytest.mark.slow
def test_a_launch_started_with_ctrl_c_ignored_stops_on_ctrl_c(write_experiment, tmp_path):
    """`nohup ... &` starts the launcher with SIGINT ignored; it must still stop on it."""
    experiment = write_experiment({**TINY, "data": {"name": "digits", "max_train_samples": 100},
                                   "train": {**TINY["train"], "epochs": 200, "early_stopping": {"patience": 200}},
                                   "grid": {"seed": [0]}})
    args = [sys.executable, "-m", "moelab.launch", "run_here", str(experiment), "--experiments-dir", "out", "--no-report"]
    process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    root = tmp_path / "out" / "tiny"

    def some_epochs_done() -> bool:
        return any(len(p.read_text().splitlines()) >= 2 for p in root.glob("jobs/*/*/metrics.jsonl"))

    try:
        wait_until(some_epochs_done, 300, "the first epochs")
        os.kill(process.pid, signal.SIGINT)  # the launcher alone
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output
    assert "Traceback" not in output and "run the same command again to resume" in output, output
    assert json.loads(next(root.glob("jobs/*/status.json")).read_text())["state"] == "interrupted"
