"""Summary tables: runs grouped by variant and grid values (seed excluded): mean, std and n."""

from __future__ import annotations

import math

import pandas as pd

from moelab.results.status import DONE

# final numbers worth averaging, when present; test_<metric>@<routing> columns are added as found
SUMMARY_COLUMNS = ("test_acc", "test_psnr", "test_mse", "test_mae", "test_loss", "best_val_acc", "best_val_psnr",
                   "num_parameters", "epochs_trained", "train_seconds")


def group_columns(runs: pd.DataFrame, grid_axes: list[str]) -> list[str]:
    return ["variant"] + [a for a in grid_axes if a != "seed" and a in runs.columns]


def summarise(runs: pd.DataFrame, grid_axes: list[str]) -> pd.DataFrame:
    """One row per variant x grid point (seeds pooled): <metric>_mean, <metric>_std and n."""
    finished = runs[runs["state"] == DONE] if "state" in runs else runs.iloc[0:0]
    if finished.empty:
        return pd.DataFrame()
    values = [c for c in SUMMARY_COLUMNS if c in finished and finished[c].notna().any()]
    values += sorted(c for c in finished.columns if c.startswith("test_") and "@" in c and "seconds" not in c)
    keys = group_columns(finished, grid_axes)
    # grid values may be lists or None; group on their text so every value forms a group
    keyed = finished.assign(**{k: finished[k].map(_group_text) for k in keys})
    grouped = keyed.groupby(keys, sort=False, dropna=False)
    table = grouped[values].agg(["mean", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table.insert(0, "n", grouped.size())
    return table.reset_index()


def compact(table: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """The summary for reading: 'mean ± std' cells for the test metrics, means for the rest."""
    if table.empty:
        return table
    out = table[[k for k in keys if k in table] + ["n"]].copy()
    tests = [f"test_{metric}"] + sorted({c[: -len("_mean")] for c in table if c.startswith(f"test_{metric}@") and c.endswith("_mean")})
    for column in tests:
        if f"{column}_mean" in table:
            out[column] = [_mean_std(m, s) for m, s in zip(table[f"{column}_mean"], table[f"{column}_std"])]
    for column, fmt in (("num_parameters", "{:,.0f}"), ("epochs_trained", "{:.1f}"), ("train_seconds", "{:.2f}")):
        if f"{column}_mean" in table:
            out[column] = [fmt.format(v) if v == v else "" for v in table[f"{column}_mean"]]
    return out


def to_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    if table.empty:
        return "_no finished runs yet_\n"
    header = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(_cell(v, digits) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _cell(value, digits: int) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}g}" if abs(value) >= 1e4 else f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def _mean_std(mean: float, std: float) -> str:
    if mean != mean:  # NaN: the variant has no such metric
        return ""
    return f"{mean:.4f} ± {std:.4f}" if std == std else f"{mean:.4f}"


def _group_text(value):
    return value if isinstance(value, (int, float, str, bool)) else str(value)
