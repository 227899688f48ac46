"""The commands around a launch: progress lines while jobs train, list, cancel, clean."""

from __future__ import annotations

import io
import json
import os
import pty
import re
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
        shown = os.read(controller, 4096).decode()
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
