"""The launcher's command line: --dry-run of run_here, status's rerun hint, --help."""

from __future__ import annotations

import shlex

from conftest import TINY, launch
from moelab.config import load_experiment


def test_run_here_dry_run_prints_the_jobs_and_writes_nothing(write_experiment, tmp_path):
    experiment = write_experiment()
    done = launch(tmp_path, "run_here", str(experiment), "grid.seed=[0,1,2]", "--experiments-dir", "out", "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    keys = [job.key for job in load_experiment(experiment, ["grid.seed=[0,1,2]"]).jobs()]
    assert len(keys) == 6 and all(key in done.stdout for key in keys)
    assert "dry run: nothing is started or written" in done.stdout
    assert not (tmp_path / "out").exists()


def test_the_rerun_hint_is_the_last_launch_with_its_overrides(write_experiment, tmp_path):
    experiment = write_experiment({**TINY, "grid": {}})
    key = load_experiment(experiment, ["train.epochs=1"]).jobs()[0].key
    blocked = tmp_path / "out" / "tiny" / "jobs" / key
    blocked.mkdir(parents=True)
    (blocked / "moe").write_text("a file where the variant's folder belongs")
    ran = launch(tmp_path, "run_here", str(experiment), "train.epochs=1", "--experiments-dir", "out", "--no-report")
    assert ran.returncode == 1, ran.stdout + ran.stderr
    status = launch(tmp_path, "status", "out/tiny")
    assert status.returncode == 0, status.stderr
    hint = status.stdout.split("rerun the failed jobs with: ")[1].strip()
    assert shlex.split(hint) == ["bash", "run/launch_experiment.sh", "run_here", str(experiment), "train.epochs=1",
                                 "--experiments-dir", "out", "--no-report", "--rerun-failed"]


def test_help_says_the_workers_default_and_lists_serve(tmp_path):
    done = launch(tmp_path, "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "(default: the experiment's local.workers, else local.jobs_per_gpu per GPU, else one" in text
    assert "launch_experiment.sh serve" in text
