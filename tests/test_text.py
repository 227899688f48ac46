"""Byte-level language modelling: the text dataset, the causal transformers, bits per byte, generation."""

from __future__ import annotations

import math

import pytest
import torch

from moelab.data import DataSettings, load_dataset
from moelab.data.text import split_sizes
from moelab.launch.cli import main
from moelab.models import build_model, get_model_spec
from moelab.models.base import count_parameters
from moelab.results.io import read_jsonl
from moelab.results.tree import VariantTree
from moelab.train.evaluate import complete, evaluate
from moelab.train.settings import TrainSettings
from moelab.train.trainer import StopRequested, train_variant

CONTEXT = 16
SMALL = {"d_model": 16, "layers": 2, "heads": 2, "d_ff": 32, "dropout": 0.0}
# every router a causal model allows, and the options that change how tokens reach experts
ALLOWED = {
    "dense": ("transformer", {}),
    "top1": ("moe_transformer", {"num_experts": 4}),
    "top2 noisy": ("moe_transformer", {"num_experts": 4, "k": 2, "noisy_gating": True}),
    "capacity": ("moe_transformer", {"num_experts": 4, "capacity_factor": 0.5}),
    "bias": ("moe_transformer", {"num_experts": 4, "balance": "bias"}),
    "hash": ("moe_transformer", {"num_experts": 4, "router": "hash", "balance": "none"}),
    "shared fine": ("moe_transformer", {"num_experts": 2, "granularity": 2, "shared_experts": 1, "moe_every": 2}),
}


def coded_corpus(path, size: int = 6000) -> tuple[DataSettings, tuple[int, int, int]]:
    """A corpus whose train, validation and test blocks use disjoint byte ranges, so a window's bytes
    tell which block it came from."""
    settings = DataSettings(name="text", path=str(path), context=CONTEXT)
    sizes = split_sizes(size, settings)
    generator = torch.Generator().manual_seed(0)
    parts = [torch.randint(low, low + 40, (n,), generator=generator) for low, n in zip((40, 80, 120), sizes)]
    path.write_bytes(bytes(torch.cat(parts).tolist()))
    return settings, sizes


def test_splits_are_contiguous_blocks_that_never_overlap_and_tile_validation_and_test(tmp_path):
    settings, (train, val, test) = coded_corpus(tmp_path / "corpus.txt")
    data = load_dataset(settings, seed=3)
    corpus = torch.tensor(list((tmp_path / "corpus.txt").read_bytes()))
    # training windows (inputs and next bytes) only hold training bytes, but the very next byte
    for x, low in ((data.x_train, 40), (data.x_val, 80), (data.x_test, 120)):
        assert x.shape[1] == CONTEXT and x.long().min() >= low and x.long().max() < low + 40
    assert data.y_train.long().max() < 80 and data.y_val.long().max() < 120 and data.y_val.long().min() >= 80
    # validation and test windows tile their block: every byte predicted once, in order
    val_block, test_block = corpus[train:train + val], corpus[train + val:]
    assert torch.equal(data.x_val.reshape(-1).long(), val_block[:data.x_val.numel()])
    assert torch.equal(data.y_val.reshape(-1).long(), val_block[1:data.y_val.numel() + 1])
    assert torch.equal(data.y_test.reshape(-1).long(), test_block[1:data.y_test.numel() + 1])
    assert len(data.x_train) == (train - 1) // CONTEXT
    # windows are drawn by the seed: the same seed, the same windows; another seed, others
    assert torch.equal(load_dataset(settings, seed=3).x_train, data.x_train)
    assert not torch.equal(load_dataset(settings, seed=4).x_train, data.x_train)


def test_the_default_corpus_ships_with_python():
    data = load_dataset(DataSettings(name="text", context=32, max_train_samples=50), seed=0)
    assert data.x_train.shape == (50, 32) and data.d_out == 256 and len(data.x_test) > 1000


@pytest.mark.parametrize("case", sorted(ALLOWED))
@pytest.mark.parametrize("training", [False, True])
def test_changing_a_later_byte_never_changes_earlier_outputs(case, training):
    model_name, params = ALLOWED[case]
    torch.manual_seed(0)
    model = build_model(model_name, CONTEXT, 256, {**SMALL, **params})
    model.train(training)
    x = torch.randint(0, 256, (4, CONTEXT))
    for t in (0, 7, CONTEXT - 2):
        changed = x.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % 256
        torch.manual_seed(1)
        before = model(x).y
        torch.manual_seed(1)  # the same gate noise for both
        after = model(changed).y
        assert torch.allclose(before[:, :t + 1], after[:, :t + 1], atol=1e-5), (case, t)
        assert not torch.allclose(before[:, t + 1:], after[:, t + 1:], atol=1e-5), "the change reached no output"


def test_parameter_counts_without_torch_equal_the_built_models():
    for name, params in ALLOWED.values():
        for extra in ({}, {"d_ff": 48, "layers": 3}):
            spec, merged = get_model_spec(name), {**SMALL, **params, **extra}
            counts = spec.parameter_counts(CONTEXT, 256, merged)
            built = build_model(name, CONTEXT, 256, merged)
            assert counts.total == count_parameters(built), (name, merged)
            assert counts.active == built.active_parameters()


def test_bits_per_byte_are_the_hand_computed_mean_negative_log2_probability():
    torch.manual_seed(0)
    model = build_model("moe_transformer", CONTEXT, 256, {**SMALL, "num_experts": 2}).eval()
    x, y = torch.randint(0, 256, (5, CONTEXT), dtype=torch.uint8), torch.randint(0, 256, (5, CONTEXT), dtype=torch.uint8)
    scores = evaluate(model, x, y, "language_modeling", batch_size=2)
    with torch.no_grad():
        probabilities = model(x).y.double().softmax(dim=-1)
    by_hand = -probabilities.gather(2, y.long().unsqueeze(2)).log2().mean().item()
    assert scores["bpb"] == pytest.approx(by_hand, rel=1e-6)
    assert scores["perplexity"] == pytest.approx(2 ** by_hand, rel=1e-5)
    assert scores["loss"] == pytest.approx(by_hand * math.log(2), rel=1e-6)


def test_a_text_variant_resumes_from_its_checkpoint_to_the_same_metrics(tmp_path):
    settings, _ = coded_corpus(tmp_path / "corpus.txt", size=4000)
    data = load_dataset(settings, seed=0)
    variant = {"name": "moe", "model": "moe_transformer", **SMALL, "num_experts": 4, "balance": "bias"}
    train = TrainSettings(epochs=4, batch_size=32, checkpoint="last")
    straight = train_variant(variant, data, train, 0, VariantTree(tmp_path / "straight"), torch.device("cpu"))
    out, seen = VariantTree(tmp_path / "resumed"), []
    with pytest.raises(StopRequested):
        train_variant(variant, data, train, 0, out, torch.device("cpu"), stop_requested=lambda: len(seen) >= 2,
                      on_epoch=lambda history: seen.append(history[-1]["epoch"]))
    resumed = train_variant(variant, data, train, 0, out, torch.device("cpu"))
    timing = ("seconds", "latency", "throughput", "tokens_per_second")
    same = lambda row: {k: v for k, v in row.items() if not any(word in k for word in timing)}
    assert same(resumed) == same(straight)
    assert [same(r) for r in read_jsonl(out.metrics_file)] == [same(r) for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl")]
    # bits per byte are the primary metric, lower is better; per-layer router health is recorded
    assert straight["metric"] == "bpb" and straight["best_val_bpb"] == min(r["val_bpb"] for r in read_jsonl(out.metrics_file))
    assert {"layer0_max_vio", "layer1_max_vio", "token_type_purity"} <= set(straight)


def test_a_completion_is_greedy_or_seeded_and_names_the_experts_of_every_byte():
    torch.manual_seed(0)
    model = build_model("moe_transformer", CONTEXT, 256, {**SMALL, "num_experts": 4, "k": 2})
    greedy = complete(model, b"hello", 20)
    assert len(greedy.generated) == 20 and greedy == complete(model, b"hello", 20)
    assert [len(layers) for layers in greedy.experts] == [2] * 20  # two MoE layers, k = 2 each
    assert all(len(chosen) == 2 for layers in greedy.experts for chosen in layers)
    drawn = [complete(model, b"hello", 20, temperature=1.5, seed=s).generated for s in (0, 0, 1)]
    assert drawn[0] == drawn[1] != drawn[2]
    with pytest.raises(ValueError):
        complete(model, b"", 5)


REFUSED_ROUTERS = {"expert_choice": "router=expert_choice leaks the future", "sinkhorn": "router=sinkhorn leaks the future"}


@pytest.mark.parametrize("router", sorted(REFUSED_ROUTERS))
def test_routers_that_read_later_tokens_are_refused(router, write_experiment, tmp_path, monkeypatch, capsys):
    path = write_experiment({"name": "leak", "data": {"name": "text"}, "train": {"epochs": 1},
                             "variants": [{"name": "m", "model": "moe_transformer", "router": router}]})
    monkeypatch.chdir(tmp_path)
    assert main(["run_here", str(path), "--experiments-dir", "out"]) == 2
    stderr = capsys.readouterr().err
    assert REFUSED_ROUTERS[router] in stderr and "variants.m" in stderr, stderr
    assert not (tmp_path / "out").exists()


def bad_corpora(tmp_path) -> dict:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 20)
    (tmp_path / "short.txt").write_text("a few words only\n" * 3)
    (tmp_path / "no_text").mkdir()
    return {"missing": (str(tmp_path / "nowhere.txt"), "does not exist"), "empty": (str(tmp_path / "empty.txt"), "is empty"),
            "binary": (str(tmp_path / "binary.txt"), "looks binary"),
            "too short": (str(tmp_path / "short.txt"), "fewer than one window"),
            "folder without text": (str(tmp_path / "no_text"), "holds no .txt file")}


@pytest.mark.parametrize("case", ["missing", "empty", "binary", "too short", "folder without text"])
def test_a_corpus_that_cannot_train_exits_2_before_anything_is_written(case, write_experiment, tmp_path, monkeypatch, capsys):
    path, expected = bad_corpora(tmp_path)[case]
    experiment = write_experiment({"name": "bad", "data": {"name": "text", "path": path, "context": 64},
                                   "train": {"epochs": 1}, "variants": [{"name": "d", "model": "transformer"}]})
    monkeypatch.chdir(tmp_path)
    assert main(["run_here", str(experiment), "--experiments-dir", "out"]) == 2
    stderr = capsys.readouterr().err
    assert expected in stderr and "data" in stderr, stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model, data, expected", [
    ("transformer", "digits", "reads windows of bytes"),
    ("mlp", "text", "gives windows of bytes for language modelling"),
])
def test_models_and_data_that_do_not_fit_are_refused(model, data, expected, write_experiment, tmp_path, monkeypatch, capsys):
    experiment = write_experiment({"name": "mismatch", "data": {"name": data}, "train": {"epochs": 1},
                                   "variants": [{"name": "v", "model": model}]})
    monkeypatch.chdir(tmp_path)
    assert main(["run_here", str(experiment), "--experiments-dir", "out"]) == 2
    assert expected in capsys.readouterr().err


def test_matched_dense_transformers_have_the_moe_variants_sizes(write_experiment):
    from moelab.config import load_experiment

    path = write_experiment({"name": "matched", "data": {"name": "text", "context": 32}, "train": {"epochs": 1},
                             "baseline": {"variant": "dense", "match": ["active", "total"]},
                             "variants": [{"name": "dense", "model": "transformer", **SMALL},
                                          {"name": "moe", "model": "moe_transformer", **SMALL, "num_experts": 4}]})
    experiment = load_experiment(path)
    variants = {v["name"]: v for v in experiment.jobs()[0].config["variants"]}
    moe = get_model_spec("moe_transformer").parameter_counts(32, 256, {**SMALL, "num_experts": 4})
    for kind in ("active", "total"):
        dense = variants[f"transformer_{kind}_moe"]
        assert dense["model"] == "transformer" and dense["d_model"] == SMALL["d_model"]
        count = get_model_spec("transformer").parameter_counts(32, 256, {k: v for k, v in dense.items() if k not in ("name", "model")}).total
        assert abs(count - getattr(moe, kind)) <= SMALL["layers"] * (2 * SMALL["d_model"] + 1)  # one unit of d_ff
