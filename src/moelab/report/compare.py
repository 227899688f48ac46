"""`create-plots A B --compare`: two experiments side by side, variant by variant, with the report's
statistics.

Runs of A and B match when they share the variant, the seed and the values of every grid axis both
have: then the comparison is paired (B minus A per seed, the report's sign-flip test); a variant
with no matching run pair is compared unpaired (a permutation test of the difference of means).
Verdicts are Holm-adjusted over all comparisons, as in a report; each row says which test it used.
The table and a plot of B - A are saved in B's summary folder (compare-<A>.csv, .md, .png, .svg).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from moelab.report.data import read_report_data
from moelab.report.figures import FORMATS, save, subplots
from moelab.report.stats import degenerate_reason, sign_flip_p_value
from moelab.report.tables import axis_label, ci95, finished, holm, to_markdown, verdict
from moelab.results.io import atomic_write, write_text
from moelab.results.tree import ExperimentTree

RANDOM_PERMUTATIONS = 100_000  # above EXACT_UP_TO runs in all, a fixed-seed sample of the permutations
EXACT_UP_TO = 16
# the columns compare computes; the others name the row (variant, grid values)
COMPUTED = ("B - A", "95% CI", "p", "n", "std", "test", "p (Holm)", "verdict")


def permutation_p_value(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """Two-sided p-value of equal means of two unpaired samples: the share of relabellings of the
    pooled values whose difference of means is at least as far from zero as the observed one (exact
    up to EXACT_UP_TO values, else sampled, the observed one counted so never 0)."""
    pooled = np.concatenate([a, b])
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    observed = abs(b.mean() - a.mean()) - 1e-12
    if len(pooled) <= EXACT_UP_TO:
        splits = [np.array(chosen) for chosen in itertools.combinations(range(len(pooled)), len(b))]
        mask = np.zeros((len(splits), len(pooled)), dtype=bool)
        for row, chosen in enumerate(splits):
            mask[row, chosen] = True
    else:
        rng = np.random.default_rng(seed)
        mask = np.zeros((RANDOM_PERMUTATIONS, len(pooled)), dtype=bool)
        for row in range(RANDOM_PERMUTATIONS):
            mask[row, rng.choice(len(pooled), len(b), replace=False)] = True
    differences = (mask @ pooled) / len(b) - (~mask @ pooled) / len(a)
    extreme = int(np.sum(np.abs(differences) >= observed))
    return extreme / len(mask) if len(pooled) <= EXACT_UP_TO else (extreme + 1) / (len(mask) + 1)


def compare(first: Path, second: Path) -> tuple[pd.DataFrame, str]:
    """One row per variant (and common grid point) in both experiments: mean of each, B - A with its
    95 % interval, the test used, Holm-adjusted p and verdict; and the metric compared."""
    a, b = read_report_data(first, curves=False), read_report_data(second, curves=False)
    metric = a.metric
    column = f"test_{metric}"
    runs_a, runs_b = finished(a.runs), finished(b.runs)
    if runs_a.empty or runs_b.empty or column not in runs_a or column not in runs_b:
        raise ValueError(f"{first if runs_a.empty or column not in runs_a else second} has no finished run with {column}")
    common_axes = [x for x in a.grid_axes if x in b.grid_axes and x != "seed" and x in runs_a and x in runs_b]
    keys = ["variant", *common_axes]
    rows = []
    for group, part_a in runs_a.groupby(keys, sort=False):
        group = group if isinstance(group, tuple) else (group,)
        part_b = runs_b
        for key, value in zip(keys, group):
            part_b = part_b[part_b[key].astype(str) == str(value)]
        if part_b.empty:
            continue
        paired = part_a.merge(part_b, on=[*keys, "seed"], suffixes=("_a", "_b"))
        if not paired.empty:
            differences = (paired[f"{column}_b"] - paired[f"{column}_a"]).to_numpy(dtype=float)
            n, std = len(differences), float(np.std(differences, ddof=1)) if len(differences) > 1 else float("nan")
            mean, p = float(differences.mean()), sign_flip_p_value(differences)
            test = f"paired over {n} seed(s)"
            interval = ci95(std, n)
        else:
            values_a, values_b = part_a[column].to_numpy(dtype=float), part_b[column].to_numpy(dtype=float)
            mean, p = float(values_b.mean() - values_a.mean()), permutation_p_value(values_a, values_b)
            n = min(len(values_a), len(values_b))
            std = float(np.sqrt(np.var(values_a, ddof=1) + np.var(values_b, ddof=1))) if n > 1 else float("nan")
            test = f"unpaired ({len(values_a)} vs {len(values_b)} runs: no run of B matches A's configuration)"
            interval = float("nan")
        if degenerate_reason(n, std) is not None:
            test += f"; no verdict: {degenerate_reason(n, std)}"
        rows.append({**{axis_label(k): v for k, v in zip(keys, group)},
                     f"A {column}": float(part_a[column].mean()), f"B {column}": float(part_b[column].mean()),
                     "B - A": mean, "95% CI": interval, "p": p, "n": n, "std": std, "test": test})
    if not rows:
        raise ValueError(f"{first} and {second} have no variant (at the same grid values) in common")
    table = pd.DataFrame(rows)
    table["p (Holm)"] = holm(table["p"])
    table["verdict"] = [verdict(m, p, n, s) for m, p, n, s in
                        zip(table["B - A"], table["p (Holm)"], table["n"], table["std"])]
    return table, metric


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison as printed: B - A with its interval in one cell, p rounded, no std."""
    out = table.drop(columns=["p", "std", "95% CI"])
    out["B - A"] = [f"{m:+.4f}" + (f" ± {h:.4f}" if h == h else "") for m, h in zip(table["B - A"], table["95% CI"])]
    out["p (Holm)"] = [f"{p:.2g}" if p == p else "" for p in table["p (Holm)"]]
    return out


def print_comparison(first: Path, second: Path) -> list[Path]:
    """Print the comparison and save it in B's summary folder: the table (CSV with every number,
    Markdown as printed) and a plot of B - A per row. Returns the files written."""
    table, metric = compare(first, second)
    header = (f"A = {first}, B = {second}: test {metric}, B - A with its 95 % interval (paired rows), verdicts by the "
              f"report's tests, Holm-adjusted over {len(table)} comparison(s) (family-wise 5 %); 'better' means B is better")
    markdown = to_markdown(shown(table))
    print(header)
    print(markdown, end="")
    summary, other = ExperimentTree(second).summary, Path(first).name
    files = [summary.comparison(other, "csv"), summary.comparison(other, "md")]
    atomic_write(files[0], lambda f: table.to_csv(f, index=False))
    write_text(files[1], f"# {Path(second).name} (B) against {other} (A)\n\n{header}\n\n{markdown}")
    files += _plot(table, metric, other, Path(second).name, summary.comparison(other, "png"))
    print(f"saved: {', '.join(str(f) for f in files)}")
    return files


def _plot(table: pd.DataFrame, metric: str, first: str, second: str, path: Path) -> list[Path]:
    """B - A per row with its 95 % interval (paired rows; an unpaired row is a point), zero marked."""
    labels = [" ".join(str(v) for v in row) for row in table[[c for c in table.columns
                                                              if c not in COMPUTED and not c.startswith(("A ", "B "))]]
              .itertuples(index=False)]
    fig, ax = subplots(figsize=(7.0, 1.2 + 0.35 * len(table)))
    rows = range(len(table))[::-1]  # the first row on top, as in the table
    ax.errorbar(table["B - A"], rows, xerr=table["95% CI"].fillna(0), fmt="o", capsize=3)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(list(rows), labels)
    ax.set(xlabel=f"test {metric}: {second} - {first} (95 % interval where paired)",
           title=f"{second} (B) against {first} (A)")
    save(fig, path)
    return [path.with_suffix(f".{fmt}") for fmt in FORMATS]
