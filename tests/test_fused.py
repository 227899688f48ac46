"""Fused training: N models of one architecture trained as one (models/fused.py, train/fused.py) must
each train as it would alone, keep its own records, resume fused or unfused, and fail alone."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import TINY, launch
from test_records import _served_test_accuracy
from moelab.config import load_experiment
from moelab.data import DataSettings, load_dataset
from moelab.models import build_model
from moelab.models.fused import FusedModel, fusion_problem
from moelab.results.io import read_json, read_jsonl, write_json
from moelab.results.records import JobSpec
from moelab.results.status import JobState, read_status
from moelab.results.tree import ExperimentTree, JobTree
from moelab.train import fused as fused_training
from moelab.train.job import run_fused_jobs, run_job
from moelab.train.trainer import StopRequested

ROUTERS = [
    ("mlp", {"hidden": 32, "layers": 2, "dropout": 0.1}),
    ("moe", {"num_experts": 4, "hidden": 16}),
    ("moe_topk", {"num_experts": 4, "hidden": 16, "k": 2}),
    ("moe_hard", {"num_experts": 4, "hidden": 16, "k": 1}),
    ("moe_switch", {"num_experts": 4, "hidden": 16, "capacity_factor": 1.0}),
    ("moe_routed", {"num_experts": 4, "hidden": 16, "router": "expert_choice"}),
    ("moe_routed", {"num_experts": 4, "hidden": 16, "router": "hash"}),
    ("moe_routed", {"num_experts": 4, "hidden": 16, "router": "sinkhorn"}),
    ("moe_routed", {"num_experts": 4, "hidden": 16, "balance": "bias", "shared_experts": 1, "granularity": 2, "k": 2}),
    ("moe_routed", {"num_experts": 4, "hidden": 16, "capacity_factor": 1.0, "noisy_gating": True, "z_loss": 0.01,
                    "diversity": 0.1}),
    ("moe_topk", {"num_experts": 4, "hidden": 16, "k": 2, "cv_balance": 0.1, "kl_uniform": 0.1, "batch_norm": False}),
    ("moe_guided", {"num_experts": 4, "hidden": 16}),
]


@pytest.mark.parametrize("name,params", ROUTERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ROUTERS)])
def test_a_fused_model_computes_what_each_model_computes_alone(name, params):
    """Outputs, auxiliary losses and chosen experts equal; gradients equal to float rounding; buffers
    (batch norm statistics, balancing biases) moved alike; each model drew its own dropout and noise."""
    models, states = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model(name, 64, 10, params))
        states.append(torch.get_rng_state())
    alone = [copy.deepcopy(m) for m in models]
    x, y = torch.randn(3, 50, 64), torch.randint(0, 10, (3, 50))
    outs, grads = [], []
    for n, model in enumerate(alone):
        torch.set_rng_state(states[n])
        out = model.train()(x[n], y[n])
        (F.cross_entropy(out.y, y[n]) + sum(out.aux_losses.values())).backward()
        model.after_step()
        outs.append(out)
        grads.append([p.grad for p in model.parameters()])
    fused = FusedModel(models)
    fused.generators = [torch.Generator().set_state(s) for s in states]
    out = fused.train()(x, y)
    sum(F.cross_entropy(out.y[n], y[n]) + sum(v[n] for v in out.aux_losses.values()) for n in range(3)).backward()
    fused.after_step(torch.ones(3, dtype=torch.bool))
    for n in range(3):
        mine = out.of_model(n)
        assert torch.equal(mine.y, outs[n].y)
        assert mine.aux_losses.keys() == outs[n].aux_losses.keys()
        for key, value in outs[n].aux_losses.items():
            assert torch.allclose(mine.aux_losses[key], value, rtol=1e-5, atol=1e-7), key
        if outs[n].expert_index is not None:
            assert torch.equal(mine.expert_index, outs[n].expert_index)
        for stacked, grad in zip(fused.stacked, grads[n]):
            if grad is not None:
                assert torch.allclose(stacked.grad[n], grad, rtol=1e-4, atol=1e-7)
        for own, theirs in zip(models[n].buffers(), alone[n].buffers()):
            assert torch.equal(own, theirs)
    assert not torch.equal(out.y[0], out.y[1])  # different seeds, different models


def test_models_that_cannot_be_fused_say_why():
    """Decided from the model's name and parameters, before anything is built; FusedModel refuses alike."""
    assert "CNN" in fusion_problem("cnn", {"width": 4, "features": 8})
    assert "Transformer" in fusion_problem("moe_transformer", {"num_experts": 2})
    backbone = {"backbone": "cnn", "backbone_width": 4, "num_experts": 2, "hidden": 8}
    assert "backbone" in fusion_problem("moe_topk", backbone)
    assert fusion_problem("moe_topk", {**backbone, "backbone": "none"}) is None
    assert fusion_problem("mlp", {}) is None
    with pytest.raises(ValueError, match="backbone"):
        FusedModel([build_model("moe_topk", 64, 10, backbone, (8, 8)) for _ in range(2)])


def make_jobs(folder: Path, seeds, overrides=(), doc=None) -> list[JobTree]:
    """One job per seed of an experiment, config.json written as a launch writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "e.yaml"
    path.write_text(yaml.safe_dump({**(doc or TINY), "grid": {"seed": list(seeds)}}))
    experiment = load_experiment(path, list(overrides))
    jobs = []
    for job in experiment.jobs():
        tree = JobTree(folder / "jobs" / job.key)
        write_json(tree.config_file, experiment.job_spec(job))
        jobs.append(tree)
    return jobs


DEFAULT_VARIANTS = {**TINY, "variants": [  # the default experiment's variants, at test size
    {"name": "mlp", "model": "mlp", "hidden": 32, "layers": 2, "dropout": 0.1},
    {"name": "moe", "model": "moe", "hidden": 16, "num_experts": 4},
    {"name": "moe_topk", "model": "moe_topk", "hidden": 16, "k": 2, "num_experts": 4},
    {"name": "moe_hard", "model": "moe_hard", "hidden": 16, "k": 1, "num_experts": 4},
]}
EPOCHS = ["train.epochs=5", "report.live_plot_every=0", "report.tensorboard=false"]


def variants(job: JobTree):
    return [job.variant(v["name"]) for v in read_json(job.config_file)["config"]["variants"]]


def curves(job: JobTree) -> dict:
    return {v.name: read_jsonl(v.metrics_file) for v in variants(job)}


def images_in_test_set(job: JobTree) -> int:
    config = read_json(job.config_file)["config"]
    return len(load_dataset(DataSettings(**config["data"]), config["seed"]).x_test)


def assert_trained_alike(fused: JobTree, alone: JobTree) -> None:
    """Every epoch once, losses within 1e-4 relative, the test accuracy within one test image."""
    theirs = curves(alone)
    for name, runs in curves(fused).items():
        assert [r["epoch"] for r in runs] == [r["epoch"] for r in theirs[name]] == list(range(len(runs))), name
        for a, b in zip(runs, theirs[name]):
            for key in ("train_loss", "val_loss"):
                assert a[key] == pytest.approx(b[key], rel=1e-4), (name, a["epoch"], key)
        ours, reference = read_json(fused.variant(name).results_file), read_json(alone.variant(name).results_file)
        assert abs(ours["test_acc"] - reference["test_acc"]) * images_in_test_set(fused) <= 1 + 1e-9, name


@pytest.fixture(scope="module")
def trained_alone(tmp_path_factory) -> list[JobTree]:
    """8 seeds of the default variants (at test size), each job trained on its own."""
    jobs = make_jobs(tmp_path_factory.mktemp("alone"), range(8), EPOCHS, DEFAULT_VARIANTS)
    for job in jobs:
        assert run_job(job.path).state is JobState.DONE
    return jobs


def test_eight_seeds_fused_train_as_each_alone(tmp_path, trained_alone):
    """8 seeds of each default variant fused: curves within tolerance of the unfused ones, test accuracy
    within one test image; the records say the training was fused, and nothing else differs."""
    together = make_jobs(tmp_path, range(8), EPOCHS, DEFAULT_VARIANTS)
    assert [j.key for j in together] == [j.key for j in trained_alone]
    outcomes = run_fused_jobs(together, [False] * 8, lambda: False)
    assert [o.state for o in outcomes] == [JobState.DONE] * 8
    for fused_job, alone_job in zip(together, trained_alone):
        assert_trained_alike(fused_job, alone_job)
        for variant in variants(fused_job):
            ours, theirs = read_json(variant.results_file), read_json(alone_job.variant(variant.name).results_file)
            assert ours["execution"]["fused_models"] == 8 and "fused_models" not in theirs["execution"]
            assert ours["num_parameters"] == theirs["num_parameters"] and ours["epochs_trained"] == theirs["epochs_trained"]
        assert read_status(fused_job).state is JobState.DONE and read_status(fused_job).attempts == 1


def test_jobs_that_continue_shorter_ones_fuse_and_train_as_each_alone(tmp_path):
    """Each seed's job continues that seed's shorter job (a relaunch with more epochs): the fusion keys
    agree, and the fused continuation takes over the first epochs and trains the rest as alone. A job
    whose shorter job ran more epochs starts later: it is not fused with them, and trains alone."""
    def continuations(folder: Path) -> list[JobTree]:
        short = [*make_jobs(folder, range(2), ["train.epochs=2", *EPOCHS[1:]], DEFAULT_VARIANTS),
                 *make_jobs(folder, [2], ["train.epochs=3", *EPOCHS[1:]], DEFAULT_VARIANTS)]
        for job in short:
            assert run_job(job.path).state is JobState.DONE
        longer = make_jobs(folder, range(3), ["train.epochs=5", *EPOCHS[1:]], DEFAULT_VARIANTS)
        for job, shorter, epochs in zip(longer, short, (2, 2, 3)):
            doc = read_json(job.config_file)
            write_json(job.config_file, {**doc, "continued_from": {"job": shorter.key, "epochs": epochs}})
        return longer

    together, alone = continuations(tmp_path / "together"), continuations(tmp_path / "alone")
    specs = [JobSpec.from_dict(read_json(job.config_file), job.key) for job in together]
    assert specs[0].fusion_key == specs[1].fusion_key != specs[2].fusion_key
    assert [o.state for o in run_fused_jobs(together, [False] * 3, lambda: False)] == [JobState.DONE] * 3
    for job in alone:
        assert run_job(job.path).state is JobState.DONE
    for fused_job, alone_job, fused_models in zip(together, alone, (2, 2, None)):
        assert_trained_alike(fused_job, alone_job)
        for variant in variants(fused_job):
            ours = read_json(variant.results_file)
            assert ours["execution"].get("fused_models") == fused_models and ours["epochs_trained"] == 5
            source = read_json(fused_job.config_file)["continued_from"]
            shorter = JobTree(fused_job.path.parent / source["job"]).variant(variant.name)
            # the shorter job's epochs are taken over as they were
            assert read_jsonl(variant.metrics_file)[:source["epochs"]] == read_jsonl(shorter.metrics_file)


def stop_after_epochs(jobs: list[JobTree], epochs: int):
    """A stop request that comes once some variant of the jobs has finished `epochs` epochs."""
    return lambda: any(len(read_jsonl(v.metrics_file)) >= epochs for job in jobs for v in variants(job)
                       if v.metrics_file.exists())


@pytest.mark.parametrize("first", [pytest.param("fused", marks=pytest.mark.slow), "alone"])
def test_an_interrupted_group_resumes_fused_or_alone(tmp_path, trained_alone, first):
    """Stopped after 2 epochs fused and resumed job by job (and the reverse): every job finishes once,
    with every epoch once in its metrics, as if never interrupted."""
    jobs = make_jobs(tmp_path, range(8), EPOCHS, DEFAULT_VARIANTS)[:3]
    stop = stop_after_epochs(jobs, 2)
    if first == "fused":
        with pytest.raises(StopRequested):
            run_fused_jobs(jobs, [False] * 3, stop)
        assert {read_status(j).state for j in jobs} == {JobState.INTERRUPTED}
        for job in jobs:
            assert run_job(job.path).state is JobState.DONE
    else:
        with pytest.raises(StopRequested):
            run_job(jobs[0].path, stop_requested=stop)
        assert read_status(jobs[0]).state is JobState.INTERRUPTED
        assert [o.state for o in run_fused_jobs(jobs, [False] * 3, lambda: False)] == [JobState.DONE] * 3
    for job, alone in zip(jobs, trained_alone):
        assert job.key == alone.key
        assert_trained_alike(job, alone)
        assert read_status(job).attempts == (2 if first == "fused" or job == jobs[0] else 1)


def test_an_error_beyond_any_one_training_fails_every_job_of_the_group_on_record(tmp_path, monkeypatch):
    """As run_job records a job-level failure: each job's status says failed, with the error, not running."""
    from moelab.train import job as job_module

    def broken(shares, device, stop_requested):
        raise RuntimeError("the group's device went away")

    monkeypatch.setattr(job_module, "_train_together", broken)
    jobs = make_jobs(tmp_path, range(2), EPOCHS, DEFAULT_VARIANTS)
    outcomes = run_fused_jobs(jobs, [False] * 2, lambda: False)
    assert [o.state for o in outcomes] == [JobState.FAILED] * 2
    for job in jobs:
        status = read_status(job)
        assert status.state is JobState.FAILED and "the group's device went away" in status.error


def test_a_model_that_diverges_fails_its_own_job_only(tmp_path, trained_alone, monkeypatch):
    """The model of seed 1 starts from infinite weights: its variants fail with the divergence, the
    other jobs' models (sharing every kernel with it) train exactly as alone."""
    prepare = fused_training.prepare

    def poisoned(members, data, settings, seed, device, continued_from):
        run = prepare(members, data, settings, seed, device, continued_from)
        if seed == 1:
            with torch.no_grad():
                for p in run.model.parameters():
                    p.fill_(math.inf)
        return run

    monkeypatch.setattr(fused_training, "prepare", poisoned)
    jobs = make_jobs(tmp_path, range(8), EPOCHS, DEFAULT_VARIANTS)[:3]
    outcomes = run_fused_jobs(jobs, [False] * 3, lambda: False)
    assert [o.state for o in outcomes] == [JobState.DONE, JobState.FAILED, JobState.DONE]
    assert set(outcomes[1].errors) == {"mlp", "moe", "moe_topk", "moe_hard"}
    assert all("diverged at epoch 0" in error for error in outcomes[1].errors.values()), outcomes[1].errors
    for n in (0, 2):
        assert_trained_alike(jobs[n], trained_alone[n])


@pytest.mark.slow
def test_run_here_with_local_fuse_trains_groups_and_records_them(write_experiment, tmp_path):
    """local.fuse: 4 seeds x 2 expert counts on one worker: two fused groups of four; the plan records
    the fuse, every job is done once, and status and create-plots read the tree as any other."""
    doc = {**DEFAULT_VARIANTS, "variants": DEFAULT_VARIANTS["variants"][:2],
           "train": {**TINY["train"], "epochs": 2}, "grid": {"seed": [0, 1, 2, 3], "variants.*.num_experts": [2, 4]},
           "local": {"workers": 1, "fuse": 4}}
    experiment = write_experiment(doc)
    done = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out")
    assert done.returncode == 0, done.stdout + done.stderr
    tree = tmp_path / "out" / "tiny"
    (plan,) = tree.glob("launches/*/plan.json")
    assert json.loads(plan.read_text())["fuse"] == 4
    results = [read_json(p) for p in tree.glob("jobs/*/*/results.json")]
    assert len(results) == 16 and {r["execution"]["fused_models"] for r in results} == {4}
    assert all(json.loads(p.read_text())["attempts"] == 1 for p in tree.glob("jobs/*/status.json"))
    status = launch(tmp_path, "status", str(tree))
    assert status.returncode == 0 and "8 DONE (8 jobs)" in status.stdout, status.stdout
    assert "16 of 16 runs finished" in done.stdout
    for job in load_experiment(experiment).jobs()[:2]:  # served: the weights that were tested
        served, tested, samples = _served_test_accuracy(ExperimentTree(tree), job, "moe")
        assert abs(served - tested) <= 1 / samples + 1e-9


@pytest.mark.slow
def test_a_worker_killed_in_a_fused_group_retrains_each_job_alone(write_experiment, tmp_path):
    """A death in a fused group is nobody's in particular: the group's jobs are taken over one by one, so a
    job that kills its worker again does it alone, and the others finish."""
    import os
    import signal

    from test_launch import running_job, running_variant_with_epochs, start_launch, wait_for

    epochs = 60
    doc = {**DEFAULT_VARIANTS, "variants": DEFAULT_VARIANTS["variants"][:1],
           "data": {"name": "digits", "max_train_samples": 100},
           "train": {**TINY["train"], "epochs": epochs, "early_stopping": {"patience": epochs}},
           "grid": {"seed": [0, 1, 2]}, "local": {"workers": 1, "fuse": 3}}
    process = start_launch(write_experiment(doc), tmp_path)
    root = tmp_path / "out" / "tiny"
    try:
        assert wait_for(lambda: running_variant_with_epochs(root))
        os.kill(running_job(root)["pid"], signal.SIGKILL)
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output
    assert "worker process died with exit code -9" in output and "3 done" in output, output
    for job in root.glob("jobs/*"):
        assert read_json(job / "status.json")["attempts"] == 2
        (variant,) = [folder for folder in job.iterdir() if (folder / "results.json").is_file()]
        assert "fused_models" not in read_json(variant / "results.json")["execution"]  # trained alone
        assert [row["epoch"] for row in read_jsonl(variant / "metrics.jsonl")] == list(range(epochs))


def test_settings_that_cannot_be_fused_train_each_job_alone_and_say_so(tmp_path, capsys):
    """fp16 (one loss scale would skip every model's step when one overflows): the jobs train one after
    the other, with a note naming the setting."""
    jobs = make_jobs(tmp_path, range(2), ["train.epochs=1", "train.precision=fp16", "report.tensorboard=false"],
                     {**TINY, "variants": TINY["variants"][:1]})
    assert [o.state for o in run_fused_jobs(jobs, [False, False], lambda: False)] == [JobState.DONE] * 2
    assert "train.precision: fp16" in capsys.readouterr().err
    assert all("fused_models" not in read_json(j.variant("mlp").results_file)["execution"] for j in jobs)


def test_fused_reruns_are_bit_identical(tmp_path):
    """The same fused group trained twice: every metric and result equal to the last bit."""
    runs = []
    for attempt in ("first", "second"):
        jobs = make_jobs(tmp_path / attempt, range(3), ["train.epochs=2", *EPOCHS[1:]], DEFAULT_VARIANTS)
        assert [o.state for o in run_fused_jobs(jobs, [False] * 3, lambda: False)] == [JobState.DONE] * 3
        runs.append([({k: v for k, v in row.items() if k != "seconds"} for row in rows)
                     for job in jobs for rows in curves(job).values()])
        runs[-1] = [list(rows) for rows in runs[-1]] + [
            {k: v for k, v in read_json(job.variant(v["name"]).results_file).items()
             if not any(w in k for w in ("seconds", "latency", "throughput"))}
            for job in jobs for v in DEFAULT_VARIANTS["variants"]]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("value", ["0", "two", "1.5"])
def test_a_bad_fuse_is_refused_before_anything_runs(write_experiment, tmp_path, value):
    experiment = write_experiment()
    done = launch(tmp_path, "run_here", str(experiment), f"local.fuse={value}", "--experiments-dir", "out")
    assert done.returncode == 2 and "local.fuse" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()
