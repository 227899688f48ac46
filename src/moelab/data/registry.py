"""Dataset registry: experiment files name datasets; each knows how to check and load itself.

Datasets are small enough to live in memory as tensors (on the GPU when training there); the trainer
batches them by index, with no per-sample DataLoader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

CLASSIFICATION, REGRESSION = "classification", "regression"


@dataclass
class TaskData:
    task: str  # CLASSIFICATION or REGRESSION
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    d_out: int  # number of classes, or of regression outputs
    # image_fit: the inputs of every pixel and the image shape, to render the fitted image
    render_inputs: torch.Tensor | None = None
    image_shape: tuple[int, ...] | None = None
    info: dict = field(default_factory=dict)

    @property
    def d_in(self) -> int:
        return self.x_train.shape[1]

    def to(self, device: torch.device) -> "TaskData":
        moved = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return TaskData(**{**vars(self), **moved})

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.x_train), "val": len(self.x_val), "test": len(self.x_test)}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str
    options: tuple[str, ...]  # data.* keys this dataset reads beyond the common ones
    check: Callable[[dict], list[str]]  # problems that stop a launch (missing files), given data config
    load: Callable[[dict, int], TaskData]  # (data config, seed) -> tensors on the CPU
    description: str
    images: bool = False  # samples are images (info["image_shape"]): convolutional models can read them


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> None:
    if spec.name in DATASETS:
        raise ValueError(f"dataset {spec.name!r} registered twice")
    DATASETS[spec.name] = spec


def get_dataset_spec(name: str) -> DatasetSpec:
    _load_builtin_datasets()
    return DATASETS[name]


def dataset_names() -> list[str]:
    _load_builtin_datasets()
    return sorted(DATASETS)


def load_dataset(data_cfg: dict, seed: int) -> TaskData:
    return get_dataset_spec(data_cfg["name"]).load(data_cfg, seed)


def _load_builtin_datasets() -> None:
    from moelab.data import digits, image_fit, torchvision_sets  # noqa: F401  (register on import)
