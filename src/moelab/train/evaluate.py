"""Scoring a trained model: metrics on a split, test results under each routing, and `predict`.

`predict` is what a prediction server or the `predict` command calls: batched, no gradients, the
class probabilities (or regression outputs) and, for MoE models, which experts each input went to.
`complete` continues a text prompt with a language model, byte by byte, with the experts of each byte.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from moelab.data import CLASSIFICATION, LANGUAGE_MODELING
from moelab.train.settings import TrainSettings
from moelab.train.tasks import TASKS, batch_stats, finish_metrics


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, task_name: str, batch_size: int) -> dict:
    model.eval()
    return evaluate_each(lambda batch: [model(batch[0])], x.unsqueeze(0), y.unsqueeze(0), task_name, batch_size)[0]


@torch.no_grad()
def evaluate_each(outputs_of: Callable[[torch.Tensor], list], x: torch.Tensor, y: torch.Tensor, task_name: str,
                  batch_size: int) -> list[dict]:
    """Metrics of G models at once (trained fused: models/fused.py), each on its own inputs x[g] and
    targets y[g]; `outputs_of(x[:, batch])` gives each model's ModelOutput for its batch."""
    task = TASKS[task_name]
    models, count = x.shape[:2]
    loss_sums = [torch.zeros((), device=x.device) for _ in range(models)]
    sums: list[dict[str, torch.Tensor]] = [{} for _ in range(models)]
    for start in range(0, count, batch_size):
        for g, out in enumerate(outputs_of(x[:, start : start + batch_size])):
            target = y[g, start : start + batch_size]
            loss_sums[g] += task.loss(out.y, target) * len(target)
            for name, value in batch_stats(task_name, out.y, target).items():
                sums[g][name] = sums[g][name] + value if name in sums[g] else value
    results = []
    for loss_sum, model_sums in zip(loss_sums, sums):
        host = {k: v.tolist() for k, v in model_sums.items()}
        results.append({"loss": loss_sum.item() / count, **finish_metrics(task_name, host, count)})
    return results


def test_results(model, data, settings: TrainSettings) -> dict:
    """Test metrics with the model's own inference routing, then under each extra routing mode."""
    results = {}
    for mode in [None, *model.routing_modes()]:
        suffix = f"@{mode}" if mode else ""
        with model.use_routing(mode):
            started = time.perf_counter()
            scores = evaluate(model, data.x_test, data.y_test, data.task, settings.eval_batch_size)
            results.update({f"test_{k}{suffix}": v for k, v in scores.items()})
            results[f"test_seconds{suffix}"] = time.perf_counter() - started
    if model.batch_dependent:
        results["test_batch_dependence"] = batch_dependence(model, data, settings)
    return results


@torch.no_grad()
def batch_dependence(model, data, settings: TrainSettings) -> float:
    """The share of test predictions that change when the test set is batched differently (the batch
    size halved, the order reversed): 0 for a model whose predictions depend on each sample alone."""
    size = max(1, min(settings.eval_batch_size, len(data.x_test)) // 2)
    as_tested = predict(model, data.x_test, data.task, settings.eval_batch_size).outputs
    reversed_half = predict(model, data.x_test.flip(0), data.task, size).outputs.flip(0)
    if data.task == CLASSIFICATION:
        return float((as_tested.argmax(dim=1) != reversed_half.argmax(dim=1)).float().mean())
    return float((~torch.isclose(as_tested, reversed_half, rtol=1e-4, atol=1e-6)).any(dim=1).float().mean())


@dataclass
class Predictions:
    # [N, d_out]: class probabilities (classification) or regression outputs; [N, T, V] next-byte probabilities
    outputs: torch.Tensor
    predicted: torch.Tensor | None  # [N] the most probable class (classification); [N, T] the next byte
    # MoE models: the experts each input went to, best first, and their weights; [N, k]. Under soft
    # routing every expert runs: all of them, ordered by gate probability. Language models: [N, T, L, k],
    # each token's experts in each MoE layer
    experts: torch.Tensor | None
    expert_weights: torch.Tensor | None


@torch.no_grad()
def predict(model, x: torch.Tensor, task: str, batch_size: int = 1024) -> Predictions:
    """Model outputs for inputs `x` ([N, d_in], on the model's device), in batches, on the CPU."""
    model.eval()
    return predict_each(lambda batch: [model(batch[0])], x.unsqueeze(0), task, batch_size)[0]


@torch.no_grad()
def predict_each(outputs_of: Callable[[torch.Tensor], list], x: torch.Tensor, task: str,
                 batch_size: int = 1024) -> list[Predictions]:
    """`predict` for G models at once, each on its own inputs x[g] (see evaluate_each)."""
    models = x.shape[0]
    outputs, experts, weights = [[] for _ in range(models)], [[] for _ in range(models)], [[] for _ in range(models)]
    for start in range(0, x.shape[1], batch_size):
        for g, out in enumerate(outputs_of(x[:, start : start + batch_size])):
            if task == LANGUAGE_MODELING:
                outputs[g].append(out.y.softmax(dim=-1))
                routings = out.routings()
                if routings:  # [B, T, L, k]: every token's experts in every MoE layer
                    shape = (*out.y.shape[:2], len(routings), -1)
                    experts[g].append(torch.stack([r.expert_index for r in routings], dim=1).view(shape))
                    weights[g].append(torch.stack([r.expert_weights for r in routings], dim=1).view(shape))
                continue
            outputs[g].append(out.y.softmax(dim=1) if task == CLASSIFICATION else out.y)
            if out.expert_index is not None:
                experts[g].append(out.expert_index)
                weights[g].append(out.expert_weights)
            elif out.gate_probs is not None:
                sorted_weights, order = out.gate_probs.sort(dim=1, descending=True)
                experts[g].append(order)
                weights[g].append(sorted_weights)
    found = []
    for g in range(models):
        y = torch.cat(outputs[g]).float().cpu()
        found.append(Predictions(
            outputs=y, predicted=y.argmax(dim=-1) if task in (CLASSIFICATION, LANGUAGE_MODELING) else None,
            experts=torch.cat(experts[g]).cpu() if experts[g] else None,
            expert_weights=torch.cat(weights[g]).float().cpu() if weights[g] else None,
        ))
    return found


MAX_GENERATED_BYTES = 2048  # per completion: bounds the time one request can take


@dataclass
class Completion:
    prompt: bytes
    generated: bytes
    # for each generated byte: in each MoE layer, the experts (best first) and weights of the position
    # that predicted it; empty lists for a dense model
    experts: list[list[list[int]]]
    expert_weights: list[list[list[float]]]


@torch.no_grad()
def complete(model, prompt: bytes, length: int, temperature: float = 0.0, seed: int = 0) -> Completion:
    """Continue `prompt` by `length` bytes, one at a time from the last `model.context` bytes: the most
    likely byte (temperature 0) or one drawn from the softmax at that temperature (seeded)."""
    if not 1 <= length <= MAX_GENERATED_BYTES:
        raise ValueError(f"length must be between 1 and {MAX_GENERATED_BYTES}, got {length}")
    if temperature < 0:
        raise ValueError(f"temperature must be 0 (greedy) or more, got {temperature}")
    if not prompt:
        raise ValueError("the prompt is empty: give at least one byte to continue")
    model.eval()
    device = next(model.parameters()).device
    draws = torch.Generator().manual_seed(seed)
    text = bytearray(prompt)
    experts, weights = [], []
    for _ in range(length):
        window = torch.tensor(list(text[-model.context:]), dtype=torch.long, device=device).unsqueeze(0)
        out = model(window)
        logits = out.y[0, -1].float().cpu()
        if temperature == 0:
            byte = int(logits.argmax())
        else:
            byte = int(torch.multinomial((logits / temperature).softmax(dim=0), 1, generator=draws))
        text.append(byte)
        last = window.shape[1] - 1
        experts.append([r.expert_index[last].tolist() for r in out.routings()])
        weights.append([[round(w, 6) for w in r.expert_weights[last].float().tolist()] for r in out.routings()])
    return Completion(bytes(prompt), bytes(text[len(prompt):]), experts, weights)
