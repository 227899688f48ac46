"""The experiments tree: atomic writes, and loading partial or damaged trees without crashing."""

from __future__ import annotations

import pytest

from moelab.results import collect, load_runs
from moelab.results.io import atomic_write, read_json, write_json
from conftest import copy_job, make_job
from moelab.results.status import JobState, job_state
from moelab.train.job import run_job


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"a": 1})

    def explode(f):
        f.write('{"a": ')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, explode)
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left behind


def test_loads_one_row_per_job_and_variant(finished_job, tmp_path):
    job = copy_job(finished_job, tmp_path)
    runs = load_runs(job.path.parent.parent)
    assert list(runs["variant"]) == ["mlp", "moe", "moe_topk", "moe_hard"]
    assert (runs["state"] == JobState.DONE).all() and runs["test_acc"].notna().all()


def test_corrupt_and_partial_files_are_reported_not_raised(finished_job, tmp_path):
    job = copy_job(finished_job, tmp_path)
    job.variant("moe").results_file.write_text('{"test_acc": 0.9')  # half-written
    with open(job.variant("mlp").metrics_file, "a") as f:
        f.write('{"epoch": 99, "train_lo')  # torn last line
    job.status_file.write_text("garbage")
    broken = tmp_path / "experiment" / "jobs" / "brokenjob000"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.warns(UserWarning):
        found = collect(tmp_path / "experiment")
    text = "\n".join(found.problems)
    assert "moe/results.json: unreadable" in text and "mlp/metrics.jsonl: skipped unreadable line(s) [3]" in text
    assert "status.json: unreadable" in text and "brokenjob000/config.json: unreadable" in text
    states = dict(zip(found.runs["variant"], found.runs["state"]))
    assert states["moe"] == "corrupt" and states["mlp"] == JobState.DONE
    assert len(found.curves[found.curves["variant"] == "mlp"]) == 2  # the torn line is skipped


def test_job_state_from_disk(tmp_path):
    job = make_job(tmp_path)
    assert job_state(job, ["mlp"]) == JobState.PENDING
    write_json(job.status_file, {"state": "running", "variants": {}})
    assert job_state(job, ["mlp"]) == JobState.INTERRUPTED  # nobody holds the lock: the writer is gone


def test_the_cache_rereads_exactly_the_jobs_that_changed(finished_job, tmp_path):
    job = copy_job(finished_job, tmp_path)
    root = tmp_path / "experiment"
    first = collect(root, curves=False, cache=True)
    assert (root / "summary" / ".cache.pkl").is_file()
    results = read_json(job.variant("moe").results_file)
    write_json(job.variant("moe").results_file, {**results, "test_acc": 0.123})
    again = collect(root, curves=False, cache=True).runs
    assert again.loc[again["variant"] == "moe", "test_acc"].item() == 0.123
    assert again.loc[again["variant"] == "mlp", "test_acc"].item() == first.runs.loc[first.runs["variant"] == "mlp", "test_acc"].item()
    (root / "summary" / ".cache.pkl").write_bytes(b"damaged")  # a damaged cache is ignored, not fatal
    assert len(collect(root, curves=False, cache=True).runs) == 4
