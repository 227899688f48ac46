"""What the experts did, written by every job next to each variant's results (folder analysis/).

    utilisation.csv            per epoch and expert: share of training samples (first choice), mean
                               gate probability, load CV, normalised entropy, collapsed (< 1 % of samples)
    gates_per_batch.csv        per epoch, batch and expert: share of the batch's samples
    test_routing.csv           per test sample: label, prediction, its share of the test metric
                               (correct: 1/0, or squared_error for regression: the report's paired
                               test resamples them), and for MoE models the chosen experts and weights
    class_expert.csv           test samples of each class (rows) sent to each expert (columns)
    expert_class_accuracy.csv  each expert's own accuracy on each class (classification)
    inference.json             per routing: latency at batch 1, throughput at batch 1024, active
                               parameters and FLOPs per sample, test metric
    confusion.csv              test confusion matrix, rows true class, columns predicted (classification)
    roc.csv                    one-vs-rest ROC curve points of every class from the test probabilities
                               (classification); the per-class and macro AUCs go into results.json

Models without experts get inference.json, test_routing.csv (without experts), confusion.csv and
roc.csv. The headline numbers also go into results.json.

Language models (`write_language_analysis`) get inference.json (per window and per byte),
utilisation.csv and gates_per_batch.csv (loads averaged over MoE layers), test_routing.csv (per test
window: its bits per byte, for the paired tests) and token_type_expert.csv: for each MoE layer, the
test tokens of each byte type (letter, digit, whitespace, punctuation, other) routed first to each expert.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import time
from pathlib import Path

import torch

from moelab.data import CLASSIFICATION, LANGUAGE_MODELING
from moelab.data.task_data import TaskData
from moelab.results.io import write_text
from moelab.results.tree import AnalysisFiles
from moelab.train.evaluate import Predictions, evaluate, predict
from moelab.train.settings import TrainSettings
from moelab.train.tasks import TASKS


def write_expert_analysis(model, data: TaskData, history: list[dict], settings: TrainSettings,
                          files: AnalysisFiles) -> dict:
    if data.task == LANGUAGE_MODELING:
        return write_language_analysis(model, data, history, settings, files)
    model.eval()
    results: dict = {}
    inference = {}
    modes = [None, *model.routing_modes()]
    for mode in modes:
        with model.use_routing(mode):
            inference[mode or "inferred"] = _inference(model, data, settings)
    write_text(files.inference, json.dumps(inference, indent=2) + "\n")
    for mode, figures in inference.items():
        suffix = "" if mode == "inferred" else f"@{mode}"
        results.update({f"{k}{suffix}": v for k, v in figures.items() if not k.startswith("test_")})

    if data.task == CLASSIFICATION:
        _write_confusion(model, data, settings, files)
        results.update(_write_roc(model, data, settings, files))
    predictions = predict(model, data.x_test, data.task, settings.eval_batch_size)
    _write_test_predictions(predictions, data, files)
    with torch.no_grad():
        probe = model(data.x_test[:2])
    if probe.gate_probs is None:
        return results
    num_experts = probe.gate_probs.shape[1]
    _write_utilisation(history, num_experts, files)
    results.update(_routing_analysis(model, predictions, data, settings, num_experts, files))
    results.update(_final_routing(history))
    return results


def _final_routing(history: list[dict]) -> dict:
    """The last epoch's routing figures, for results.json."""
    results = {}
    final = history[-1] if history else {}
    results.update({k: final[f"train_{k}"] for k in ("load_cv", "load_entropy", "collapsed_experts", "dead_expert_fraction",
                                                     "effective_experts", "max_vio") if f"train_{k}" in final})
    results["num_collapsed_experts"] = len(results.get("collapsed_experts", []))
    if "test_routing_flip_rate" in final:  # absent after a single epoch
        results["routing_flip_rate"] = final["test_routing_flip_rate"]
    # models with several MoE layers: each layer's own figures
    results.update({k[len("train_"):]: v for k, v in final.items() if k.startswith("train_layer")})
    results.update({k[len("test_"):]: v for k, v in final.items() if k.startswith("test_layer")})
    return results


@torch.no_grad()
def _inference(model, data: TaskData, settings: TrainSettings) -> dict:
    task = TASKS[data.task]
    one = data.x_test[:1]
    repeats = -(-1024 // len(data.x_test))
    batch = data.x_test.repeat(repeats, 1)[:1024]
    latency = _median_seconds(lambda: model(one), runs=30)
    throughput = 1024 / _median_seconds(lambda: model(batch), runs=5)
    score = evaluate(model, data.x_test, data.y_test, data.task, settings.eval_batch_size)[task.primary]
    return {"latency_ms": latency * 1000, "throughput": throughput, "active_parameters": model.active_parameters(),
            "flops_per_sample": model.flops_per_sample(data.d_in), f"test_{task.primary}": score}


def _median_seconds(call, runs: int) -> float:
    for _ in range(3):  # warm-up
        call()
    timings = []
    for _ in range(runs):
        _synchronize()
        started = time.perf_counter()
        call()
        _synchronize()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _write_utilisation(history: list[dict], num_experts: int, files: AnalysisFiles) -> None:
    rows = [[r["epoch"], e, r["train_expert_load"][e], r["train_gate_mean"][e], r["train_load_cv"],
             r["train_load_entropy"], e in r["train_collapsed_experts"]]
            for r in history if "train_expert_load" in r for e in range(num_experts)]
    _write_csv(files.utilisation, ["epoch", "expert", "share", "mean_gate", "load_cv", "load_entropy", "collapsed"], rows)
    rows = [[r["epoch"], b, e, shares[e]] for r in history if "train_batch_expert_load" in r
            for b, shares in enumerate(r["train_batch_expert_load"]) for e in range(num_experts)]
    _write_csv(files.gates_per_batch, ["epoch", "batch", "expert", "share"], rows)


def _write_test_predictions(predictions: Predictions, data: TaskData, files: AnalysisFiles) -> None:
    """One row per test sample, for every variant: the report pairs two variants of a job sample by
    sample (same test set), so its test accounts for the test set's sampling noise."""
    classification = data.task == CLASSIFICATION
    labels = data.y_test.cpu()
    outputs = predictions.outputs
    if classification:
        share = ["correct", (predictions.predicted == labels).int().tolist()]
    else:
        share = ["squared_error", (outputs - labels.reshape(outputs.shape)).pow(2).mean(dim=1).tolist()]
    index, weights = predictions.experts, predictions.expert_weights
    k = index.shape[1] if index is not None else 0
    header = ["sample", "label", "prediction", share[0]] + [f"expert_{i + 1}" for i in range(k)] + [
        f"weight_{i + 1}" for i in range(k)]
    rows = [[i, labels[i].tolist() if not classification else int(labels[i]),
             int(predictions.predicted[i]) if classification else outputs[i].tolist(), share[1][i],
             *(index[i].tolist() if k else []), *([round(w, 6) for w in weights[i].tolist()] if k else [])]
            for i in range(len(labels))]
    _write_csv(files.test_routing, header, rows)


@torch.no_grad()
def _routing_analysis(model, predictions: Predictions, data: TaskData, settings: TrainSettings, num_experts: int,
                      files: AnalysisFiles) -> dict:
    first = predictions.experts[:, 0]
    labels = data.y_test.cpu()
    results = {"test_expert_share": torch.bincount(first, minlength=num_experts).div(len(first)).tolist()}
    if data.task != CLASSIFICATION:
        return results
    classes = predictions.outputs.shape[1]
    matrix = torch.zeros(classes, num_experts, dtype=torch.long)
    matrix.index_put_((labels, first), torch.ones(len(labels), dtype=torch.long), accumulate=True)
    _write_csv(files.class_expert, ["class"] + [f"expert_{e}" for e in range(num_experts)],
               [[c, *matrix[c].tolist()] for c in range(classes)])
    bs = settings.eval_batch_size
    expert_predictions = torch.cat([model.expert_outputs(data.x_test[i : i + bs]).cpu() for i in range(0, len(data.x_test), bs)])
    correct = (expert_predictions.argmax(dim=2) == labels[:, None]).float()  # [T, E]
    rows = []
    for c in range(classes):
        mask = labels == c
        rows.append([c, *(correct[mask].mean(0).tolist() if mask.any() else [float("nan")] * num_experts)])
    _write_csv(files.expert_class_accuracy, ["class"] + [f"expert_{e}" for e in range(num_experts)], rows)
    # specialisation: share of test samples whose first expert is the one that sees most of their class
    results["routing_purity"] = float(matrix.max(dim=1).values.sum() / matrix.sum())
    assigned = model.assigned_experts(data.y_test)
    if assigned is not None:
        results["test_guide_agreement"] = float((first == assigned.cpu()).float().mean())
    return results


@torch.no_grad()
def _write_confusion(model, data: TaskData, settings: TrainSettings, files: AnalysisFiles) -> None:
    bs = settings.eval_batch_size
    predicted = torch.cat([model(data.x_test[i : i + bs]).y.argmax(dim=1) for i in range(0, len(data.x_test), bs)])
    classes = data.d_out
    matrix = torch.bincount(data.y_test * classes + predicted, minlength=classes * classes).view(classes, classes)
    _write_csv(files.confusion, ["true"] + [f"predicted_{c}" for c in range(classes)],
               [[c, *matrix[c].tolist()] for c in range(classes)])


def _write_roc(model, data: TaskData, settings: TrainSettings, files: AnalysisFiles) -> dict:
    """One-vs-rest ROC curve of each class from the test probabilities: its points to roc.csv, its area
    as test_auc_class_<c>, and their mean over the classes as test_auc_macro. A class needs positive and
    negative test samples to have a curve; classes absent from the test set are left out of the mean."""
    from sklearn.metrics import auc, roc_curve

    probabilities = predict(model, data.x_test, data.task, settings.eval_batch_size).outputs.numpy()
    labels = data.y_test.cpu().numpy()
    rows, results = [], {}
    for c in range(probabilities.shape[1]):
        positive = labels == c
        if positive.all() or not positive.any():
            continue
        false_positive, true_positive, thresholds = roc_curve(positive, probabilities[:, c])
        results[f"test_auc_class_{c}"] = float(auc(false_positive, true_positive))
        rows += [[c, fp, tp, t] for fp, tp, t in zip(false_positive.tolist(), true_positive.tolist(), thresholds.tolist())]
    _write_csv(files.roc, ["class", "false_positive_rate", "true_positive_rate", "threshold"], rows)
    if results:
        results["test_auc_macro"] = statistics.fmean(results.values())
    return results


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


TOKEN_TYPES = ("letter", "digit", "whitespace", "punctuation", "other")


def token_types(token_ids: torch.Tensor) -> torch.Tensor:
    """Each byte's type, an index into TOKEN_TYPES (ASCII classes; bytes of multi-byte UTF-8 are other)."""
    table = torch.full((256,), TOKEN_TYPES.index("other"), dtype=torch.long)
    for byte in range(128):
        char = chr(byte)
        if char.isalpha():
            table[byte] = 0
        elif char.isdigit():
            table[byte] = 1
        elif char.isspace():
            table[byte] = 2
        elif char.isprintable():
            table[byte] = 3
    return table[token_ids.long().cpu()]


@torch.no_grad()
def write_language_analysis(model, data: TaskData, history: list[dict], settings: TrainSettings,
                            files: AnalysisFiles) -> dict:
    model.eval()
    inference = {"inferred": _window_inference(model, data, settings)}
    write_text(files.inference, json.dumps(inference, indent=2) + "\n")
    results = {k: v for k, v in inference["inferred"].items() if not k.startswith("test_")}
    predictions = predict(model, data.x_test, data.task, settings.eval_batch_size)
    targets = data.y_test.long().cpu()
    # each window's bits per byte: the windows tile the test block, so their mean is the test bpb
    bits = -predictions.outputs.gather(2, targets.unsqueeze(2)).squeeze(2).clamp_min(1e-30).log2()
    _write_csv(files.test_routing, ["sample", "bits_per_byte"], [[i, b] for i, b in enumerate(bits.mean(dim=1).tolist())])
    if predictions.experts is None:
        return results
    first = predictions.experts[..., 0]  # [N, T, L]
    layers, num_experts = first.shape[2], len(history[-1]["train_expert_load"]) if history else int(first.max()) + 1
    _write_utilisation(history, num_experts, files)
    types = token_types(data.x_test).reshape(-1)
    rows, purity = [], []
    for layer in range(layers):
        matrix = torch.zeros(len(TOKEN_TYPES), num_experts, dtype=torch.long)
        matrix.index_put_((types, first[:, :, layer].reshape(-1).long()), torch.ones(len(types), dtype=torch.long),
                          accumulate=True)
        rows += [[layer, name, *matrix[t].tolist()] for t, name in enumerate(TOKEN_TYPES)]
        purity.append(float(matrix.max(dim=1).values.sum() / matrix.sum()))
    _write_csv(files.token_type_expert, ["layer", "token_type"] + [f"expert_{e}" for e in range(num_experts)], rows)
    # specialisation: share of test tokens whose first expert is the one that takes most of their type
    results["token_type_purity"] = sum(purity) / len(purity)
    results["test_expert_share"] = torch.bincount(first.reshape(-1).long(), minlength=num_experts).div(first.numel()).tolist()
    results.update(_final_routing(history))
    return results


@torch.no_grad()
def _window_inference(model, data: TaskData, settings: TrainSettings) -> dict:
    task = TASKS[data.task]
    one = data.x_test[:1]
    batch = data.x_test.repeat(-(-64 // len(data.x_test)), 1)[:64]
    latency = _median_seconds(lambda: model(one), runs=10)
    throughput = len(batch) / _median_seconds(lambda: model(batch), runs=3)
    context = data.x_test.shape[1]
    score = evaluate(model, data.x_test, data.y_test, data.task, settings.eval_batch_size)[task.primary]
    flops = model.flops_per_sample(data.d_in)
    return {"latency_ms": latency * 1000, "throughput": throughput, "tokens_per_second": throughput * context,
            "active_parameters": model.active_parameters(), "flops_per_sample": flops,
            "flops_per_token": flops // context, f"test_{task.primary}": score}
