"""scikit-learn's bundled 8x8 handwritten digits: 1,797 images, 10 classes, no download."""

from __future__ import annotations

import numpy as np
import torch

from moelab.data.registry import CLASSIFICATION, DatasetSpec, TaskData, register
from moelab.data.splits import standardise, stratified_split, subsample


def load(cfg: dict, seed: int) -> TaskData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    rest, test = stratified_split(y, cfg["test_fraction"], seed)
    # val fraction is of the whole set, so the three fractions read as shares of the 1,797 images
    train, val = stratified_split(y[rest], cfg["val_fraction"] / (1 - cfg["test_fraction"]), seed)
    train, val = rest[train], rest[val]
    train = train[subsample(y[train], cfg["max_train_samples"], seed)]
    xs = standardise(*(torch.from_numpy(x[i]) for i in (train, val, test)))
    ys = [torch.from_numpy(y[i]) for i in (train, val, test)]
    return TaskData(CLASSIFICATION, xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], d_out=10, info={"image_shape": [8, 8]})


register(DatasetSpec("digits", CLASSIFICATION, ("test_fraction",), lambda cfg: [], load,
                     "scikit-learn's bundled 8x8 digits (1,797 images, 10 classes)", images=True))
