"""The `data:` section of an experiment file, as the typed object datasets receive.

config/ builds the section's schema from this dataclass; a job's config.json holds only the keys its
dataset reads (`registry.dataset_keys`), the others take these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from moelab.schema import param


@dataclass(frozen=True)
class DataSettings:
    name: str = param("digits", "dataset name")
    root: str = param("data", "folder holding torchvision-format datasets")
    val_fraction: float = param(0.15, "share held out for validation", min=0.0, max=0.5, exclusive_min=True)
    test_fraction: float = param(0.15, "share held out for test", min=0.0, max=0.5, exclusive_min=True)
    max_train_samples: int | None = param(None, "stratified subsample of the training set", min=1, nullable=True,
                                          kind=int)
    image: str | None = param(None, "image_fit: image file (default: matplotlib's sample)", nullable=True, kind=str)
    resolution: int = param(64, "image_fit: image side in pixels", min=8, max=2048)
    fourier_features: int = param(8, "image_fit: sine/cosine bands per coordinate", min=0, max=32)
    path: str | None = param(None, "text: a text file or a folder of .txt files (default: CPython's help texts)",
                             nullable=True, kind=str)
    context: int = param(64, "text: window length in bytes (the model's sequence length)", min=2, max=8192)


# keys every dataset reads; the others belong to the datasets that list them in their spec
COMMON_KEYS = ("name", "root", "val_fraction", "max_train_samples")
