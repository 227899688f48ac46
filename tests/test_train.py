"""Training one job: determinism, resume after an interruption, failures recorded per variant."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY, launch, make_job
from moelab.config import load_experiment
from moelab.models import build_model, get_model_spec, model_params
from moelab.data import DataSettings, load_dataset
from moelab.results.io import read_json, read_jsonl, write_json
from moelab.results.status import JobState
from moelab.results.tree import JobTree, VariantTree
from moelab.schema import check_section
from moelab.train.job import run_job
from moelab.train.settings import TrainSettings
from moelab.train.evaluate import predict
from moelab.train.trainer import EarlyStopping, StopRequested, routing_balance, train_variant
from moelab.train import trainer

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
    import moelab.train.trainer as trainer_module

    real = trainer_module.finish

    def flaky(variant, *args, **kwargs):  # moe fails; moe_hard, which shares its training, does not
        if variant["name"] == "moe":
            raise RuntimeError("expert exploded\nsecond line")
        return real(variant, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "finish", flaky)
    outcome = run_job(job.path)
    assert outcome.state == "failed" and outcome.errors == {"moe": "RuntimeError: expert exploded"}
    status = read_json(job.status_file)
    assert status["state"] == "failed" and status["attempts"] == 1
    assert status["variants"]["moe"]["state"] == "failed" and "Traceback" in status["variants"]["moe"]["traceback"]
    assert {n for n, v in status["variants"].items() if v["state"] == "done"} == {"mlp", "moe_topk", "moe_hard"}
    assert not job.variant("moe").results_file.exists()
    # a rerun trains only what is missing
    monkeypatch.setattr(trainer_module, "finish", real)
    trained, real_members = [], job_module.train_members
    monkeypatch.setattr(job_module, "train_members",
                        lambda members, *a, **k: trained.extend(m.variant["name"] for m in members) or real_members(members, *a, **k))
    assert run_job(job.path).state == "done" and trained == ["moe"]
    assert read_json(job.status_file)["attempts"] == 2


def test_a_claimed_job_is_not_run_twice(tmp_path):
    from moelab.results.claims import try_claim

    job = make_job(tmp_path)
    with try_claim(job):
        assert run_job(job.path).state is JobState.RUNNING
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


def test_routing_balance_counts_dead_experts_under_one_percent_and_effective_experts():
    balanced = routing_balance([0.25] * 4)
    assert balanced["dead_expert_fraction"] == 0.0 and balanced["effective_experts"] == pytest.approx(4.0)
    assert routing_balance([1.0, 0.0, 0.0, 0.0])["effective_experts"] == pytest.approx(1.0)
    uneven = routing_balance([0.6, 0.395, 0.005, 0.0])  # 0.5 % counts as dead, like no sample at all
    assert uneven["collapsed_experts"] == [2, 3] and uneven["dead_expert_fraction"] == 0.5
    entropy = -sum(p * math.log(p) for p in (0.6, 0.395, 0.005))
    assert uneven["effective_experts"] == pytest.approx(math.exp(entropy))


def test_router_health_per_epoch_and_the_test_routing_flip_rate(tmp_path, digits, monkeypatch):
    """The flip rate is checked against the test routing of the weights saved after each epoch."""
    out = VariantTree(tmp_path / "v")
    saved = []
    write = trainer.CheckpointWriter.write

    def keep(self, path, obj):  # every checkpoint as it is handed to the writer
        write(self, path, obj)
        if path == out.last_checkpoint:
            saved.append(self._pending[-1][1])

    monkeypatch.setattr(trainer.CheckpointWriter, "write", keep)
    results = train_variant(TOPK, digits, TrainSettings.from_dict({**TRAIN_SECTION, "epochs": 3}), 0, out,
                            torch.device("cpu"))
    lines = read_jsonl(out.metrics_file)
    model = build_model("moe_topk", digits.d_in, digits.d_out, model_params(TOPK))
    first_experts = []
    for state in saved:
        model.load_state_dict(state["model"])
        first_experts.append(predict(model, digits.x_test, digits.task).experts[:, 0])
        assert torch.equal(state["test_experts"], first_experts[-1])
    assert "test_routing_flip_rate" not in lines[0]  # nothing to compare the first epoch with
    for epoch in (1, 2):
        changed = (first_experts[epoch] != first_experts[epoch - 1]).float().mean().item()
        assert lines[epoch]["test_routing_flip_rate"] == pytest.approx(changed)
    for line in lines:
        load = line["train_expert_load"]
        assert line["train_dead_expert_fraction"] == sum(share < 0.01 for share in load) / len(load)
        assert line["train_effective_experts"] == pytest.approx(math.exp(-sum(p * math.log(p) for p in load if p > 0)))
    assert results["dead_expert_fraction"] == lines[-1]["train_dead_expert_fraction"]
    assert results["effective_experts"] == lines[-1]["train_effective_experts"]
    assert results["routing_flip_rate"] == lines[-1]["test_routing_flip_rate"]


def test_a_diverging_variant_fails_with_a_clear_error_and_the_others_finish(tmp_path):
    # an auxiliary weight beyond float32's range makes the first step's loss infinite: NaN weights after it
    job = make_job(tmp_path, ["variants.moe.z_loss=1e39"])
    outcome = run_job(job.path)
    assert outcome.errors == {"moe": "TrainingDiverged: diverged at epoch 0 (train loss nan)"}
    status = read_json(job.status_file)
    assert status["variants"]["moe"]["state"] == "failed"
    assert {n for n, v in status["variants"].items() if v["state"] == "done"} == {"mlp", "moe_topk", "moe_hard"}
    line = read_jsonl(job.variant("moe").metrics_file)[-1]
    assert line["epoch"] == 0 and math.isnan(line["train_loss"])  # the diverged epoch is shown
    assert not job.variant("moe").last_checkpoint.exists() and not job.variant("moe").results_file.exists()


def test_a_huge_learning_rate_stops_every_model_with_the_divergence_error(tmp_path):
    """Before the check, NaN router logits failed deep inside torch (moe_topk's load estimate)."""
    job = make_job(tmp_path, ["train.lr=1e6", "train.epochs=3"])
    outcome = run_job(job.path)
    assert set(outcome.errors) == {"mlp", "moe", "moe_topk", "moe_hard"}
    for variant, error in outcome.errors.items():
        assert re.fullmatch(r"TrainingDiverged: diverged at epoch \d \((train|validation) loss (nan|inf)\)", error), error


def test_roc_curves_and_auc_from_the_test_probabilities(finished_job):
    """AUC checked against its definition: the chance that a positive outscores a negative (ties half)."""
    spec = read_json(finished_job.config_file)
    data = load_dataset(DataSettings(**spec["config"]["data"]), spec["config"]["seed"])
    variant = next(v for v in spec["config"]["variants"] if v["name"] == "moe_topk")
    model = build_model(variant["model"], data.d_in, data.d_out, model_params(variant))
    model.load_state_dict(torch.load(finished_job.variant("moe_topk").best_weights, weights_only=True))
    probabilities = predict(model, data.x_test, data.task).outputs
    results = read_json(finished_job.variant("moe_topk").results_file)
    roc = pd.read_csv(finished_job.variant("moe_topk").analysis.roc)
    for c in range(data.d_out):
        positive, negative = probabilities[data.y_test == c, c], probabilities[data.y_test != c, c]
        wins = (positive[:, None] > negative[None, :]).double() + 0.5 * (positive[:, None] == negative[None, :]).double()
        assert results[f"test_auc_class_{c}"] == pytest.approx(wins.mean().item(), abs=1e-6)
        curve = roc[roc["class"] == c]
        assert (curve.iloc[0][["false_positive_rate", "true_positive_rate"]] == 0).all()
        assert (curve.iloc[-1][["false_positive_rate", "true_positive_rate"]] == 1).all()
        area = np.trapezoid(curve["true_positive_rate"], curve["false_positive_rate"])
        assert area == pytest.approx(results[f"test_auc_class_{c}"])
    assert results["test_auc_macro"] == pytest.approx(np.mean([results[f"test_auc_class_{c}"] for c in range(10)]))


def test_a_longer_job_continues_a_shorter_one_exactly_when_the_schedule_does_not_depend_on_epochs(tmp_path, digits):
    constant = {**TRAIN_SECTION, "schedule": "constant", "warmup_epochs": 0}
    short, longer = (TrainSettings.from_dict({**constant, "epochs": n}) for n in (3, 5))
    train_variant(TOPK, digits, short, 0, VariantTree(tmp_path / "jobs" / "short" / "moe_topk"), torch.device("cpu"))
    scratch = train_variant(TOPK, digits, longer, 0, VariantTree(tmp_path / "scratch"), torch.device("cpu"))
    continued_from = {"job": "short", "epochs": 3}
    continued = train_variant(TOPK, digits, longer, 0, VariantTree(tmp_path / "jobs" / "long" / "moe_topk"),
                              torch.device("cpu"), continued_from=continued_from)
    assert continued.pop("provenance") == {"continued_from": continued_from}
    assert strip_timing(continued) == strip_timing(scratch)
    lines = read_jsonl(tmp_path / "jobs" / "long" / "moe_topk" / "metrics.jsonl")
    assert [strip_timing(r) for r in lines] == [strip_timing(r) for r in read_jsonl(tmp_path / "scratch" / "metrics.jsonl")]
    assert lines[:3] == read_jsonl(tmp_path / "jobs" / "short" / "moe_topk" / "metrics.jsonl")  # taken over, timings too


@pytest.mark.parametrize("checkpoint", ["best", "last"])
def test_a_continuation_keeps_the_best_weights_of_the_job_it_continues(tmp_path, digits, checkpoint):
    """The best epoch came before the continuation (min_delta 1.0: no later epoch beats epoch 0): the
    continued job tests the same weights as one trained from zero for all its epochs."""
    early_best = {**TRAIN_SECTION, "schedule": "constant", "warmup_epochs": 0, "checkpoint": checkpoint,
                  "early_stopping": {"patience": 100, "min_delta": 1.0}}
    short, longer = (TrainSettings.from_dict({**early_best, "epochs": n}) for n in (3, 5))
    train_variant(TOPK, digits, short, 0, VariantTree(tmp_path / "jobs" / "short" / "moe_topk"), torch.device("cpu"))
    scratch = train_variant(TOPK, digits, longer, 0, VariantTree(tmp_path / "scratch"), torch.device("cpu"))
    continued = train_variant(TOPK, digits, longer, 0, VariantTree(tmp_path / "jobs" / "long" / "moe_topk"),
                              torch.device("cpu"), continued_from={"job": "short", "epochs": 3})
    continued.pop("provenance")
    assert continued["best_epoch"] == 0 and continued["epochs_trained"] == 5
    assert strip_timing(continued) == strip_timing(scratch)
    weights = [torch.load(tmp_path / folder / "weights" / "best.pt", weights_only=True)
               for folder in ("scratch", "jobs/long/moe_topk")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_a_continued_job_recomputes_the_cosine_schedule_for_its_own_epochs(tmp_path, digits):
    train_variant(TOPK, digits, TrainSettings.from_dict({**TRAIN_SECTION, "epochs": 3}), 0,
                  VariantTree(tmp_path / "jobs" / "short" / "moe_topk"), torch.device("cpu"))
    longer = TrainSettings.from_dict({**TRAIN_SECTION, "epochs": 6})
    train_variant(TOPK, digits, longer, 0, VariantTree(tmp_path / "jobs" / "long" / "moe_topk"), torch.device("cpu"),
                  continued_from={"job": "short", "epochs": 3})
    rates = [r["lr"] for r in read_jsonl(tmp_path / "jobs" / "long" / "moe_topk" / "metrics.jsonl")]
    # warmup 1 epoch, then cosine over the 5 after it: epochs 3-5 as a 6-epoch run has them
    cosine = lambda epoch: 0.5 * (1 + math.cos(math.pi * (epoch - 1) / 5))
    assert rates[3:] == pytest.approx([TRAIN.lr * cosine(e) for e in (3, 4, 5)])
    assert rates[2] == pytest.approx(TRAIN.lr * 0.5 * (1 + math.cos(math.pi * 1 / 2)))  # the 3-epoch schedule's


def test_init_from_weights_must_be_the_ones_the_job_was_made_from(tmp_path, digits):
    source = VariantTree(tmp_path / "source")
    train_variant(TOPK, digits, TrainSettings.from_dict({**TRAIN_SECTION, "epochs": 2}), 0, source, torch.device("cpu"))
    variant = {**TOPK, "init_from": {"path": str(source.best_weights), "sha256": "0" * 64}}
    with pytest.raises(ValueError, match=r"init_from: .*best.pt changed since the experiment was launched"):
        train_variant(variant, digits, TRAIN, 0, VariantTree(tmp_path / "v"), torch.device("cpu"))


def small_experiment(epochs: int, **variant) -> dict:
    moe = {"name": "moe_topk", "model": "moe_topk", "hidden": 16, "k": 2, **variant}
    return {**TINY, "train": {**TINY["train"], "epochs": epochs}, "variants": [TINY["variants"][0], moe], "grid": {}}


@pytest.mark.slow
def test_relaunching_with_more_epochs_trains_only_the_new_ones(write_experiment, tmp_path):
    experiment = write_experiment(small_experiment(3))
    assert launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out", "--no-report").returncode == 0
    longer = launch(tmp_path, "run_here", str(experiment), "train.epochs=5", "--experiments-dir", "out", "--no-report")
    assert longer.returncode == 0, longer.stderr
    short, extended = (JobTree(tmp_path / "out" / "tiny" / "jobs" / load_experiment(experiment, o).jobs()[0].key)
                       for o in ([], ["train.epochs=5"]))
    assert f"{extended.key} continues the finished job {short.key}: 3 -> 5 epochs" in longer.stdout
    for name in ("mlp", "moe_topk"):
        before = short.variant(name).metrics_file.read_text().splitlines()
        after = extended.variant(name).metrics_file.read_text().splitlines()
        # the first three epochs are taken over as they were (their timings too): two were trained
        assert len(after) == 5 and after[:3] == before
        assert read_json(extended.variant(name).results_file)["epochs_trained"] == 5
        assert read_json(extended.variant(name).results_file)["provenance"] == {
            "continued_from": {"job": short.key, "epochs": 3}}
        assert read_json(extended.status_file)["variants"][name]["provenance"] == {
            "continued_from": {"job": short.key, "epochs": 3}}
    assert read_json(extended.config_file)["continued_from"] == {"job": short.key, "epochs": 3}
    # --force trains from zero, without the shorter job
    forced = launch(tmp_path, "run_here", str(experiment), "train.epochs=5", "--force", "--experiments-dir", "out",
                    "--no-report")
    assert forced.returncode == 0 and "continues" not in forced.stdout and "continued_from" not in read_json(extended.config_file)
    assert extended.variant("mlp").metrics_file.read_text().splitlines()[:3] != short.variant("mlp").metrics_file.read_text().splitlines()


@pytest.mark.slow
def test_init_from_a_finished_variant_through_the_launcher(write_experiment, tmp_path):
    assert launch(tmp_path, "run_here", str(write_experiment(small_experiment(2))), "--experiments-dir", "out",
                  "--no-report").returncode == 0
    source = JobTree(next((tmp_path / "out" / "tiny" / "jobs").iterdir())).variant("moe_topk")
    relative = source.path.relative_to(tmp_path)  # from where the launch runs
    doc = {**small_experiment(2, init_from=str(relative)), "name": "started"}
    done = launch(tmp_path, "run_here", str(write_experiment(doc, "started.yaml")), "--experiments-dir", "out", "--no-report")
    assert done.returncode == 0, done.stderr
    job = JobTree(next((tmp_path / "out" / "started" / "jobs").iterdir()))
    first_epoch = lambda tree, name: strip_timing(read_jsonl(tree.variant(name).metrics_file)[0])
    scratch = JobTree(source.path.parent)
    # the same seed and data: the variant without init_from trains as before, the one with it starts ahead
    assert first_epoch(job, "mlp") == first_epoch(scratch, "mlp")
    assert first_epoch(job, "moe_topk")["train_loss"] < first_epoch(scratch, "moe_topk")["train_loss"]
    expected = {"init_from": {"path": str(source.best_weights.resolve()),
                              "sha256": hashlib.sha256(source.best_weights.read_bytes()).hexdigest()}}
    assert read_json(job.variant("moe_topk").results_file)["provenance"] == expected
    assert read_json(job.status_file)["variants"]["moe_topk"]["provenance"] == expected
