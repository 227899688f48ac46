"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision's own dataset classes, from `data.root`.

Nothing is downloaded: the files must already be in torchvision's on-disk layout (data/README.md).
The official training set is split into train/val by the seed; the official test set is the test set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from moelab.data.registry import CLASSIFICATION
from moelab.data.settings import DataSettings
from moelab.data.splits import standardise, stratified_split, subsample
from moelab.data.task_data import TaskData

README_HINT = "see data/README.md for how to put the files there (no download happens at run time)"


def _dataset_class(name: str) -> type:
    import torchvision  # imported when used: a launch that validates digits need not pay for it

    return getattr(torchvision.datasets, name)


def _expected_location(cls: type, root: str) -> Path:
    folder = getattr(cls, "base_folder", None)  # CIFAR: <root>/cifar-10-batches-py
    return Path(root) / folder if folder else Path(root) / cls.__name__ / "raw"


def _open(cls: type, root: str, train: bool):
    try:
        return cls(root=root, train=train, download=False)
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(
            f"{cls.__name__} files not found or corrupt in {_expected_location(cls, root)} ({error}); {README_HINT}"
        ) from None


def _arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    data = dataset.data
    data = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if data.ndim == 4:  # CIFAR stores N x H x W x C
        data = data.transpose(0, 3, 1, 2)
    targets = dataset.targets
    targets = targets.numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    return data.astype(np.float32) / 255.0, targets.astype(np.int64)


# dataset name -> (torchvision class, image channels)
CLASSES = {"mnist": ("MNIST", 1), "fashion_mnist": ("FashionMNIST", 1), "cifar10": ("CIFAR10", 3)}


def check(name: str, settings: DataSettings) -> list[str]:
    cls = _dataset_class(CLASSES[name][0])
    for train in (True, False):
        try:
            _open(cls, settings.root, train)
        except FileNotFoundError as error:
            return [str(error)]
    return []


def load(name: str, settings: DataSettings, seed: int) -> TaskData:
    class_name, channels = CLASSES[name]
    cls = _dataset_class(class_name)
    x_full, y_full = _arrays(_open(cls, settings.root, train=True))
    x_test, y_test = _arrays(_open(cls, settings.root, train=False))
    train, val = stratified_split(y_full, settings.val_fraction, seed)
    train = train[subsample(y_full[train], settings.max_train_samples, seed)]
    flat = lambda a: torch.from_numpy(a.reshape(len(a), -1))
    xs = standardise(flat(x_full[train]), flat(x_full[val]), flat(x_test), per_channel=channels)
    ys = [torch.from_numpy(y) for y in (y_full[train], y_full[val], y_test)]
    return TaskData(CLASSIFICATION, xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], d_out=10,
                    input_shape=tuple(x_test.shape[1:]))
