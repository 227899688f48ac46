"""train.precision, train.compile and train.deterministic: each trains, resumes and is recorded."""

from __future__ import annotations

import pytest
import torch

from moelab.data import DataSettings, load_dataset
from moelab.results.io import read_jsonl
from moelab.results.tree import VariantTree
from moelab.train.settings import TrainSettings
from moelab.train.trainer import StopRequested, train_variant

VARIANT = {"name": "moe", "model": "moe_routed", "hidden": 16, "num_experts": 4, "k": 2}


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataSettings(name="digits", max_train_samples=300), seed=0)


def without_timing(row: dict) -> dict:
    return {k: v for k, v in row.items() if not any(w in k for w in ("seconds", "latency", "throughput"))}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_resumes_exactly_and_is_recorded(precision, digits, tmp_path):
    settings = TrainSettings(epochs=4, batch_size=32, precision=precision)
    straight = train_variant(VARIANT, digits, settings, 0, VariantTree(tmp_path / "straight"), torch.device("cpu"))
    plain = train_variant(VARIANT, digits, TrainSettings(epochs=4, batch_size=32), 0, VariantTree(tmp_path / "fp32"),
                          torch.device("cpu"))
    assert straight["execution"] == {"precision": precision, "compiled": False, "deterministic": False}
    assert straight["test_loss"] != plain["test_loss"]  # autocast really ran the forward pass in low precision
    out, seen = VariantTree(tmp_path / "resumed"), []
    with pytest.raises(StopRequested):
        train_variant(VARIANT, digits, settings, 0, out, torch.device("cpu"), stop_requested=lambda: len(seen) >= 2,
                      on_epoch=lambda history: seen.append(history[-1]["epoch"]))
    if precision == "fp16":  # the loss scale is part of the state
        assert "grad_scaler" in torch.load(out.last_checkpoint, weights_only=False)
    resumed = train_variant(VARIANT, digits, settings, 0, out, torch.device("cpu"))
    assert without_timing(resumed) == without_timing(straight)


def test_deterministic_algorithms_hold_for_the_training_only(digits, tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    results = train_variant(VARIANT, digits, TrainSettings(epochs=1, deterministic=True), 0, VariantTree(tmp_path / "d"),
                            torch.device("cpu"))
    assert results["execution"]["deterministic"] is True
    assert torch.are_deterministic_algorithms_enabled() == before


def test_a_model_that_cannot_compile_trains_eagerly_with_a_message(digits, tmp_path, monkeypatch, capsys):
    def failing_compile(model):
        def call(*args, **kwargs):
            raise RuntimeError("no backend for this platform")
        return call

    monkeypatch.setattr(torch, "compile", failing_compile)
    compiled = train_variant(VARIANT, digits, TrainSettings(epochs=2, compile=True), 0, VariantTree(tmp_path / "c"),
                             torch.device("cpu"))
    eager = train_variant(VARIANT, digits, TrainSettings(epochs=2), 0, VariantTree(tmp_path / "e"), torch.device("cpu"))
    assert "train.compile: torch.compile failed (RuntimeError: no backend for this platform)" in capsys.readouterr().err
    assert compiled["execution"]["compiled"] is False
    assert [without_timing(r) for r in read_jsonl(tmp_path / "c" / "metrics.jsonl")] == \
        [without_timing(r) for r in read_jsonl(tmp_path / "e" / "metrics.jsonl")]
