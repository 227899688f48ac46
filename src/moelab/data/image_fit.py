"""Fit an image as a function (x, y) -> RGB: the signal-fitting regression task.

Inputs are pixel coordinates in [-1, 1] with `fourier_features` sine/cosine bands per coordinate
(plain coordinates are too smooth for an MLP to fit detail); targets are RGB in [0, 1]. Pixels are
split at random into train/val/test. The default image ships with matplotlib.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from moelab.data.registry import REGRESSION
from moelab.data.settings import DataSettings
from moelab.data.task_data import TaskData

DEFAULT_IMAGE = "grace_hopper.jpg"  # in matplotlib's bundled sample data


def image_path(settings: DataSettings) -> Path:
    if settings.image:
        return Path(settings.image)
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / DEFAULT_IMAGE


def check(name: str, settings: DataSettings) -> list[str]:
    path = image_path(settings)
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError) as error:
        return [f"cannot read image {str(path)!r}: {error}; give data.image a PNG or JPEG file"]
    return []


def coordinate_features(height: int, width: int, bands: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    coords = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)
    features = [coords]
    for band in range(bands):
        scaled = coords * (math.pi * 2**band)
        features += [torch.sin(scaled), torch.cos(scaled)]
    return torch.cat(features, dim=1)


def load(name: str, settings: DataSettings, seed: int) -> TaskData:
    size = settings.resolution
    with Image.open(image_path(settings)) as image:
        pixels = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    inputs = coordinate_features(size, size, settings.fourier_features)
    targets = torch.from_numpy(pixels.reshape(-1, 3))
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(settings.test_fraction * len(order)))
    n_val = int(round(settings.val_fraction * len(order)))
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return TaskData(
        REGRESSION, inputs[train], targets[train], inputs[val], targets[val], inputs[test], targets[test],
        d_out=3, render_inputs=inputs, render_targets=targets, render_shape=(size, size, 3),
    )

