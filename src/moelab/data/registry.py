"""The table of datasets that experiment files name: task, the data keys each reads, implementation.

Each implementation is a module of this package with `check(name, settings) -> [problems]` (missing
files: they stop a launch before anything runs) and `load(name, settings, seed) -> TaskData` (tensors
on the CPU). The table imports a module only to check or load: validating an experiment file must
not pay for importing torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from typing import Callable

from moelab.data.settings import COMMON_KEYS, DataSettings

CLASSIFICATION, REGRESSION, LANGUAGE_MODELING = "classification", "regression", "language_modeling"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str  # CLASSIFICATION, REGRESSION or LANGUAGE_MODELING
    options: tuple[str, ...]  # data.* keys this dataset reads beyond the common ones
    implementation: str  # module inside moelab.data
    description: str
    # (d_in, d_out) from the settings alone: parameter counts are computed without loading the data
    dimensions: Callable[[DataSettings], tuple[int, int]]
    # the image shape behind a sample's flat input (TaskData.input_shape), or None: not images
    input_shape: tuple[int, ...] | None = None
    # False: nothing on disk to check (the data ships with a library), so checking a config does
    # not import the loader and torch with it (the launcher then starts without torch)
    has_files: bool = True

    @property
    def tokens(self) -> bool:
        """Samples are windows of byte ids: sequence models (transformers) read them, and only they."""
        return self.task == LANGUAGE_MODELING

    @property
    def images(self) -> bool:
        """Samples are images: convolutional models can read them."""
        return self.input_shape is not None

    def check(self, settings: DataSettings) -> list[str]:
        return self._module().check(self.name, settings) if self.has_files else []

    def load(self, settings: DataSettings, seed: int):
        return self._module().load(self.name, settings, seed)

    def _module(self):
        return importlib.import_module(f"moelab.data.{self.implementation}")


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("digits", CLASSIFICATION, ("test_fraction",), "digits",
                "scikit-learn's bundled 8x8 digits (1,797 images, 10 classes)", lambda s: (64, 10), (8, 8),
                has_files=False),
    DatasetSpec("mnist", CLASSIFICATION, (), "torchvision_sets", "MNIST handwritten digits, torchvision format",
                lambda s: (784, 10), (28, 28)),
    DatasetSpec("fashion_mnist", CLASSIFICATION, (), "torchvision_sets", "Fashion-MNIST, torchvision format",
                lambda s: (784, 10), (28, 28)),
    DatasetSpec("cifar10", CLASSIFICATION, (), "torchvision_sets", "CIFAR-10, torchvision format",
                lambda s: (3 * 32 * 32, 10), (3, 32, 32)),
    # (x, y) and a sine and a cosine of each per band -> RGB
    DatasetSpec("image_fit", REGRESSION, ("test_fraction", "image", "resolution", "fourier_features"), "image_fit",
                "fit an image as (x, y) -> RGB (matplotlib's sample photo by default)",
                lambda s: (2 + 4 * s.fourier_features, 3)),
    # inputs: a window of `context` byte ids; outputs: the next byte's 256 logits at every position
    DatasetSpec("text", LANGUAGE_MODELING, ("test_fraction", "path", "context"), "text",
                "byte-level causal language modelling (CPython's help texts by default, or data.path)",
                lambda s: (s.context, 256)),
)}


def get_dataset_spec(name: str) -> DatasetSpec:
    return DATASETS[name]


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def dataset_keys(data: dict) -> dict:
    """Exactly the data keys the dataset reads (defaults for missing ones, e.g. after a grid changed
    data.name), so settings another dataset reads never change a job's key."""
    used = set(COMMON_KEYS) | set(get_dataset_spec(data["name"]).options)
    defaults = DataSettings()
    return {f.name: data.get(f.name, getattr(defaults, f.name)) for f in fields(DataSettings) if f.name in used}


def dataset_dimensions(data: dict) -> tuple[int, int]:
    """(d_in, d_out) of the dataset a job's data section names, without loading it."""
    settings = DataSettings(**data)
    return get_dataset_spec(settings.name).dimensions(settings)


def load_dataset(settings: DataSettings, seed: int):
    return get_dataset_spec(settings.name).load(settings, seed)
