"""Each task's metrics by name, without importing torch: validating an experiment file (a search's
objective names a validation metric) must not pay for torch. The first metric is the primary one."""

from __future__ import annotations

from moelab.data import CLASSIFICATION, LANGUAGE_MODELING, REGRESSION

METRICS: dict[str, tuple[str, ...]] = {
    CLASSIFICATION: ("acc", "macro_precision", "macro_recall", "macro_f1"),
    REGRESSION: ("psnr", "mse", "rmse", "mae", "r2"),
    # bits per byte, exp(loss per byte), and how often the most likely next byte is the right one
    LANGUAGE_MODELING: ("bpb", "perplexity", "acc"),
}

# every split is also scored by its loss (lower is better)
SPLIT_METRICS: dict[str, tuple[str, ...]] = {task: ("loss", *names) for task, names in METRICS.items()}
