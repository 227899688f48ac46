"""Which way each metric recorded in the tree is better: training stops early, searches optimise and
reports give verdicts by it."""

from __future__ import annotations

# metrics where lower is better; every other one is higher-is-better
LOWER_IS_BETTER = frozenset({"loss", "mse", "rmse", "mae", "bpb", "perplexity"})


def higher_is_better(metric: str) -> bool:
    """For a metric's bare name or any prefixed form (val_bpb, test_bpb, diff_test_bpb, test_bpb@soft)."""
    metric = metric.partition("@")[0]
    return not any(metric == name or metric.endswith(f"_{name}") for name in LOWER_IS_BETTER)
