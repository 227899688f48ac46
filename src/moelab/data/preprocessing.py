"""What a raw input of each dataset looks like, and the exact transform training applied to it.

Models are trained on standardised inputs (train-split statistics, `splits.standardise`), so a new
input must be transformed with the statistics of the same training split. `input_preprocessing`
rebuilds that split from the raw data the way the loader does, takes the statistics through
`standardise` itself, and checks the result against the loader's own tensors: if a loader ever
changes how it splits or scales, predictions stop with an error instead of going silently wrong.

Raw inputs, one sample each (the API and the `predict` command take these):

    digits          (8, 8)       pixel values 0 (background) to 16 (ink), as scikit-learn ships them
    mnist           (28, 28)     0 (black background) to 1 (white ink), as torchvision reads them / 255
    fashion_mnist   (28, 28)     0 (black background) to 1 (white item)
    cifar10         (3, 32, 32)  RGB, channels first, 0 to 1
    image_fit       (2,)         pixel coordinates (x, y) in [-1, 1], (-1, -1) the top-left corner
    text            a prompt     text (UTF-8) that a language model continues (train/evaluate.complete)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from moelab.data.registry import get_dataset_spec, load_dataset
from moelab.data.settings import DataSettings
from moelab.data.splits import standardise, stratified_split, subsample

# the loader's standardised training inputs and ours may differ by float32 rounding only
MATCH_TOLERANCE = 1e-4


@dataclass(frozen=True)
class RawFormat:
    """One raw sample of a dataset."""

    shape: tuple[int, ...]
    low: float  # the value range of raw inputs
    high: float
    description: str
    channels: int | None = None  # image datasets: 1 (grey) or 3 (RGB); None: not an image
    # image datasets: the share of the frame that the longer side of a drawing fills when an
    # uploaded picture is cropped to its ink and centred (digits are scaled to fill the 8x8 frame,
    # MNIST digits to a 20x20 box in 28x28); None: the picture is resized whole
    drawing_box: float | None = None
    text: bool = False  # a text prompt, continued by a language model

    @property
    def is_image(self) -> bool:
        return self.channels is not None

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "low": self.low, "high": self.high, "description": self.description,
                "image": self.is_image, "channels": self.channels,
                "text": self.text}


RAW_FORMATS = {
    "digits": RawFormat((8, 8), 0.0, 16.0, "8x8 grey image, pixel values 0 (background) to 16 (ink)",
                        channels=1, drawing_box=1.0),
    "mnist": RawFormat((28, 28), 0.0, 1.0, "28x28 grey image, 0 (black background) to 1 (white ink)",
                       channels=1, drawing_box=20 / 28),
    "fashion_mnist": RawFormat((28, 28), 0.0, 1.0, "28x28 grey image, 0 (black background) to 1 (white item)",
                               channels=1),
    "cifar10": RawFormat((3, 32, 32), 0.0, 1.0, "32x32 RGB image, channels first, values 0 to 1", channels=3),
    "image_fit": RawFormat((2,), -1.0, 1.0, "pixel coordinates (x, y) in [-1, 1], (-1, -1) the top-left corner"),
}


class PreprocessingMismatch(RuntimeError):
    """The rebuilt preprocessing does not reproduce the loader's training inputs."""


@dataclass
class InputPreprocessing:
    """Turns raw samples [N, *raw.shape] into the model inputs [N, d_in] training used."""

    dataset: str
    task: str
    raw: RawFormat
    d_in: int
    d_out: int
    input_shape: tuple[int, ...] | None  # what models are built with (TaskData.input_shape)
    offset: torch.Tensor | None = None  # standardised = offset + raw * scale, per input value
    scale: torch.Tensor | None = None
    fourier_features: int | None = None  # image_fit: sine/cosine bands per coordinate

    def __call__(self, raw: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(raw, dtype=np.float32)).reshape(len(raw), -1)
        if self.fourier_features is not None:
            return coordinate_bands(x, self.fourier_features)
        return self.offset + x * self.scale


def input_preprocessing(settings: DataSettings, seed: int) -> InputPreprocessing:
    """The preprocessing of the dataset `settings` names, split by `seed`, checked against its loader.
    Loads the dataset once: callers keep the result (one per data settings and seed)."""
    spec = get_dataset_spec(settings.name)
    if spec.tokens:  # byte ids as they are: nothing was fitted to the training split
        context = settings.context
        return InputPreprocessing(settings.name, spec.task, RawFormat((context,), 0.0, 255.0, f"a text prompt (UTF-8); "
                                  f"the model reads its last {context} bytes", text=True), context, 256, None)
    data = load_dataset(settings, seed)
    raw_format = RAW_FORMATS[settings.name]
    if settings.name == "image_fit":
        prep = InputPreprocessing(settings.name, spec.task, raw_format, data.d_in, data.d_out, data.input_shape,
                                  fourier_features=settings.fourier_features)
        size = settings.resolution
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        raw, expected = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), data.render_inputs
    else:
        raw, channels = _raw_training_inputs(settings, seed)
        probe = torch.stack([torch.zeros(raw.shape[1]), torch.ones(raw.shape[1])])
        # the statistics come out of standardise itself: (0 - mean) / std and (1 - mean) / std
        _, standard_probe = standardise(raw, probe, per_channel=channels)
        offset, scale = standard_probe[0], standard_probe[1] - standard_probe[0]
        prep = InputPreprocessing(settings.name, spec.task, raw_format, data.d_in, data.d_out, data.input_shape,
                                  offset=offset, scale=scale)
        expected = data.x_train
    got = prep(raw)
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=MATCH_TOLERANCE, rtol=0):
        raise PreprocessingMismatch(
            f"the preprocessing rebuilt for {settings.name} (seed {seed}) does not reproduce the loader's training "
            f"inputs; moelab.data.preprocessing must follow the changes to moelab.data.{spec.implementation}")
    return prep


def coordinate_bands(coords: torch.Tensor, bands: int) -> torch.Tensor:
    """image_fit's inputs for (x, y) coordinates [N, 2]: the coordinates and their sine/cosine bands."""
    features = [coords]
    for band in range(bands):
        scaled = coords * (math.pi * 2**band)
        features += [torch.sin(scaled), torch.cos(scaled)]
    return torch.cat(features, dim=1)


def _raw_training_inputs(settings: DataSettings, seed: int) -> tuple[torch.Tensor, int | None]:
    """The raw training split [N, d_in] the loader standardised with, and its per_channel argument."""
    if settings.name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
        rest, _ = stratified_split(y, settings.test_fraction, seed)
        train, _ = stratified_split(y[rest], settings.val_fraction / (1 - settings.test_fraction), seed)
        train = rest[train]
        train = train[subsample(y[train], settings.max_train_samples, seed)]
        return torch.from_numpy(x[train]), None
    from moelab.data import torchvision_sets as sets

    class_name, channels = sets.CLASSES[settings.name]
    x_full, y_full = sets._arrays(sets._open(sets._dataset_class(class_name), settings.root, train=True))
    train, _ = stratified_split(y_full, settings.val_fraction, seed)
    train = train[subsample(y_full[train], settings.max_train_samples, seed)]
    return torch.from_numpy(x_full[train].reshape(len(train), -1)), channels
