"""A dataset in memory: the three splits as tensors, batched by index (no per-sample DataLoader)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TaskData:
    task: str  # CLASSIFICATION, REGRESSION or LANGUAGE_MODELING (registry.py)
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    d_out: int  # number of classes, or of regression outputs
    # the shape of one sample behind its flat input vector, (C, H, W) or (H, W), for image datasets
    input_shape: tuple[int, ...] | None = None
    # image_fit: the inputs and targets of every pixel and the (H, W, 3) shape to render the image in
    render_inputs: torch.Tensor | None = None
    render_targets: torch.Tensor | None = None
    render_shape: tuple[int, ...] | None = None

    @property
    def d_in(self) -> int:
        return self.x_train.shape[1]

    def to(self, device: torch.device) -> "TaskData":
        moved = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return TaskData(**{**vars(self), **moved})

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.x_train), "val": len(self.x_val), "test": len(self.x_test)}
