"""The dense digits baseline against scikit-learn's MLPClassifier, and what closes the gap.

    python benchmarks/digits_baseline.py [--seeds 10]

For seeds 0..N-1 (a seed fixes the split and the initialisation): scikit-learn's
MLPClassifier((128,)) on its usual stratified 80/20 split and on moelab's 70/15/15 split (trained
on the 70 %, tested on the same 15 % as moelab), and moelab's `mlp` variant of
experiments/configs/default.yaml trained by `train_variant` itself, testing the weights of the best
validation epoch (patience 15: the earlier default) or the weights after the last epoch (the
default now). Prints test accuracy, mean +- std over seeds, and seconds per run. One thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from moelab.config import load_experiment
from moelab.data import DataSettings, load_dataset
from moelab.data.splits import stratified_split
from moelab.results.tree import VariantTree
from moelab.train.settings import TrainSettings
from moelab.train.trainer import train_variant


def sklearn_accuracy(seed: int, moelab_split: bool) -> float:
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x, y = digits.data / 16.0, digits.target
    if moelab_split:  # moelab's test set and training set (digits.py: test first, then val from the rest)
        rest, test = stratified_split(y, 0.15, seed)
        train, _ = stratified_split(y[rest], 0.15 / 0.85, seed)
        train = rest[train]
    else:
        train, test = stratified_split(y, 0.2, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier(hidden_layer_sizes=(128,), random_state=seed).fit(x[train], y[train])
    return float((model.predict(x[test]) == y[test]).mean())


def moelab_accuracy(variant: dict, data: dict, train: TrainSettings, seed: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        results = train_variant(variant, load_dataset(DataSettings(**data), seed), train, seed,
                                VariantTree(Path(folder) / variant["name"]), torch.device("cpu"))
    return results["test_acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    experiment = load_experiment("experiments/configs/default.yaml")
    variant = next(v for v in experiment.doc["variants"] if v["model"] == "mlp")
    data = experiment.jobs()[0].config["data"]
    default = TrainSettings.from_dict(experiment.doc["train"])
    best_epoch = dataclasses.replace(default, checkpoint="best",
                                     early_stopping=dataclasses.replace(default.early_stopping, patience=15))
    rows = [
        ("sklearn MLP(128,), inputs /16", "80/20", lambda s: sklearn_accuracy(s, moelab_split=False)),
        ("sklearn MLP(128,), inputs /16", "70/15/15", lambda s: sklearn_accuracy(s, moelab_split=True)),
        ("moelab mlp, best val epoch, patience 15", "70/15/15", lambda s: moelab_accuracy(variant, data, best_epoch, s)),
        ("moelab mlp, last epoch (default)", "70/15/15", lambda s: moelab_accuracy(variant, data, default, s)),
    ]
    print(f"{'setting':<42} {'split':<9} {'test acc %':>14} {'n':>3} {'s/run':>6}")
    for name, split, run in rows:
        started = time.perf_counter()
        scores = [100 * run(seed) for seed in range(args.seeds)]
        seconds = (time.perf_counter() - started) / args.seeds
        spread = statistics.stdev(scores) if len(scores) > 1 else float("nan")
        print(f"{name:<42} {split:<9} {np.mean(scores):>7.2f} ± {spread:4.2f} {len(scores):>3} {seconds:>6.1f}")


if __name__ == "__main__":
    main()
