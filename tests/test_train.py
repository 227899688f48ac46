"""Training one job: determinism, resume after an interruption, failures recorded per variant."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import make_job
from moelab.models import get_model_spec
from moelab.data import DataSettings, load_dataset
from moelab.results.io import read_json, read_jsonl, write_json
from moelab.results.tree import VariantTree
from moelab.schema import check_section
from moelab.train.job import run_job
from moelab.train.settings import TrainSettings
from moelab.train.trainer import EarlyStopping, StopRequested, train_variant

TRAIN_SECTION = {"epochs": 6, "batch_size": 64, "eval_batch_size": 512, "optimizer": "adamw", "lr": 0.003, "weight_decay": 1e-4,
         "momentum": 0.9, "schedule": "cosine", "warmup_epochs": 1, "step_every": 30, "grad_clip": 1.0,
         "early_stopping": {"patience": 20, "min_delta": 0.0}, "device": "cpu", "save_weights": True}
TRAIN = TrainSettings.from_dict(TRAIN_SECTION)
DATA = DataSettings(name="digits", max_train_samples=400)

TOPK = {"name": "moe_topk", "model": "moe_topk",
        **check_section(get_model_spec("moe_topk").schema, {"num_experts": 4, "hidden": 16, "k": 2}, "")[0]}
TIMING_WORDS = ("seconds", "latency", "throughput")


def strip_timing(row: dict) -> dict:
    return {k: v for k, v in row.items() if not any(word in k for word in TIMING_WORDS)}


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DATA, seed=0)


def test_same_config_and_seed_give_identical_results(tmp_path, digits):
    first = train_variant(TOPK, digits, TRAIN, 0, VariantTree(tmp_path / "a"), torch.device("cpu"))
    second = train_variant(TOPK, digits, TRAIN, 0, VariantTree(tmp_path / "b"), torch.device("cpu"))
    assert strip_timing(first) == strip_timing(second)
    curves = [[strip_timing(r) for r in read_jsonl(tmp_path / d / "metrics.jsonl")] for d in "ab"]
    assert curves[0] == curves[1] and len(curves[0]) == 6


def test_interrupted_training_resumes_to_the_same_result(tmp_path, digits):
    straight = train_variant(TOPK, digits, TRAIN, 0, VariantTree(tmp_path / "straight"), torch.device("cpu"))
    out = VariantTree(tmp_path / "resumed")
    epochs_seen = []
    with pytest.raises(StopRequested):
        train_variant(TOPK, digits, TRAIN, 0, out, torch.device("cpu"),
                      stop_requested=lambda: len(epochs_seen) >= 3,
                      on_epoch=lambda history: epochs_seen.append(history[-1]["epoch"]))
    assert epochs_seen == [0, 1, 2] and not out.results_file.exists() and out.last_checkpoint.exists()
    # a torn half-epoch line written after the checkpoint must not survive the resume
    with open(out.metrics_file, "a") as f:
        f.write('{"epoch": 3, "train_lo')
    resumed = train_variant(TOPK, digits, TRAIN, 0, out, torch.device("cpu"))
    assert strip_timing(resumed) == strip_timing(straight)
    assert [r["epoch"] for r in read_jsonl(out.metrics_file)] == list(range(6))


def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping(patience=2, min_delta=0.01)
    assert stopper.update(0.5, 0) and stopper.update(0.6, 1)
    assert not stopper.update(0.605, 2) and not stopper.should_stop  # under min_delta
    assert not stopper.update(0.6, 3) and stopper.should_stop
    assert stopper.best_epoch == 1


def test_a_failing_variant_is_recorded_and_the_others_finish(tmp_path, monkeypatch):
    job = make_job(tmp_path)
    import moelab.train.job as job_module

    real = job_module.train_variant

    def flaky(variant, *args, **kwargs):
        if variant["name"] == "moe":
            raise RuntimeError("expert exploded\nsecond line")
        return real(variant, *args, **kwargs)

    monkeypatch.setattr(job_module, "train_variant", flaky)
    outcome = run_job(job.path)
    assert outcome.state == "failed" and outcome.errors == {"moe": "RuntimeError: expert exploded"}
    status = read_json(job.status_file)
    assert status["state"] == "failed" and status["attempts"] == 1
    assert status["variants"]["moe"]["state"] == "failed" and "Traceback" in status["variants"]["moe"]["traceback"]
    assert {n for n, v in status["variants"].items() if v["state"] == "done"} == {"mlp", "moe_topk", "moe_hard"}
    assert not job.variant("moe").results_file.exists()
    # a rerun trains only what is missing
    monkeypatch.setattr(job_module, "train_variant", real)
    trained = []
    monkeypatch.setattr(job_module, "train_variant", lambda v, *a, **k: trained.append(v["name"]) or real(v, *a, **k))
    assert run_job(job.path).state == "done" and trained == ["moe"]
    assert read_json(job.status_file)["attempts"] == 2


def test_a_claimed_job_is_not_run_twice(tmp_path):
    from moelab.results.claims import try_claim

    job = make_job(tmp_path)
    with try_claim(job):
        assert run_job(job.path).state == "busy"
    assert not job.status_file.exists()


def test_results_and_expert_analysis_of_a_job(tmp_path):
    job = make_job(tmp_path)
    assert run_job(job.path).state == "done"
    results = read_json(job.variant("moe_hard").results_file)
    assert {"test_acc", "test_acc@soft", "num_parameters", "best_epoch", "epochs_trained"} <= set(results)
    line = json.loads(job.variant("moe_topk").metrics_file.read_text().splitlines()[-1])
    assert len(line["train_expert_load"]) == 4 and sum(line["train_expert_load"]) == pytest.approx(1.0)
    assert "train_aux_cv_balance" in line and 0 <= line["train_load_entropy"] <= 1
    analysis = job.variant("moe_topk").path / "analysis"
    for name in ("utilisation.csv", "gates_per_batch.csv", "test_routing.csv", "class_expert.csv",
                 "expert_class_accuracy.csv", "inference.json"):
        assert (analysis / name).is_file(), name
    topk = read_json(job.variant("moe_topk").results_file)
    assert topk["active_parameters"] < topk["num_parameters"] and topk["latency_ms"] > 0
    assert topk["active_parameters@soft"] == topk["num_parameters"] - 64 * 4  # soft: every expert; the noise layer only trains
    assert (job.variant("mlp").path / "analysis" / "inference.json").is_file()
    assert not (job.variant("mlp").path / "analysis" / "utilisation.csv").exists()


ZOO = {
    "mlp": {"hidden": 128},
    "cnn": {"width": 8},
    "moe": {"hidden": 64, "num_experts": 5},
    "moe_topk": {"hidden": 64, "num_experts": 5, "k": 2},
    "moe_hard": {"hidden": 64, "num_experts": 5},
    "moe_switch": {"hidden": 64, "num_experts": 5},
    "moe_guided": {"hidden": 64, "num_experts": 5},
    "moe_annealed": {"hidden": 64, "num_experts": 5, "anneal_temperature": True, "gate_noise": True,
                     "balanced_init": True, "z_loss": 1e-3, "diversity": 0.05, "kl_uniform": 0.05},
}


@pytest.fixture(scope="module")
def full_digits():
    return load_dataset(dataclasses.replace(DATA, max_train_samples=None), seed=0)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_variant_learns_digits_and_repeats_itself(name, full_digits, tmp_path):
    model = "moe_hard" if name == "moe_annealed" else name
    variant = {"name": name, "model": model,
               **check_section(get_model_spec(model).schema, ZOO[name], "")[0]}
    train = TrainSettings.from_dict({**TRAIN_SECTION, "epochs": 15, "early_stopping": {"patience": 15, "min_delta": 0.0}})
    first = train_variant(variant, full_digits, train, 0, VariantTree(tmp_path / "a"), torch.device("cpu"))
    assert first["test_acc"] > 0.88, first["test_acc"]
    history = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    if name == "moe_guided":
        assert history[-1]["train_guide_agreement"] > 0.9  # the gate learned the assigned experts
        assert first["test_guide_agreement"] > 0.8
    if name == "moe_switch":
        assert 0 <= history[-1]["train_dropped"] < 0.5
    if name != "cnn":  # the same seed gives identical results
        second = train_variant(variant, full_digits, train, 0, VariantTree(tmp_path / "b"), torch.device("cpu"))
        assert strip_timing(first) == strip_timing(second)


def test_a_running_variant_redraws_its_curves(tmp_path, digits, monkeypatch):
    import moelab.train.job as job_module

    monkeypatch.setattr(job_module, "LIVE_PLOT_MIN_SECONDS", 0.0)  # these epochs take milliseconds
    seen = []
    out = VariantTree(tmp_path / "v")
    curves = job_module.LiveCurves(2, "acc", out)

    def on_epoch(history):
        curves(history)
        seen.append((history[-1]["epoch"], out.curves_plot.exists()))

    train_variant(TOPK, digits, TrainSettings.from_dict({**TRAIN_SECTION, "epochs": 5}), 0, out, torch.device("cpu"),
                  on_epoch=on_epoch)
    assert seen == [(0, False), (1, True), (2, True), (3, True), (4, True)]  # drawn after epoch 2, refreshed
    assert out.curves_plot.stat().st_size > 10_000

def test_checkpoint_last_tests_the_weights_after_the_last_epoch(tmp_path, digits):
    last = dataclasses.replace(TRAIN, checkpoint="last")
    out = VariantTree(tmp_path / "last")
    results = train_variant(TOPK, digits, last, 0, out, torch.device("cpu"))
    final = torch.load(out.last_checkpoint, weights_only=False)["model"]
    tested = torch.load(out.best_weights, weights_only=True)
    assert all(torch.equal(final[k], tested[k]) for k in final)  # best.pt keeps the weights tested
    best = train_variant(TOPK, digits, TRAIN, 0, VariantTree(tmp_path / "best"), torch.device("cpu"))
    assert results["epochs_trained"] == best["epochs_trained"] == 6
    if best["best_epoch"] != 5:  # the best validation epoch was not the last: other weights were tested
        assert results["test_loss"] != best["test_loss"]
