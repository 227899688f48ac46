"""Each run's per-sample test scores (analysis/test_routing.csv, written for every variant by
train/analysis.py), for paired tests over test examples: two variants of one job saw the same test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from moelab.results.tree import VariantTree

# the column of a sample's share of the test metric, and the sign that makes higher better
SCORE_COLUMNS = {"correct": 1.0, "squared_error": -1.0, "bits_per_byte": -1.0}


def read_sample_scores(variant_path: str | Path) -> np.ndarray | None:
    """A run's per-sample test scores, higher is better (1/0 correct, minus the squared error, or minus a text window's bits per byte), in
    test-set order; None when the run wrote none (older runs) or the file is unreadable."""
    try:
        samples = pd.read_csv(VariantTree(Path(variant_path)).analysis.test_routing)
    except (OSError, ValueError):
        return None
    for column, sign in SCORE_COLUMNS.items():
        if column in samples and samples[column].notna().all():
            return sign * samples.sort_values("sample")[column].to_numpy(dtype=float)
    return None
