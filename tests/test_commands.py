"""The commands around a launch: progress lines while jobs train, list, cancel, clean."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
from datetime import datetime, timedelta, timezone

import pytest

from moelab.launch import progress
from moelab.launch.progress import ProgressLines
from moelab.results import ExperimentTree
from moelab.results.status import JobState, JobStatus, VariantStatus
from conftest import make_job


def running_job(folder, epochs_done: int):
    """A job of TINY (2 epochs) whose variant moe is training, `epochs_done` epochs in, started 10 minutes ago."""
    job = make_job(folder / "experiment")
    started = (datetime.now(timezone.utc) - timedelta(seconds=600)).isoformat(timespec="seconds")
    JobStatus(job.key, JobState.RUNNING, variants={"mlp": VariantStatus(JobState.DONE),
                                                   "moe": VariantStatus(JobState.RUNNING, started_at=started)}).write(job)
    metrics = job.variant("moe").metrics_file
    metrics.parent.mkdir(parents=True)
    metrics.write_text("".join(json.dumps({"epoch": e, "train_loss": 0.5, "val_loss": 0.4, "val_acc": 0.9 + e / 100}) + "\n"
                               for e in range(1, epochs_done + 1)))
    return ExperimentTree(folder / "experiment"), job


def test_progress_off_a_terminal_is_a_plain_line_per_new_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "READ_EVERY_S", 0.0)
    tree, job = running_job(tmp_path, epochs_done=1)
    out = io.StringIO()
    lines = ProgressLines(tree, out)
    lines.update([job.key])
    lines.update([job.key])  # nothing new: no second line
    (line,) = out.getvalue().splitlines()
    assert re.fullmatch(f"{job.key} moe epoch 1/2 val_acc=0.9100 ETA 0:10:0[0-9]", line)  # one epoch took 10 minutes
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_progress_on_a_terminal_is_a_bar_per_running_job(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "READ_EVERY_S", 0.0)
    tree, job = running_job(tmp_path, epochs_done=1)
    controller, terminal = pty.openpty()
    with os.fdopen(terminal, "w") as stream:
        lines = ProgressLines(tree, stream)
        assert lines.terminal
        lines.update([job.key])
        stream.flush()
        shown = ""
        while "ETA" not in shown and select.select([controller], [], [], 5)[0]:  # the bar may come in pieces
            shown += os.read(controller, 4096).decode()
        lines.close()
    os.close(controller)
    assert "\r" in shown and f"{job.key} moe" in shown and "1/2" in shown and "val_acc=0.9100" in shown and "ETA" in shown
    assert "epoch 1/2" not in shown  # the bar, not the plain line


def test_no_progress_before_the_first_epoch_or_for_an_unreadable_job(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "READ_EVERY_S", 0.0)
    tree, job = running_job(tmp_path, epochs_done=0)
    assert progress.read_progress(tree, job.key) is None
    job.status_file.write_text("{garbage")
    out = io.StringIO()
    ProgressLines(tree, out).update([job.key, "no-such-job"])
    assert out.getvalue() == ""


# list and clean, on a hand-made tree: two failed jobs, two never run

def hand_made_experiment(root):
    import yaml
    from moelab.config import load_experiment
    from moelab.results.io import write_json
    from conftest import TINY

    source = root / "configs" / "tiny.yaml"
    source.parent.mkdir(parents=True)
    source.write_text(yaml.safe_dump({**TINY, "grid": {"seed": [0, 1, 2, 3]}}))
    experiment = load_experiment(source)
    tree = ExperimentTree(root / "experiments" / "tiny")
    tree.path.mkdir(parents=True)
    tree.experiment_file.write_text(source.read_text())
    keys = [job.key for job in experiment.jobs()]
    for job in experiment.jobs():
        write_json(tree.job(job.key).config_file, experiment.job_spec(job))
    for key in keys[:2]:
        JobStatus(key, JobState.FAILED, variants={"moe": VariantStatus(JobState.FAILED, error="boom")}).write(tree.job(key))
    return tree, keys


def run_cli(*argv):
    from moelab.launch.cli import main
    return main(list(argv))


def test_list_shows_each_experiment_with_the_counts_status_shows(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hand_made_experiment(tmp_path)
    assert run_cli("status", "experiments/tiny") == 0
    (status_totals,) = [line for line in capsys.readouterr().out.splitlines() if line.endswith("(4 jobs)")]
    assert run_cli("list") == 0
    assert capsys.readouterr().out.splitlines() == [f"tiny  {status_totals}"]
    assert status_totals == "2 FAILED, 2 NOT_STARTED (4 jobs)"


def test_clean_failed_removes_only_the_failed_jobs_and_never_configs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tree, keys = hand_made_experiment(tmp_path)
    assert run_cli("clean", "experiments/tiny", "--failed", "--yes") == 0
    assert "deleted 2 failed job folder(s)" in capsys.readouterr().out
    assert [tree.job(k).path.exists() for k in keys] == [False, False, True, True]
    assert (tmp_path / "configs" / "tiny.yaml").is_file() and tree.experiment_file.is_file()
    assert run_cli("clean", "experiments/tiny", "--all", "--yes") == 0
    assert not tree.path.exists() and (tmp_path / "configs" / "tiny.yaml").is_file()


def test_clean_asks_first_and_a_no_deletes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tree, keys = hand_made_experiment(tmp_path)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert run_cli("clean", "experiments/tiny", "--all") == 1
    assert tree.job(keys[0]).path.exists() and "nothing was deleted" in capsys.readouterr().out


@pytest.mark.parametrize("argv, named", [
    (["clean", "configs", "--all", "--yes"], "configs/ folder"),
    (["clean", "experiments", "--all", "--yes"], "no experiment.yaml"),
    (["clean", "experiments/nothing", "--failed", "--yes"], "is not a folder"),
    (["clean", "experiments/tiny", "--all"], "pass --yes"),
    (["list", "--experiments-dir", "nowhere"], "nowhere is not a folder"),
])
def test_bad_input_exits_2_naming_the_problem_and_deletes_nothing(argv, named, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tree, keys = hand_made_experiment(tmp_path)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert run_cli(*argv) == 2
    assert named in capsys.readouterr().err
    assert all(tree.job(k).path.exists() for k in keys) and (tmp_path / "configs" / "tiny.yaml").is_file()


def test_clean_without_failed_or_all_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        run_cli("clean", str(tmp_path))
    assert exited.value.code == 2 and "--failed" in capsys.readouterr().err


def test_cancel_names_a_local_launch_it_cannot_stop_and_rejects_a_folder_that_is_not_an_experiment(tmp_path, capsys,
                                                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    tree, keys = hand_made_experiment(tmp_path)
    JobStatus(keys[2], JobState.RUNNING, host="node7", pid=4242).write(tree.job(keys[2]))
    assert run_cli("cancel", "experiments/tiny") == 0
    assert f"cannot cancel job {keys[2]}: it runs in a local launch (host node7, worker pid 4242)" in capsys.readouterr().out
    assert run_cli("cancel", "configs") == 2
    assert "configs is not an experiment folder" in capsys.readouterr().err


@pytest.mark.slurm
def test_cancel_ends_the_arrays_on_the_cluster_and_status_shows_cancelled(write_experiment, tmp_path):
    from test_slurm import cluster_answers, states, submit
    problem = cluster_answers()
    if problem:
        pytest.skip(f"no SLURM cluster answers ({problem})")
    from conftest import TINY, launch, wait_until
    profile = tmp_path / "profile.yaml"
    profile.write_text("cpus_per_task: 1\nmem_gb: 1\ntimeout_min: 10\narray_parallelism: 2\n")
    slow = {**TINY, "data": {"name": "digits"}, "grid": {"seed": [0, 1]},
            "train": {**TINY["train"], "epochs": 30, "batch_size": 16, "early_stopping": {"patience": 100}}}
    experiment = write_experiment(slow)
    submit(tmp_path, experiment, profile)
    out = tmp_path / "out"
    wait_until(lambda: "running" in states(experiment, out).values(), 120, "a job to run")
    cancelled = launch(tmp_path, "cancel", "out/tiny")
    assert cancelled.returncode == 0 and "cancelled SLURM array(s)" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    wait_until(lambda: set(states(experiment, out).values()) == {"cancelled"}, 120, "sacct to say CANCELLED")
    status = launch(tmp_path, "status", "out/tiny")
    assert status.stdout.count("CANCELLED") >= 2
    again = launch(tmp_path, "cancel", "out/tiny")
    assert again.returncode == 0 and "no SLURM array of out/tiny is queued or running" in again.stdout
