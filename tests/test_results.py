"""The experiments tree: atomic writes, and loading partial or damaged trees without crashing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from moelab.results import collect, load_runs
from moelab.results.io import append_jsonl, atomic_write, read_json, write_json
from conftest import copy_job, make_job
from moelab.results.claims import is_claimed, try_claim
from moelab.results.status import JobState, job_state
from moelab.results.tree import JobTree, job_files_signature
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
    assert states["moe"] == JobState.DAMAGED and states["mlp"] == JobState.DONE
    assert len(found.curves[found.curves["variant"] == "mlp"]) == 2  # the torn line is skipped


def test_job_state_from_disk(tmp_path):
    job = make_job(tmp_path)
    assert job_state(job, ["mlp"]) == JobState.PENDING
    write_json(job.status_file, {"state": "running", "variants": {}})
    assert job_state(job, ["mlp"]) == JobState.INTERRUPTED  # nobody holds its claim: the writer is gone


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


def test_a_jobs_files_signature_changes_with_each_write_and_only_then(tmp_path):
    job = JobTree(tmp_path / "j1")
    write_json(job.config_file, {"variants": ["moe"]})
    signatures = [job_files_signature(job, ["moe"])]
    for write in (lambda: write_json(job.status_file, {"state": "running"}),
                  lambda: append_jsonl(job.variant("moe").metrics_file, {"epoch": 0}),
                  lambda: append_jsonl(job.variant("moe").metrics_file, {"epoch": 1}),
                  lambda: write_json(job.status_file, {"state": "running"}),  # same text, a new file
                  lambda: write_json(job.variant("moe").results_file, {"best_val_accuracy": 0.9}),
                  lambda: write_json(job.config_file, {"variants": ["moe"]})):
        write()
        signatures.append(job_files_signature(job, ["moe"]))
    assert len(set(signatures)) == len(signatures)
    assert job_files_signature(job, ["moe"]) == signatures[-1]  # nothing written: equal
    try_claim(job).release()  # the claim is not part of it: its heartbeat touches it every few seconds
    assert job_files_signature(job, ["moe"]) == signatures[-1]
    assert job_files_signature(job, ["moe", "dense"]) != signatures[-1]


def test_a_look_over_many_claims_asks_once_whether_their_process_lives(tmp_path):
    jobs = [JobTree(tmp_path / key) for key in ("a", "b")]
    for job in jobs:
        job.path.mkdir()
    claims = [try_claim(job) for job in jobs]
    try:
        pids: dict[int, bool] = {}
        assert all(is_claimed(job, pids) for job in jobs) and pids == {os.getpid(): True}
        assert not any(is_claimed(job, {os.getpid(): False}) for job in jobs)  # the answer shared is the one used
    finally:
        for claim in claims:
            claim.release()


def test_a_claim_is_exclusive_and_released(tmp_path):
    job = JobTree(tmp_path / "jobs" / "k")
    claim = try_claim(job)
    assert claim is not None and is_claimed(job)
    assert try_claim(job) is None  # held by a live process (this one)
    claim.release()
    assert not is_claimed(job) and not job.claim_file.exists()
    with try_claim(job) as again:
        assert again is not None


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    job = JobTree(tmp_path / "jobs" / "k")
    holder_process = subprocess.run(
        [sys.executable, "-c", "import sys; from moelab.results.claims import try_claim; "
         "from moelab.results.tree import JobTree; from pathlib import Path; c = try_claim(JobTree(Path(sys.argv[1]))); "
         "import os; os._exit(0)",
         str(job.path)], check=True)
    assert holder_process.returncode == 0 and job.claim_file.exists()
    assert not is_claimed(job)  # its pid is gone
    claim = try_claim(job)
    assert claim is not None and json.loads(job.claim_file.read_text())["pid"] == os.getpid()
    claim.release()


def test_a_claim_from_another_host_is_stale_after_the_heartbeat_timeout(tmp_path, monkeypatch):
    job = JobTree(tmp_path / "jobs" / "k")
    job.path.mkdir(parents=True)
    job.claim_file.write_text(json.dumps({"owner": "other", "host": "node-elsewhere", "pid": 1}))
    monkeypatch.setenv("MOELAB_CLAIM_TIMEOUT_S", "60")
    assert is_claimed(job) and try_claim(job) is None  # its heartbeat is fresh
    old = time.time() - 61
    os.utime(job.claim_file, (old, old))
    assert not is_claimed(job)
    claim = try_claim(job)
    assert claim is not None
    claim.release()


def test_a_worker_whose_claim_was_taken_over_learns_it_lost_the_job(tmp_path, monkeypatch):
    import moelab.results.claims as claims

    monkeypatch.setattr(claims, "HEARTBEAT_S", 0.05)
    job = JobTree(tmp_path / "jobs" / "k")
    claim = try_claim(job)
    job.claim_file.write_text(json.dumps({"owner": "someone-else", "host": "x", "pid": 1}))
    deadline = time.monotonic() + 30
    while not claim.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert claim.lost
    claim.release()
    assert job.claim_file.exists()  # the new holder's claim is left alone


def test_claimers_racing_for_the_same_jobs_never_both_win(tmp_path):
    """Processes claim the same 40 jobs at once; each job is won by exactly one of them."""
    script = (
        "import sys, json\n"
        "from moelab.results.claims import try_claim\n"
        "from moelab.results.tree import JobTree\n"
        "from pathlib import Path\n"
        "won = [k for k in range(40) if try_claim(JobTree(Path(sys.argv[1]) / 'jobs' / str(k))) is not None]\n"
        "print(json.dumps(won), flush=True)\n"
        "sys.stdin.read()  # hold the claims (alive) until every racer is done\n"
    )
    racers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True) for _ in range(4)]
    wins = [json.loads(p.stdout.readline()) for p in racers]
    for racer in racers:
        racer.communicate(timeout=60)
    assert sorted(k for won in wins for k in won) == list(range(40))
