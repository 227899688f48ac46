"""Damaged records: whatever a file of the experiments tree holds, nothing crashes, and the damage
costs only what it must."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time

import pytest

from conftest import TINY, launch, make_job
from moelab.results.claims import is_claimed, try_claim
from moelab.results.io import read_json, read_jsonl
from moelab.results.status import JobState
from moelab.results.tree import JobTree
from moelab.train.job import run_job
from moelab.train.trainer import StopRequested

DAMAGED_CLAIMS = {
    "empty": "",
    "truncated": '{"owner": "other", "host": "node-elsewhere", "pi',
    "a JSON list": '["other", "node-elsewhere", 1]',
    "a pid written as a string": json.dumps({"owner": "other", "host": socket.gethostname(), "pid": "1"}),
    "garbage": "\x00\xff garbage",
    "a folder": None,
}


@pytest.mark.parametrize("damage", DAMAGED_CLAIMS)
def test_a_claim_that_cannot_be_read_is_stale_after_the_heartbeat_timeout(tmp_path, monkeypatch, capsys, damage):
    job = JobTree(tmp_path / "jobs" / "k")
    job.path.mkdir(parents=True)
    if DAMAGED_CLAIMS[damage] is None:
        (job.claim_file / "inside").mkdir(parents=True)
    else:
        job.claim_file.write_bytes(DAMAGED_CLAIMS[damage].encode("utf-8", "surrogateescape"))
    monkeypatch.setenv("MOELAB_CLAIM_TIMEOUT_S", "60")
    assert is_claimed(job) and try_claim(job) is None  # perhaps caught half-written: its file is fresh
    old = time.time() - 61
    os.utime(job.claim_file, (old, old))
    assert not is_claimed(job)
    claim = try_claim(job)
    assert claim is not None and json.loads(job.claim_file.read_text())["pid"] == os.getpid()
    assert f"warning: {job.claim_file} could not be read" in capsys.readouterr().err
    claim.release()
    assert not job.claim_file.exists()


def damage(path, how: str) -> None:
    """Replace a record by an empty file, the first half of itself, garbage or a folder."""
    content = path.read_bytes() if path.is_file() else b"{}"
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    if how == "folder":
        (path / "inside").mkdir(parents=True)
    else:
        path.write_bytes({"empty": b"", "half": content[: len(content) // 2], "garbage": b"\x00garbage\xff"}[how])


def outputs(job, names=("mlp", "moe")) -> dict:
    return {name: ([{k: v for k, v in row.items() if k != "seconds"} for row in read_jsonl(job.variant(name).metrics_file)],
                   {k: v for k, v in read_json(job.variant(name).results_file).items()
                    if not any(w in k for w in ("seconds", "latency", "throughput"))}) for name in names}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    job = make_job(tmp_path_factory.mktemp("reference"), TWO_VARIANTS)
    assert run_job(job.path).state == JobState.DONE
    return outputs(job)


TWO_VARIANTS = ["variants=[{name: mlp, model: mlp, hidden: 32}, {name: moe, model: moe, hidden: 16}]"]


@pytest.mark.parametrize("how", ["empty", "half", "garbage", "folder"])
@pytest.mark.parametrize("record", ["last.pt", "best.pt", "results.json", "status.json"])
def test_a_damaged_record_costs_only_what_it_must(tmp_path, capsys, reference, record, how):
    """The job's `moe` variant was interrupted after its first epoch (last.pt, best.pt, status.json) or
    finished (results.json); the record is damaged; running the job again finishes it with the
    results of an undamaged run, and `mlp`, finished, is not touched."""
    job = make_job(tmp_path, TWO_VARIANTS)
    assert run_job(job.path).state == JobState.DONE
    moe = job.variant("moe")
    if record != "results.json":  # back to the end of its first epoch: what an interruption leaves
        with pytest.raises(StopRequested):
            run_job(job.path, fresh=True, stop_requested=lambda: moe.metrics_file.is_file())
    mlp_results = job.variant("mlp").results_file.read_bytes()
    path = {"last.pt": moe.last_checkpoint, "best.pt": moe.best_weights, "results.json": moe.results_file,
            "status.json": job.status_file}[record]
    damage(path, how)

    assert run_job(job.path).state == JobState.DONE
    assert outputs(job) == reference
    assert job.variant("mlp").results_file.read_bytes() == mlp_results
    aside = list(path.parent.glob(f"{path.name}.damaged-*"))
    assert len(aside) == 1 and f"warning: {path}" in capsys.readouterr().err


@pytest.mark.slow
def test_a_damaged_results_file_is_redone_by_the_next_launch_and_nothing_else(write_experiment, tmp_path):
    experiment = write_experiment({**TINY, "variants": TINY["variants"][:2], "train": {**TINY["train"], "epochs": 1},
                                   "grid": {"seed": [0, 1]}})
    first = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out", "--no-report")
    assert first.returncode == 0, first.stdout + first.stderr
    damaged, kept = sorted((tmp_path / "out" / "tiny" / "jobs").iterdir())
    before = {p: p.read_bytes() for p in kept.rglob("results.json")}
    reference = (damaged / "moe" / "results.json").read_text()
    (damaged / "moe" / "results.json").write_text('{"variant": "moe", "te')
    again = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out", "--no-report")
    assert again.returncode == 0 and "1 to run" in again.stdout, again.stdout + again.stderr
    assert "Traceback" not in again.stdout + again.stderr and f"jobs/{damaged.name}/moe/results.json cannot be read" in again.stderr
    strip = lambda text: {k: v for k, v in json.loads(text).items() if not any(w in k for w in ("seconds", "latency", "throughput"))}
    assert strip((damaged / "moe" / "results.json").read_text()) == strip(reference)
    assert {p: p.read_bytes() for p in kept.rglob("results.json")} == before
    status = launch(tmp_path, "status", str(tmp_path / "out" / "tiny"))
    assert status.returncode == 0 and "Traceback" not in status.stdout + status.stderr


@pytest.fixture(scope="module")
def finished_tree(tmp_path_factory):
    """Two finished jobs of one launch: the first one's records are damaged in turn."""
    folder = tmp_path_factory.mktemp("finished")
    experiment = folder / "tiny.yaml"
    experiment.write_text(json.dumps({**TINY, "variants": TINY["variants"][:2], "train": {**TINY["train"], "epochs": 1},
                                      "grid": {"seed": [0, 1]}}))
    done = launch(folder, "run_here", str(experiment), "--experiments-dir", "out", "--no-report")
    assert done.returncode == 0, done.stdout + done.stderr
    return folder / "out" / "tiny"


def _runs_of(folder, job_key: str):
    from moelab.results import collect

    runs = collect(folder, curves=False, cache=False).runs
    return runs[runs["job"] == job_key][["job", "variant", "state", "test_acc"]].reset_index(drop=True)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["empty", "half", "garbage", "folder"])
@pytest.mark.parametrize("record", ["config.json", "status.json", "claim", "metrics.jsonl", "results.json", "last.pt",
                                    "launches.jsonl", "plan.json"])
def test_status_and_create_plots_read_any_damaged_record_without_a_traceback(finished_tree, tmp_path, capsys,
                                                                             record, how):
    """Every record of a job, and the launch's, replaced by an empty file, half of itself, garbage or a
    folder: status and create-plots end with an exit code (no exception), and the other job's runs are
    read as from the undamaged tree."""
    from moelab.launch.cli import main as launch_main
    from moelab.report.cli import main as report_main
    from moelab.results.tree import ExperimentTree

    tree = ExperimentTree(tmp_path / "tiny")
    shutil.copytree(finished_tree, tree.path)
    damaged, kept = sorted(job.key for job in tree.jobs())
    job = tree.job(damaged)
    path = {"config.json": job.config_file, "status.json": job.status_file, "claim": job.claim_file,
            "metrics.jsonl": job.variant("moe").metrics_file, "results.json": job.variant("moe").results_file,
            "last.pt": job.variant("moe").last_checkpoint, "launches.jsonl": tree.launches_file,
            "plan.json": next(tree.path.glob("launches/*/plan.json"))}[record]
    damage(path, how)

    assert launch_main(["status", str(tree.path)]) in (0, 1)
    assert report_main([str(tree.path)]) in (0, 1)
    assert "Traceback" not in capsys.readouterr().err
    assert _runs_of(tree.path, kept).equals(_runs_of(finished_tree, kept))
