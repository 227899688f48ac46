"""Seeded stratified splits and train-only standardisation shared by the datasets."""

from __future__ import annotations

import numpy as np
import torch


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out) with `fraction` held out, class proportions preserved."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    if fraction <= 0:
        return index, index[:0]
    kept, held = train_test_split(index, test_size=fraction, random_state=seed, stratify=labels)
    return np.sort(kept), np.sort(held)


def subsample(labels: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
    """At most `max_samples` stratified indices (all when None or when there are fewer)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    if max_samples is None or max_samples >= len(labels):
        return index
    kept, _ = train_test_split(index, train_size=max_samples, random_state=seed, stratify=labels)
    return np.sort(kept)


def standardise(train: torch.Tensor, *others: torch.Tensor, per_channel: int | None = None) -> list[torch.Tensor]:
    """Centre and scale with statistics of `train` only (per feature, or per channel of C*H*W rows)."""
    if per_channel:
        shaped = train.view(len(train), per_channel, -1)
        mean = shaped.mean(dim=(0, 2)).repeat_interleave(shaped.shape[2])
        std = shaped.std(dim=(0, 2)).repeat_interleave(shaped.shape[2])
    else:
        mean, std = train.mean(dim=0), train.std(dim=0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant pixels stay constant
    return [(t - mean) / std for t in (train, *others)]
