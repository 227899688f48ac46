"""Shared helpers: tiny experiment files and running the launcher as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from moelab.config import load_experiment
from moelab.results.io import write_json
from moelab.results.tree import JobTree

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "data": {"name": "digits", "max_train_samples": 300},
    "train": {"epochs": 4, "batch_size": 64, "lr": 0.003, "early_stopping": {"patience": 10}},
    "variants": [
        {"name": "mlp", "model": "mlp", "hidden": 32},
        {"name": "moe", "model": "moe", "hidden": 16},
        {"name": "moe_topk", "model": "moe_topk", "hidden": 16, "k": 2},
        {"name": "moe_hard", "model": "moe_hard", "hidden": 16},
    ],
    "grid": {"seed": [0, 1], "variants.*.num_experts": [2, 4]},
}


@pytest.fixture
def write_experiment(tmp_path):
    def write(doc: dict | str = TINY, name: str = "tiny.yaml") -> Path:
        path = tmp_path / "configs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


def launch(cwd: Path, *args: str, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """`launch_experiment.sh` minus the environment bootstrap: the same entry point, in `cwd`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "moelab.launch", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, **popen)


def wait_until(predicate, timeout: float, what: str):
    """The predicate's first truthy value, polled until `timeout` seconds (generous: a deadline, not a guess)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def make_job(folder: Path, overrides=()) -> JobTree:
    """One job of TINY (no grid, 2 epochs) with its config.json written, as a launch writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "e.yaml"
    path.write_text(yaml.safe_dump({**TINY, "grid": {}}))
    experiment = load_experiment(path, ["train.epochs=2", *overrides])
    job = experiment.jobs()[0]
    tree = JobTree(folder / "jobs" / job.key)
    write_json(tree.config_file, experiment.job_spec(job))
    return tree


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory):
    from moelab.train.job import run_job

    job = make_job(tmp_path_factory.mktemp("tree") / "experiment")
    assert run_job(job.path).state == "done"
    return job


def copy_job(job: JobTree, folder: Path) -> JobTree:
    """A copy of a finished job inside folder/experiment/jobs/, for tests that damage or extend it."""
    import shutil

    target = folder / "experiment" / "jobs" / job.key
    shutil.copytree(job.path, target)
    return JobTree(target)
