"""scikit-learn's bundled 8x8 handwritten digits: 1,797 images, 10 classes, no download."""

from __future__ import annotations

import numpy as np
import torch

from moelab.data.registry import CLASSIFICATION
from moelab.data.settings import DataSettings
from moelab.data.splits import standardise, stratified_split, subsample
from moelab.data.task_data import TaskData


def load(name: str, settings: DataSettings, seed: int) -> TaskData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    rest, test = stratified_split(y, settings.test_fraction, seed)
    # val fraction is of the whole set, so the three fractions read as shares of the 1,797 images
    train, val = stratified_split(y[rest], settings.val_fraction / (1 - settings.test_fraction), seed)
    train, val = rest[train], rest[val]
    train = train[subsample(y[train], settings.max_train_samples, seed)]
    xs = standardise(*(torch.from_numpy(x[i]) for i in (train, val, test)))
    ys = [torch.from_numpy(y[i]) for i in (train, val, test)]
    return TaskData(CLASSIFICATION, xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], d_out=10,
                    input_shape=(8, 8))

