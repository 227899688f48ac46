"""A job trained by 2 processes (gloo on CPU): the losses of 1 process with the same global batch, rank 0
alone writing; a rank killed fails the job with the rank named and leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import REPO, make_job, wait_until
from moelab.results.io import read_json

# no dropout, gate noise, batch norm or balance loss: what each rank would compute over its own slice
EXACT_VARIANTS = ("variants=[{name: mlp, model: mlp, hidden: 32, dropout: 0.0}, "
                  "{name: moe, model: moe_routed, hidden: 16, num_experts: 4, k: 2, dropout: 0.0, balance: none, "
                  "batch_norm: false}]")


def _losses(job, variant: str) -> list[tuple[float, float]]:
    lines = job.variant(variant).metrics_file.read_text().splitlines()
    return [(row["train_loss"], row["val_loss"]) for row in map(json.loads, lines)]


def _files(job) -> set[str]:
    """The job's files; event files by folder (their names hold the time)."""
    return {str((path.parent if "tfevents" in path.name else path).relative_to(job.path))
            for path in job.path.rglob("*") if path.is_file()}


@pytest.mark.slow
def test_two_processes_give_the_losses_of_one_with_the_same_global_batch(tmp_path, monkeypatch):
    from moelab.train.job import run_job

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the other rank's scratch files go there
    (tmp_path / "tmp").mkdir()
    single = make_job(tmp_path / "one", [EXACT_VARIANTS, "train.epochs=3"])
    double = make_job(tmp_path / "two", [EXACT_VARIANTS, "train.epochs=3", "train.distributed.processes=2"])
    assert single.key != double.key  # the process count is in the job's key
    assert run_job(single.path).state == "done"
    outcome = run_job(double.path)
    assert outcome.state == "done", outcome.errors

    for variant in ("mlp", "moe"):
        one, two = _losses(single, variant), _losses(double, variant)
        assert len(one) == len(two) == 3
        for (train1, val1), (train2, val2) in zip(one, two):
            assert train2 == pytest.approx(train1, abs=1e-5) and val2 == pytest.approx(val1, abs=1e-5)
        assert read_json(double.variant(variant).results_file)["test_acc"] == pytest.approx(
            read_json(single.variant(variant).results_file)["test_acc"], abs=1e-6)
    # rank 0 alone wrote, what one process writes; the other rank's scratch folder is gone
    skip = {"config.json", "status.json"}
    assert {f for f in _files(double) if f not in skip} == {f for f in _files(single) if f not in skip}
    assert not any((tmp_path / "tmp").iterdir())


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:  # ended meanwhile
                continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the rank's process in /proc")
def test_a_rank_killed_fails_the_job_naming_the_rank_and_leaves_no_process(tmp_path):
    job = make_job(tmp_path / "e", ["variants=[{name: mlp, model: mlp, hidden: 32}]", "train.epochs=5000",
                                    "train.early_stopping.patience=5000", "train.distributed.processes=2"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    rank0 = subprocess.Popen([sys.executable, str(REPO / "run" / "train_models.py"), str(job.path)],
                             env={**env, "TMPDIR": str(tmp_path)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        metrics = job.variant("mlp").metrics_file
        wait_until(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, 120, "two epochs")
        rank1 = wait_until(lambda: [p for p in _processes_naming(str(job.path)) if p != rank0.pid], 30, "rank 1")
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGKILL)
        output, _ = rank0.communicate(timeout=120)
    finally:
        if rank0.poll() is None:
            rank0.kill()
    status = read_json(job.status_file)
    assert status["state"] == "failed", output
    error = status["variants"]["mlp"]["error"]
    assert "rank 1 of 2 was killed by SIGKILL" in error, error
    assert "rank 1 of 2 was killed by SIGKILL" in output
    assert _processes_naming(str(job.path)) == []
    # nothing half-written: the metrics end at the checkpoint's epoch
    checkpoint = torch.load(job.variant("mlp").last_checkpoint, weights_only=False)
    assert metrics.read_text().count("\n") == checkpoint["next_epoch"]


def test_a_rank_takes_its_slice_weighted_so_the_ranks_average_is_the_batch_mean():
    from moelab.train.ranks import Ranks

    batch = torch.arange(7)
    slices = [Ranks(rank, 2).share(batch) for rank in range(2)]
    assert torch.equal(torch.cat([s for s, _ in slices]), batch)
    values = torch.randn(7)
    weighted = sum(values[s].mean() * weight for s, weight in slices) / 2
    assert weighted == pytest.approx(float(values.mean()), abs=1e-6)
    with pytest.raises(ValueError, match="a batch of 1 samples cannot be shared by 2 processes"):
        Ranks(1, 2).share(torch.arange(1))


def test_settings_several_processes_cannot_train_are_refused_naming_the_key(write_experiment):
    from conftest import TINY
    from moelab.config import ConfigError, load_experiment

    path = write_experiment({**TINY, "grid": {}})
    with pytest.raises(ConfigError) as caught:
        load_experiment(path, ["train.distributed.processes=4", "train.batch_size=2"])
    messages = {issue.path: issue.message for issue in caught.value.issues}
    assert "must be at least train.distributed.processes=4" in messages["train.batch_size"]
    with pytest.raises(ConfigError) as caught:
        load_experiment(path, ["train.distributed.expert_parallel=true"])
    messages = {issue.path: issue.message for issue in caught.value.issues}
    assert "set train.distributed.processes to 2 or more" in messages["train.distributed.expert_parallel"]
    with pytest.raises(ConfigError, match="train.distributed.processes: must be an integer >= 1"):
        load_experiment(path, ["train.distributed.processes=0"])


def test_status_dashboard_and_report_show_a_distributed_job_as_one_job_with_its_process_count(write_experiment,
                                                                                                tmp_path, capsys):
    from fastapi.testclient import TestClient

    from conftest import TINY
    from moelab.config import load_experiment
    from moelab.launch.status import print_status
    from moelab.results.io import write_json
    from moelab.results.tree import ExperimentTree
    from moelab.serve.app import create_app
    from moelab.serve.catalog import Catalog

    experiment = load_experiment(write_experiment({**TINY, "grid": {"train.distributed.processes": [1, 2]}}))
    root = tmp_path / "experiments"
    tree = ExperimentTree(root / experiment.name)
    for job in experiment.jobs():  # launched, not started
        write_json(tree.job(job.key).config_file, experiment.job_spec(job))
    print_status(experiment, root)
    lines = [line for line in capsys.readouterr().out.splitlines() if "processes=" in line]
    assert len(lines) == 2 and sum("(2 processes)" in line for line in lines) == 1

    client = TestClient(create_app(Catalog(root=root), ask_queues=False))
    response = client.get(f"/api/experiments/{experiment.name}/job-page")
    assert response.status_code == 200, response.text
    rows = response.json()["rows"]
    assert sorted(row["processes"] for row in rows) == [1, 2]

    from moelab.report.tables import distributed_note
    from moelab.results.load import load_runs

    runs = load_runs(tree.path)
    assert len(runs) == 2 * len(TINY["variants"])  # a row per job and variant, whatever its process count
    assert distributed_note(runs) == ("1 of 2 job(s) trained by several processes (train.distributed: 1 by 2 "
                                      "processes); each is one job in every table.")


@pytest.mark.slow
def test_a_search_trial_of_two_processes_is_sampled_once_and_runs_as_one_job(write_experiment, tmp_path):
    """The rank disagreement other tools show (each rank drawing its own hyperparameters) cannot happen:
    the trial is sampled once, into the job's config.json, which every rank reads."""
    from conftest import TINY, launch

    search = {**TINY, "name": "trials", "grid": {}, "variants": [{"name": "mlp", "model": "mlp", "hidden": 32}],
              "train": {**TINY["train"], "epochs": 2},
              "search": {"sampler": "random", "n_trials": 2, "parallel": 1, "seed": 0,
                         "objective": {"variant": "mlp", "metric": "val_acc", "direction": "maximize"},
                         "space": {"train.lr": {"loguniform": [1.0e-3, 1.0e-2]},
                                   "train.distributed.processes": {"choice": [2]}}}}
    done = launch(tmp_path, "run_here", str(write_experiment(search)), "--experiments-dir", "out", "--no-report")
    assert done.returncode == 0, done.stdout + done.stderr
    specs = [read_json(path) for path in (tmp_path / "out" / "trials" / "jobs").glob("*/config.json")]
    assert len(specs) == 2 and all(spec["config"]["train"]["distributed"]["processes"] == 2 for spec in specs)
    assert len({spec["config"]["train"]["lr"] for spec in specs}) == 2  # one draw per trial
    for path in (tmp_path / "out" / "trials" / "jobs").glob("*/status.json"):
        assert read_json(path)["state"] == "done"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks' processes in /proc")
def test_rank_0_killed_takes_the_other_ranks_with_it(tmp_path, monkeypatch):
    """Rank 0 is the process holding the job: when it dies outright (SIGKILL, the OOM killer) no other rank
    is left running, and the job resumes from its checkpoint like any job whose worker died."""
    from moelab.train.distributed import scratch_folder
    job = make_job(tmp_path / "e", ["variants=[{name: mlp, model: mlp, hidden: 32}]", "train.epochs=5000",
                                    "train.early_stopping.patience=5000", "train.distributed.processes=2"])
    # a rank 0 killed outright cannot remove the scratch folder of the other ranks: it lands in tmp_path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "TMPDIR": str(tmp_path)}
    rank0 = subprocess.Popen([sys.executable, str(REPO / "run" / "train_models.py"), str(job.path)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        metrics = job.variant("mlp").metrics_file
        wait_until(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1, 120, "an epoch")
        wait_until(lambda: [p for p in _processes_naming(str(job.path)) if p != rank0.pid], 30, "rank 1")
        rank0.kill()
        rank0.wait(timeout=30)
        wait_until(lambda: not _processes_naming(str(job.path)), 30, "rank 1 to end with rank 0")
    finally:
        if rank0.poll() is None:
            rank0.kill()
    # its scratch folder stays, until the next distributed training on this machine makes one
    left = list(tmp_path.glob(f"moelab-ranks-{rank0.pid}-*"))
    assert len(left) == 1
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    fresh = scratch_folder()
    assert not left[0].exists() and fresh.is_dir() and fresh.name.startswith(f"moelab-ranks-{os.getpid()}-")


def test_expert_parallelism_refuses_variants_it_cannot_shard_naming_the_variant_and_why(write_experiment):
    from conftest import TINY
    from moelab.config import ConfigError, load_experiment

    variants = [{"name": "dense", "model": "mlp", "hidden": 16},
                {"name": "soft", "model": "moe", "hidden": 16, "num_experts": 4},
                {"name": "three", "model": "moe_routed", "hidden": 16, "num_experts": 3, "k": 1},
                {"name": "fine", "model": "moe_routed", "hidden": 16, "num_experts": 4, "k": 2}]
    path = write_experiment({**TINY, "grid": {}, "variants": variants})
    with pytest.raises(ConfigError) as caught:
        load_experiment(path, ["train.distributed.processes=2", "train.distributed.expert_parallel=true"])
    messages = {issue.path: issue.message for issue in caught.value.issues}
    assert set(messages) == {"variants.dense", "variants.soft", "variants.three"}
    assert "no MoE layer" in messages["variants.dense"]
    assert "soft routing" in messages["variants.soft"]
    assert "num_experts=3 cannot be shared evenly by 2 processes" in messages["variants.three"]
    assert all("train.distributed.expert_parallel over 2 processes" in m for m in messages.values())


# batch norm and gradient clipping included: each expert normalises over the tokens of every rank, and the
# clipped norm adds up the experts of every rank, as one process does
EXPERT_PARALLEL = ["variants=[{name: moe, model: moe_routed, hidden: 16, num_experts: 4, k: 2, dropout: 0.0, "
                   "balance: none, batch_norm: true}]", "train.epochs=3", "train.grad_clip=0.05"]
SHARDED = ["train.distributed.processes=2", "train.distributed.expert_parallel=true"]


@pytest.mark.slow
def test_experts_sharded_over_two_processes_train_as_one_process_and_resume_exactly(tmp_path, monkeypatch):
    from moelab.train.job import run_job
    from moelab.train.trainer import StopRequested

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    single = make_job(tmp_path / "one", EXPERT_PARALLEL)
    sharded = make_job(tmp_path / "two", [*EXPERT_PARALLEL, *SHARDED])
    resumed = make_job(tmp_path / "three", [*EXPERT_PARALLEL, *SHARDED])
    assert run_job(single.path).state == "done"
    outcome = run_job(sharded.path)
    assert outcome.state == "done", outcome.errors
    one, two = _losses(single, "moe"), _losses(sharded, "moe")
    assert len(one) == len(two) == 3
    for (train1, val1), (train2, val2) in zip(one, two):
        assert train2 == pytest.approx(train1, abs=1e-5) and val2 == pytest.approx(val1, abs=1e-5)
    tested = {job: read_json(job.variant("moe").results_file) for job in (single, sharded)}
    assert tested[sharded]["test_acc"] == pytest.approx(tested[single]["test_acc"], abs=1e-6)
    assert tested[sharded]["num_parameters"] == tested[single]["num_parameters"]
    # the checkpoint holds the whole model and the whole optimizer state: every expert, gathered
    whole = torch.load(single.variant("moe").last_checkpoint, weights_only=False)
    gathered = torch.load(sharded.variant("moe").last_checkpoint, weights_only=False)
    assert {k: v.shape for k, v in gathered["model"].items()} == {k: v.shape for k, v in whole["model"].items()}
    for index, state in whole["optimizer"]["state"].items():
        assert gathered["optimizer"]["state"][index]["exp_avg"].shape == state["exp_avg"].shape

    # stopped after its second epoch, then run again: it resumes from the gathered checkpoint, sliced again
    metrics = resumed.variant("moe").metrics_file
    with pytest.raises(StopRequested):
        run_job(resumed.path, stop_requested=lambda: metrics.exists() and metrics.read_text().count("\n") >= 2)
    assert torch.load(resumed.variant("moe").last_checkpoint, weights_only=False)["next_epoch"] == 2
    assert run_job(resumed.path).state == "done"
    assert _losses(resumed, "moe") == two
    assert read_json(resumed.variant("moe").results_file)["test_acc"] == tested[sharded]["test_acc"]


def test_run_here_gives_a_worker_one_gpu_per_process_of_the_largest_job(monkeypatch):
    from moelab.launch.pool import worker_slots
    from moelab.train.process import prepare_process

    assert [s.gpus for s in worker_slots(8, None, 1, [0, 1, 2, 3], 16, gpus_per_job=2)] == [(0, 1), (2, 3)]
    assert [s.gpus for s in worker_slots(8, None, 2, [0, 1, 2], 16, gpus_per_job=2)] == [(0, 1), (0, 1)]
    with pytest.raises(ValueError, match="a job of 4 processes needs 4 GPUs, one per process, and 2 are visible"):
        worker_slots(8, None, 1, [0, 1], 16, gpus_per_job=4)
    # a worker sees its set, as indices into the GPUs the launch sees; its ranks take one each (cuda:rank)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    prepare_process(None, (2, 3))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6,7"


def test_without_a_gpu_driver_the_launcher_finds_no_gpu_and_does_not_import_torch():
    """Importing torch costs the launcher about 1.5 s; with no GPU driver it could count no GPU anyway."""
    code = ("import sys; from moelab.launch.local.backend import gpu_driver_present, visible_gpus; "
            "print(gpu_driver_present(), visible_gpus() == [], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    if out[0] == "True":
        pytest.skip("this machine has a GPU driver")
    assert out == ["False", "True", "False"]


def test_a_job_needing_more_gpus_than_this_machine_has_is_refused_before_anything_runs(write_experiment, tmp_path,
                                                                                        monkeypatch, capsys):
    from conftest import TINY
    from moelab.launch import launcher
    from moelab.launch.local import backend
    from moelab.launch.base import LaunchOptions

    monkeypatch.setattr(backend, "visible_gpus", lambda: [0])  # one GPU, and a job of 2 processes
    path = write_experiment({**TINY, "grid": {"train.distributed.processes": [1, 2]}})
    code = launcher.launch_experiment(path, options=LaunchOptions(experiments_dir=tmp_path / "out"))
    assert code == 2
    error = capsys.readouterr().err
    assert "a job of 2 processes needs 2 GPUs, one per process, and 1 are visible on this machine" in error
    assert "train.device: cpu" in error
    assert not list((tmp_path / "out").rglob("status.json"))  # nothing ran


@pytest.mark.slow
def test_transformer_experts_sharded_over_two_processes_train_as_one_process(tmp_path, monkeypatch):
    """Token routing: every MoE layer of the transformer shards its experts; the tokens of each rank's windows
    travel to them. The losses of one process, to the rounding of the longer sums (1e-4)."""
    from moelab.train.job import run_job

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    text = ["data={name: text, context: 32, max_train_samples: 256}", "train.batch_size=32",
            "variants=[{name: moe, model: moe_transformer, d_model: 32, layers: 2, heads: 2, d_ff: 64, num_experts: 4, "
            "k: 2, dropout: 0.0, balance: none}]"]
    single = make_job(tmp_path / "one", text)
    sharded = make_job(tmp_path / "two", [*text, *SHARDED])
    assert run_job(single.path).state == "done"
    outcome = run_job(sharded.path)
    assert outcome.state == "done", outcome.errors
    for (train1, val1), (train2, val2) in zip(_losses(single, "moe"), _losses(sharded, "moe"), strict=True):
        assert train2 == pytest.approx(train1, abs=1e-4) and val2 == pytest.approx(val1, abs=1e-4)
    assert read_json(sharded.variant("moe").results_file)["test_bpb"] == pytest.approx(
        read_json(single.variant("moe").results_file)["test_bpb"], abs=1e-4)
