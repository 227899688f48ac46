"""No network is trained twice in a job: variants whose training is identical share one, and each ends
exactly as if it had trained alone."""

from __future__ import annotations

import pytest
import torch
import yaml

from conftest import REPO, make_job
from moelab.data import DataSettings, load_dataset
from moelab.results.io import read_json, read_jsonl
from moelab.results.tree import VariantTree
from moelab.train.job import run_job, trainings
from moelab.train.settings import TrainSettings
from moelab.train.trainer import StopRequested, train_variant

def comparable(results: dict) -> dict:
    """Everything but the clock's figures."""
    timing = ("seconds", "latency", "throughput", "device")
    return {k: v for k, v in results.items() if not any(word in k for word in timing)}


def epochs(variant: VariantTree) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_jsonl(variant.metrics_file)]


def test_the_default_grid_trains_three_networks_per_job_not_four():
    variants = yaml.safe_load((REPO / "experiments/configs/default.yaml").read_text())["variants"]
    groups = [[v["name"] for v in group] for group in trainings([{**v, "num_experts": 4} if v["model"] != "mlp" else v
                                                                  for v in variants])]
    assert groups == [["mlp"], ["moe", "moe_hard"], ["moe_topk"]]


def test_equal_dense_variants_share_and_different_ones_do_not():
    mlp = {"model": "mlp", "hidden": 32}
    groups = trainings([{"name": "a", **mlp}, {"name": "b", **mlp}, {"name": "c", **mlp, "hidden": 33},
                        {"name": "d", "model": "moe_topk"}, {"name": "e", "model": "moe_topk", "noisy_gating": False}])
    assert [[v["name"] for v in g] for g in groups] == [["a", "b"], ["c"], ["d"], ["e"]]


# patience 1 and the best weights tested: moe stops after 4 epochs, moe_hard (same training) after 5
SETTINGS = ["train.epochs=10", "train.early_stopping.patience=1", "train.checkpoint=best", "train.lr=0.02"]


@pytest.fixture(scope="module")
def shared_job(tmp_path_factory):
    job = make_job(tmp_path_factory.mktemp("shared"), SETTINGS)
    trained = []
    import moelab.train.trainer as trainer_module

    real = trainer_module.train_one_epoch
    trainer_module.train_one_epoch = lambda model, *a, **k: trained.append(id(model)) or real(model, *a, **k)
    try:
        assert run_job(job.path).state == "done"
    finally:
        trainer_module.train_one_epoch = real
    return job, len(set(trained))


def test_a_shared_training_trains_one_network_for_moe_and_moe_hard(shared_job):
    job, networks = shared_job
    assert networks == 3  # mlp, moe + moe_hard, moe_topk
    status = read_json(job.status_file)["variants"]
    assert status["moe_hard"]["trained_with"] == "moe" and status["moe"]["trained_with"] == "moe"
    assert status["mlp"].get("trained_with") is None
    stopped = [read_json(job.variant(name).results_file)["epochs_trained"] for name in ("moe", "moe_hard")]
    assert stopped[0] != stopped[1]  # one went on training after the other had been tested


@pytest.mark.parametrize("name", ["moe", "moe_hard"])
def test_each_sharing_variant_ends_exactly_as_if_trained_alone(shared_job, name, tmp_path):
    job, _ = shared_job
    spec = read_json(job.config_file)["config"]
    variant = next(v for v in spec["variants"] if v["name"] == name)
    data = load_dataset(DataSettings(**spec["data"]), spec["seed"])
    alone = VariantTree(tmp_path / name)
    results = train_variant(variant, data, TrainSettings.from_dict(spec["train"]), spec["seed"], alone, torch.device("cpu"))
    shared = job.variant(name)
    assert comparable(read_json(shared.results_file)) == comparable(results)
    assert epochs(shared) == epochs(alone)


def test_a_shared_training_stopped_midway_resumes_to_the_same_results(shared_job, tmp_path):
    job, _ = shared_job
    again = make_job(tmp_path, SETTINGS)
    metrics = again.variant("moe_hard").metrics_file
    with pytest.raises(StopRequested):  # inside the shared training of moe and moe_hard, after two epochs
        run_job(again.path, stop_requested=lambda: metrics.exists() and len(read_jsonl(metrics)) >= 2)
    for name in ("moe", "moe_hard"):  # stopped inside their shared training
        assert again.variant(name).last_checkpoint.exists() and not again.variant(name).results_file.exists()
    assert run_job(again.path).state == "done"
    for name in ("moe", "moe_hard"):
        assert comparable(read_json(again.variant(name).results_file)) == comparable(read_json(job.variant(name).results_file))
        assert epochs(again.variant(name)) == epochs(job.variant(name))
