"""Typed records of the experiments tree: what their one writer writes, every reader reads."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from conftest import TINY
from moelab.config import load_experiment
from moelab.launch.plan import make_plan, write_plan
from moelab.results.errors import DamagedRecord
from moelab.results.records import LaunchRecord, last_launch, read_launches
from moelab.results.tree import ExperimentTree
from moelab.serve.catalog import Catalog
from moelab.serve.dashboard import Dashboard


def git(cwd, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_the_dashboard_shows_the_launchs_git_commit_and_dirty_flag(tmp_path):
    source = tmp_path / "checkout"
    source.mkdir()
    path = source / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "grid": {}}))
    git(source, "init", "-q")
    git(source, "add", "tiny.yaml")
    git(source, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "experiment")
    path.write_text(path.read_text() + "# an uncommitted change\n")
    experiment = load_experiment(path)
    plan = make_plan(experiment, tmp_path / "experiments")
    write_plan(plan, "run_here", [str(path)])

    shown = Dashboard(Catalog(root=tmp_path / "experiments"), ask_queues=False).experiment_summary(plan.tree)
    assert shown["last_launch"]["git_commit"] == git(source, "rev-parse", "HEAD")
    assert shown["last_launch"]["git_dirty"] is True
    assert last_launch(plan.tree).jobs_run == 1


def test_a_launch_record_without_its_time_is_damaged_and_named(tmp_path):
    tree = ExperimentTree(tmp_path / "e")
    tree.path.mkdir()
    tree.launches_file.write_text('{"mode": "run_here"}\n')
    with pytest.raises(DamagedRecord) as caught:
        read_launches(tree)
    assert caught.value.path == tree.launches_file and "time" in caught.value.problem


def test_a_launch_record_round_trips_and_ignores_keys_of_later_versions():
    record = LaunchRecord(time="t", mode="submit", experiment_file="e.yaml", git_commit="abc", git_dirty=False)
    assert LaunchRecord.from_dict({**record.to_dict(), "added_later": 1}) == record
