"""Summary tables: runs grouped by variant and grid values (seed excluded): mean, std, n, 95 %
confidence interval, and each variant's difference to the dense baseline of the same job, paired
over seeds."""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

from moelab.results.status import JobState

DONE = JobState.DONE.value

DENSE_MODELS = ("mlp", "cnn")
# final numbers worth averaging, when present; test_<metric>@<routing> columns are added as found
SUMMARY_COLUMNS = ("test_acc", "test_macro_f1", "test_macro_precision", "test_macro_recall", "test_psnr", "test_mse",
                   "test_rmse", "test_mae", "test_r2", "test_loss", "num_parameters", "active_parameters",
                   "latency_ms", "epochs_trained", "train_seconds")


def group_columns(runs: pd.DataFrame, grid_axes: list[str]) -> list[str]:
    return ["variant"] + [a for a in grid_axes if a != "seed" and a in runs.columns]


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["state"] == DONE] if "state" in runs else runs.iloc[0:0]


def add_baseline_differences(runs: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, str | None]:
    """Add `diff_test_<metric>`: each run minus the dense baseline (first mlp/cnn variant) of the same job."""
    column = f"test_{metric}"
    done = finished(runs)
    if done.empty or column not in done:
        return runs, None
    dense = done[done["model"].isin(DENSE_MODELS)]
    if dense.empty:
        return runs, None
    baseline = dense["variant"].iloc[0]
    reference = done[done["variant"] == baseline].set_index("job")[column]
    runs = runs.copy()
    runs[f"diff_{column}"] = runs[column] - runs["job"].map(reference)
    return runs, baseline


def summarise(runs: pd.DataFrame, grid_axes: list[str]) -> pd.DataFrame:
    """One row per variant x grid point (seeds pooled): <metric>_mean, _std, _ci95 (half-width,
    Student's t) and n; diff_* columns are paired differences to the dense baseline."""
    done = finished(runs)
    if done.empty:
        return pd.DataFrame()
    values = [c for c in SUMMARY_COLUMNS if c in done and done[c].notna().any()]
    values += sorted(c for c in done.columns if c.startswith("test_") and "@" in c and "seconds" not in c)
    values += [c for c in done.columns if c.startswith("diff_")]
    keys = group_columns(done, grid_axes)
    # grid values may be lists or None; group on their text so every value forms a group
    keyed = done.assign(**{k: done[k].map(_group_text) for k in keys})
    grouped = keyed.groupby(keys, sort=False, dropna=False)
    table = grouped[values].agg(["mean", "std", "count"])
    out = pd.DataFrame(index=table.index)
    out["n"] = grouped.size()
    for metric in values:
        mean, std, n = table[(metric, "mean")], table[(metric, "std")], table[(metric, "count")]
        out[f"{metric}_mean"] = mean
        out[f"{metric}_std"] = std
        out[f"{metric}_ci95"] = [ci95(s, c) for s, c in zip(std, n)]
    return out.reset_index()


def ci95(std: float, n: int) -> float:
    """Half-width of the 95 % confidence interval of a mean of n values (NaN below 2)."""
    if n < 2 or std != std:
        return float("nan")
    return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def compact(table: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """The summary for reading: 'mean ± std' cells, the paired difference to the baseline with its
    95 % interval, and means for sizes and times."""
    if table.empty:
        return table
    out = table[[k for k in keys if k in table] + ["n"]].copy()
    tests = [f"test_{metric}"] + sorted({c[: -len("_mean")] for c in table if c.startswith(f"test_{metric}@") and c.endswith("_mean")})
    for column in tests:
        if f"{column}_mean" in table:
            out[column] = [_mean_std(m, s) for m, s in zip(table[f"{column}_mean"], table[f"{column}_std"])]
    diff = f"diff_test_{metric}"
    if f"{diff}_mean" in table:
        out["vs baseline (95% CI)"] = [_difference(m, h) for m, h in zip(table[f"{diff}_mean"], table[f"{diff}_ci95"])]
    for column, fmt in (("num_parameters", "{:,.0f}"), ("active_parameters", "{:,.0f}"), ("epochs_trained", "{:.1f}"),
                        ("train_seconds", "{:.2f}")):
        if f"{column}_mean" in table:
            out[column] = [fmt.format(v) if v == v else "" for v in table[f"{column}_mean"]]
    return out


def to_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    if table.empty:
        return "_no finished runs yet_\n"
    header = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(_cell(v, digits).replace("|", "\\|") for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def to_latex(table: pd.DataFrame, caption: str, digits: int = 4) -> str:
    """A booktabs tabular inside a table environment, ready for \\input{summary.tex}."""
    if table.empty:
        return "% no finished runs yet\n"
    escape = lambda text: (str(text).replace("\\", "\\textbackslash{}").replace("&", "\\&").replace("%", "\\%")
                           .replace("_", "\\_").replace("#", "\\#").replace("±", "$\\pm$").replace("*", "$\\ast$"))
    lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{escape(caption)}}}",
             "\\begin{tabular}{" + "l" * len(table.columns) + "}", "\\toprule",
             " & ".join(escape(c) for c in table.columns) + " \\\\", "\\midrule"]
    lines += [" & ".join(escape(_cell(v, digits)) for v in row) + " \\\\" for row in table.itertuples(index=False)]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _cell(value, digits: int) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}g}" if abs(value) >= 1e4 else f"{value:.{digits}f}"
    return str(value)


def _mean_std(mean: float, std: float) -> str:
    if mean != mean:  # NaN: the variant has no such metric
        return ""
    return f"{mean:.4f} ± {std:.4f}" if std == std else f"{mean:.4f}"


def _difference(mean: float, half_width: float) -> str:
    if mean != mean:
        return ""
    if half_width != half_width:
        return f"{mean:+.4f}"
    return f"{mean:+.4f} [{mean - half_width:+.4f}, {mean + half_width:+.4f}]"


def _group_text(value):
    return value if isinstance(value, (int, float, str, bool)) else str(value)
