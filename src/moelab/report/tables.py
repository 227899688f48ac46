"""Summary tables: runs grouped by variant and grid values (seed excluded): mean, std, n, 95 %
confidence interval, and each variant's difference to the dense baseline of the same job, paired
over seeds, with an exact sign-flip test (report/stats.py) and Holm's adjustment over all comparisons."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from moelab.report.stats import (BOOTSTRAP_METHOD, METHOD, MIN_PAIRED_SEEDS, degenerate_reason, paired_p_value,
                                  smallest_p_value)
from moelab.results.configurations import COLUMN
from moelab.results.metric_direction import higher_is_better
from moelab.results.status import JobState

DENSE_MODELS = ("mlp", "cnn", "transformer")
MATCH_KINDS = ("active", "total")  # the sizes baseline.match builds dense models to
FAMILY_WISE_ALPHA = 0.05  # the chance of any false "better" or "worse" among all comparisons of one report
BETTER, NOT_DISTINGUISHABLE, WORSE = "better", "not distinguishable", "worse"
# final numbers worth averaging, when present; test_<metric>@<routing> columns are added as found
SAMPLES = "test_samples"  # runs column: per-sample test scores (results/samples.py), when read
# the suffix of a difference column's per-sample companion (the per-example differences of each pair)
SAMPLES_SUFFIX = "_samples"
SUMMARY_COLUMNS = ("test_bpb", "test_perplexity", "test_acc", "test_macro_f1", "test_macro_precision", "test_macro_recall", "test_auc_macro", "test_psnr",
                   "test_mse", "test_rmse", "test_mae", "test_r2", "test_loss", "num_parameters", "active_parameters",
                   "dead_expert_fraction", "effective_experts", "max_vio", "test_batch_dependence", "routing_flip_rate", "token_type_purity", "latency_ms", "epochs_trained",
                   "train_seconds")


def axis_label(axis: str) -> str:
    """variants.*.num_experts -> num_experts; variants.moe.k -> moe.k; train.lr stays."""
    if axis.startswith("variants.*."):
        return axis[len("variants.*."):]
    return axis[len("variants."):] if axis.startswith("variants.") else axis


def group_columns(runs: pd.DataFrame, grid_axes: list[str]) -> list[str]:
    """Variant, the configuration when the runs hold several (results/configurations.py: runs of
    different configurations are never pooled), and the grid values other than the seed."""
    several = COLUMN in runs.columns and runs[COLUMN].nunique() > 1
    return ["variant"] + ([COLUMN] if several else []) + [a for a in grid_axes if a != "seed" and a in runs.columns]


def configurations_note(covered: list[str], others: pd.DataFrame) -> str:
    """Which configuration a report covers and how many others its folder holds (listed after it)."""
    text = (f"Configuration {', '.join(covered)} only (by default the last launch's; `create-plots <folder> "
            "--configuration ID` reports on another): runs of other settings are never pooled, and n counts seeds.")
    if not others.empty:
        text += f" {len(others)} other configuration(s) in this folder, not in this report:"
    return text


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["state"] == JobState.DONE] if "state" in runs else runs.iloc[0:0]


def comparison_columns(metric: str) -> list[str]:
    """The paired differences a report tests: to the dense baseline, and to the dense models of equal
    active and of equal total parameters (baseline.match)."""
    return [f"diff_test_{metric}"] + [f"diff_{kind}_test_{metric}" for kind in MATCH_KINDS]


def add_baseline_differences(runs: pd.DataFrame, metric: str, named: str | None = None) -> tuple[pd.DataFrame, str | None]:
    """Add `diff_test_<metric>`: each run minus the dense baseline of the same job (the variant `named`
    in baseline.variant, else the first mlp/cnn variant that is not a matched one); and
    `diff_<kind>_test_<metric>`: each MoE run minus its matched dense model of equal active / total
    parameters in the same job."""
    column = f"test_{metric}"
    done = finished(runs)
    if done.empty or column not in done:
        return runs, None
    runs = runs.copy()
    score = dict(zip(zip(done["job"], done["variant"]), done[column]))
    matched = set()
    for kind in MATCH_KINDS:
        if f"matched_{kind}" in runs:
            matched |= set(runs[f"matched_{kind}"].dropna())
            dense = runs[f"matched_{kind}"]
            if kind != MATCH_KINDS[0] and f"matched_{MATCH_KINDS[0]}" in runs:
                # one dense model of both sizes (soft routing) is one comparison, tested once
                dense = dense.where(dense != runs[f"matched_{MATCH_KINDS[0]}"])
            reference = [score.get((job, name), float("nan")) for job, name in zip(runs["job"], dense)]
            runs[f"diff_{kind}_{column}"] = runs[column] - reference
            _add_sample_differences(runs, f"diff_{kind}_{column}", dense)
    dense = done[done["model"].isin(DENSE_MODELS) & ~done["variant"].isin(matched)]
    baseline = named or (dense["variant"].iloc[0] if not dense.empty else None)
    if baseline is not None:
        reference = done[done["variant"] == baseline].set_index("job")[column]
        runs[f"diff_{column}"] = runs[column] - runs["job"].map(reference)
        _add_sample_differences(runs, f"diff_{column}", pd.Series(baseline, index=runs.index))
    return runs, baseline


def _add_sample_differences(runs: pd.DataFrame, difference: str, reference: pd.Series) -> None:
    """<difference>_samples: each run's per-sample test scores minus those of its reference variant in
    the same job (None where either is missing, or the test sets differ in size)."""
    if SAMPLES not in runs:
        return
    scores = dict(zip(zip(runs["job"], runs["variant"]), runs[SAMPLES]))
    pairs = []
    for job, own, other, paired in zip(runs["job"], runs[SAMPLES], reference, runs[difference]):
        theirs = scores.get((job, other))
        usable = paired == paired and own is not None and theirs is not None and len(own) == len(theirs)
        pairs.append(own - theirs if usable else None)
    runs[difference + SAMPLES_SUFFIX] = pairs


def summarise(runs: pd.DataFrame, grid_axes: list[str]) -> pd.DataFrame:
    """One row per variant x grid point (seeds pooled): <metric>_mean, _std, _ci95 (half-width,
    Student's t) and n; diff_* columns are paired differences to the dense baseline, with _n (the
    number of paired seeds), _p and _method: stats.paired_p_value, the sign-flip test of the per-seed
    differences, or the larger of it and the paired bootstrap over seeds and test examples when every
    pair has per-sample scores (a <diff>_samples column, method "bootstrap")."""
    done = finished(runs)
    if done.empty:
        return pd.DataFrame()
    values = [c for c in SUMMARY_COLUMNS if c in done and done[c].notna().any()]
    values += sorted(c for c in done.columns if c.startswith("test_") and "@" in c and "seconds" not in c)
    values += sorted((c for c in done.columns if c.startswith("test_auc_class_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    values += [c for c in done.columns if c.startswith("diff_") and not c.endswith(SAMPLES_SUFFIX)]
    keys = group_columns(done, grid_axes)
    # grid values may be lists or None; group on their text so every value forms a group
    keyed = done.assign(**{k: done[k].map(_group_text) for k in keys})
    grouped = keyed.groupby(keys, sort=False, dropna=False)
    table = grouped[values].agg(["mean", "std", "count"])
    out = {"n": grouped.size()}  # columns collected first: one DataFrame at the end, not one insert each
    for metric in values:
        mean, std, n = table[(metric, "mean")], table[(metric, "std")], table[(metric, "count")]
        out[f"{metric}_mean"] = mean
        out[f"{metric}_std"] = std
        out[f"{metric}_ci95"] = pd.Series([ci95(s, c) for s, c in zip(std, n)], index=table.index)
        if metric.startswith("diff_"):
            out[f"{metric}_n"] = n
            tests = [_paired_test(group, metric) for _, group in grouped]
            out[f"{metric}_p"] = pd.Series([p for p, _ in tests], index=table.index)
            out[f"{metric}_method"] = pd.Series([method for _, method in tests], index=table.index)
    return pd.DataFrame(out, index=table.index).reset_index()


def _paired_test(group: pd.DataFrame, difference: str) -> tuple[float, str]:
    """The p-value of one comparison and its method ("bootstrap" or "sign-flip"; "" without pairs)."""
    paired = group[group[difference].notna()]
    if paired.empty:
        return float("nan"), ""
    samples = paired[difference + SAMPLES_SUFFIX] if difference + SAMPLES_SUFFIX in paired else None
    if samples is not None and all(s is not None for s in samples):
        # sample scores are higher-is-better (minus a squared error, minus bits) while the metric may be
        # either (PSNR, bits per byte): when the two disagree on the direction, the test says nothing
        # about the metric's difference
        gain = paired[difference].mean() * (1 if higher_is_better(difference) else -1)
        if np.sign(np.mean([s.mean() for s in samples])) != np.sign(gain):
            return 1.0, "bootstrap"
        return paired_p_value(paired[difference], list(samples)), "bootstrap"
    return paired_p_value(paired[difference], None), "sign-flip"


def ci95(std: float, n: int) -> float:
    """Half-width of the 95 % confidence interval of a mean of n values (NaN below 2)."""
    if n < 2 or std != std:
        return float("nan")
    return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment: the i-th smallest of k p-values is multiplied by k - i + 1, made
    non-decreasing in that order and capped at 1. Rejecting where the adjusted p <= alpha keeps the
    family-wise error at alpha for any dependence between the tests. NaN (no test) stays NaN and is
    not counted in k."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    k = len(order)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(p[order] * (k - np.arange(k))))
    return adjusted


def verdict(mean_difference: float, adjusted_p: float, n: int, std: float, alpha: float = FAMILY_WISE_ALPHA,
            higher_is_better: bool = True) -> str:
    """better / worse when the difference to the baseline is significant at the adjusted level and the
    comparison is not degenerate (stats.degenerate_reason: n paired seeds, std of their differences),
    else not distinguishable (also when there is no test). `higher_is_better`: the metric's direction
    (bits per byte: lower)."""
    if adjusted_p != adjusted_p or adjusted_p > alpha or mean_difference != mean_difference:
        return NOT_DISTINGUISHABLE
    if degenerate_reason(n, std) is not None:
        return NOT_DISTINGUISHABLE
    return BETTER if (mean_difference > 0) == higher_is_better else WORSE


def compare_to_baseline(table: pd.DataFrame, metric: str, baseline: str | None) -> pd.DataFrame:
    """Add <diff>_p_holm and <diff>_verdict for each comparison column of a summarise() table. The family
    is every comparison the table makes: each other variant at each grid point against the baseline,
    since the headline picks its winner among all of them, and each MoE variant at each grid point
    against its matched dense models. The baseline's own rows get the verdict "baseline"; rows without
    a matched comparison of a kind get none."""
    main = f"diff_test_{metric}"
    columns = [c for c in comparison_columns(metric) if f"{c}_p" in table]
    if table.empty or not columns:
        return table
    table = table.copy()
    compared = {c: table["variant"] != baseline if c == main else table[f"{c}_mean"].notna() for c in columns}
    adjusted = holm(np.concatenate([table[f"{c}_p"].where(compared[c]).to_numpy() for c in columns]))
    for i, c in enumerate(columns):
        table[f"{c}_p_holm"] = adjusted[i * len(table):(i + 1) * len(table)]
        table[f"{c}_verdict"] = [verdict(m, q, n, s, higher_is_better=higher_is_better(metric)) if hit else "baseline" if c == main else "" for m, q, n, s, hit in
                                 zip(table[f"{c}_mean"], table[f"{c}_p_holm"], table[f"{c}_n"], table[f"{c}_std"], compared[c])]
    return table


def family_size(table: pd.DataFrame, metric: str) -> int:
    """k of Holm's adjustment: the comparisons that have a p-value."""
    return sum(int(table[f"{c}_p_holm"].notna().sum()) for c in comparison_columns(metric) if f"{c}_p_holm" in table)


def matched_comparisons(runs: pd.DataFrame, table: pd.DataFrame, metric: str, keys: list[str]) -> list[dict]:
    """Each MoE variant and grid point that has matched dense models: its active and total parameters and
    mean test metric, and per kind the dense variant, its parameters and mean test metric, the paired
    difference (MoE minus dense) with its 95 % interval, and the verdict."""
    found = []
    done = finished(runs)
    others = [k for k in keys if k != "variant"]
    for _, row in table.iterrows():
        kinds = [kind for kind in MATCH_KINDS if f"diff_{kind}_test_{metric}_mean" in table
                 and row[f"diff_{kind}_test_{metric}_mean"] == row[f"diff_{kind}_test_{metric}_mean"]]
        if not kinds:
            continue
        here = done[(done["variant"] == row["variant"]) & _at_point(done, row, others)]
        point_rows = table[_at_point(table, row, others)].set_index("variant")
        matches = []
        for kind in kinds:
            dense = here[f"matched_{kind}"].dropna().iloc[0]
            diff = f"diff_{kind}_test_{metric}"
            sizes = [k for k in MATCH_KINDS if f"matched_{k}" in here and (here[f"matched_{k}"] == dense).any()]
            matches.append({"kind": " and ".join(sizes), "variant": dense, "parameters": point_rows.loc[dense, "num_parameters_mean"],
                            "score": point_rows.loc[dense, f"test_{metric}_mean"], "mean": row[f"{diff}_mean"],
                            "ci95": row[f"{diff}_ci95"], "verdict": row[f"{diff}_verdict"]})
        found.append({"variant": row["variant"], "point": {k: row[k] for k in others},
                      "active_parameters": row["active_parameters_mean"], "num_parameters": row["num_parameters_mean"],
                      "score": row[f"test_{metric}_mean"], "matches": matches})
    return found


MATCHED_INTRO = ("Each MoE variant against dense models built to its active and to its total parameter count "
                 "(baseline.match), in the same jobs, paired over seeds; verdicts Holm-adjusted together with the "
                 "comparisons to the baseline.")


def describe_match(entry: dict) -> str:
    """One line of the equal-size comparisons for the summary and the page."""
    point = ", ".join(f"{axis_label(k)}={v}" for k, v in entry["point"].items())
    parts = []
    for match in entry["matches"]:
        interval = (f" [{match['mean'] - match['ci95']:+.4f}, {match['mean'] + match['ci95']:+.4f}]"
                    if match["ci95"] == match["ci95"] else "")
        parts.append(f"vs {match['variant']} ({match['parameters']:,.0f} parameters, equal {match['kind']}): "
                     f"{match['mean']:+.4f}{interval}, {match['verdict']}")
    return (f"{entry['variant']}{f' ({point})' if point else ''}, {entry['active_parameters']:,.0f} active / "
            f"{entry['num_parameters']:,.0f} total parameters: " + "; ".join(parts))


def _at_point(frame: pd.DataFrame, row: pd.Series, keys: list[str]) -> pd.Series:
    """Rows of `frame` at the grid point of a summary-table row (whose grid values are grouped as text)."""
    mask = pd.Series(True, index=frame.index)
    for key in keys:
        mask &= frame[key].map(_group_text) == row[key]
    return mask


def comparisons_note(table: pd.DataFrame, metric: str, baseline: str | None) -> str | None:
    """How the verdicts are reached (the method, the family, the adjustment and the degenerate-case
    rule), for the first screen of the markdown summary and the HTML page."""
    if not any(f"{c}_verdict" in table for c in comparison_columns(metric)):
        return None
    k = family_size(table, metric)
    against = [f"each other variant at each grid point against {baseline} in the same jobs (same seed and grid values)"
               ] if f"diff_test_{metric}_verdict" in table else []
    if any(f"diff_{kind}_test_{metric}_verdict" in table for kind in MATCH_KINDS):
        against.append("each MoE variant at each grid point against its dense models of equal active and of equal total "
                       "parameters (baseline.match) in the same jobs")
    if k == 0:
        return "Verdicts: no comparison has paired seeds yet, so there is no test and every variant is 'not distinguishable'."
    return (f"Verdicts: test {metric} of {'; and '.join(against)}, by {_methods(table, metric)}. "
            f"Family: all k = {k} comparison(s) of this table; adjustment: Holm's method, so that the chance of any "
            f"false verdict stays at {FAMILY_WISE_ALPHA * 100:g} % (family-wise). A variant is 'better' or 'worse' when "
            f"its adjusted p <= {FAMILY_WISE_ALPHA:g} and the comparison rests on at least {MIN_PAIRED_SEEDS} paired "
            "seeds whose differences are not all equal; otherwise 'not distinguishable'. The 95 % intervals are per "
            "comparison, over seeds, not adjusted.")


def _methods(table: pd.DataFrame, metric: str) -> str:
    """The tests used for a table's comparisons, in words."""
    used = pd.concat([table[f"{c}_method"] for c in comparison_columns(metric) if f"{c}_method" in table])
    counts = used[used != ""].value_counts()
    floor = (f"with n seeds its smallest p is 2/2^n: {smallest_p_value(3):.3g} at 3, {smallest_p_value(5):.3g} at 5, "
             f"{smallest_p_value(6):.3g} at 6")
    words = {"bootstrap": f"the larger p of a {BOOTSTRAP_METHOD} of the per-sample test scores and an {METHOD} of the "
                          f"per-seed differences (the bootstrap alone cannot reach beyond the seeds it resamples; {floor})",
             "sign-flip": f"an {METHOD} of the per-seed differences (runs without per-sample scores; {floor})"}
    if len(counts) == 1:
        return words[counts.index[0]]
    return "; ".join(f"{words[method]} for {count} comparison(s)" for method, count in counts.items())


def small_sample_warning(table: pd.DataFrame, metric: str, baseline: str | None) -> str | None:
    """A warning naming the comparisons that cannot get a verdict (stats.degenerate_reason: too few
    paired seeds, or differences without spread), else None."""
    diff = f"diff_test_{metric}"
    if baseline is None or table.empty or f"{diff}_n" not in table:
        return None
    compared = table[(table["variant"] != baseline) & table[f"{diff}_mean"].notna()]
    reasons = [degenerate_reason(n, s) or (f"{n:.0f} paired seeds, whose smallest possible p is {smallest_p_value(n):.3g}"
                                           if smallest_p_value(n) > FAMILY_WISE_ALPHA else None)
               for n, s in zip(compared[f"{diff}_n"], compared[f"{diff}_std"])]
    found = [r for r in reasons if r is not None]
    if not found:
        return None
    counts = "; ".join(f"{found.count(r)} with {r}" for r in dict.fromkeys(found))
    needed = max(MIN_PAIRED_SEEDS, math.ceil(math.log2(2 * max(family_size(table, metric), 1) / FAMILY_WISE_ALPHA)))
    return (f"{len(found)} of {len(compared)} comparison(s) with {baseline} cannot support a verdict ({counts}), so "
            f"they read 'not distinguishable' whatever their p-value. A verdict over this table's comparisons needs "
            f"about {needed} seeds that agree in sign; identical per-seed differences usually mean the test set is too "
            "small to tell the runs apart.")


def distributed_note(runs: pd.DataFrame) -> str | None:
    """How many of the jobs several processes trained (train.distributed), each one job of the tables; None
    when every job trained in one process."""
    column = "train.distributed.processes"
    if column not in runs or runs.empty:
        return None
    jobs = runs.drop_duplicates("job")
    processes = jobs[column].fillna(1).astype(int)
    several = jobs[processes > 1]
    if several.empty:
        return None
    counts = ", ".join(f"{n} by {p} processes" for p, n in processes[processes > 1].value_counts().sort_index().items())
    sharded = "train.distributed.expert_parallel"
    experts = int(several[sharded].fillna(False).astype(bool).sum()) if sharded in several else 0
    return (f"{len(several)} of {len(jobs)} job(s) trained by several processes (train.distributed: {counts}"
            + (f"; {experts} with their experts sharded over them" if experts else "")
            + "); each is one job in every table.")


def collapse_warning(runs: pd.DataFrame, keys: list[str]) -> str | None:
    """The rule for the report's collapse warning: a finished MoE run whose final epoch has a dead
    expert (the first choice of fewer than 1 % of that epoch's training samples) counts as collapsed.
    Names every variant and grid point with such runs; None when there are none."""
    done = finished(runs)
    if "dead_expert_fraction" not in done:
        return None
    moe = done[done["dead_expert_fraction"].notna()]
    collapsed = moe[moe["dead_expert_fraction"] > 0]
    if collapsed.empty:
        return None
    keys = [k for k in keys if k in moe]
    places = []
    for _, group in moe.assign(**{k: moe[k].map(_group_text) for k in keys}).groupby(keys, sort=False, dropna=False):
        dead = group[group["dead_expert_fraction"] > 0]
        if dead.empty:
            continue
        first = group.iloc[0]
        point = ", ".join(f"{axis_label(k)}={first[k]}" for k in keys if k != "variant")
        places.append(f"{first['variant']}{f' ({point})' if point else ''}: {len(dead)} of {len(group)} run(s), up to "
                      f"{dead['dead_expert_fraction'].max() * 100:.0f} % of its experts dead")
    return (f"{len(collapsed)} of {len(moe)} finished MoE run(s) end with dead experts (experts that are the first "
            f"choice of fewer than 1 % of the last epoch's training samples): " + "; ".join(places) + ".")


def compact(table: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """The summary for reading: 'mean ± std' cells, the paired difference to the baseline with its
    95 % interval, and means for sizes and times."""
    if table.empty:
        return table
    out = table[[k for k in keys if k in table] + ["n"]].copy()
    tests = [f"test_{metric}"] + sorted({c[: -len("_mean")] for c in table if c.startswith(f"test_{metric}@") and c.endswith("_mean")})
    tests.append("test_auc_macro")
    for column in tests:
        if f"{column}_mean" in table:
            out[column] = [_mean_std(m, s) for m, s in zip(table[f"{column}_mean"], table[f"{column}_std"])]
    diff = f"diff_test_{metric}"
    if f"{diff}_mean" in table:
        out["vs baseline (95% CI)"] = [_difference(m, h) for m, h in zip(table[f"{diff}_mean"], table[f"{diff}_ci95"])]
    if f"{diff}_verdict" in table:
        out["p (Holm)"] = [_p_value(p) for p in table[f"{diff}_p_holm"]]
        out["verdict"] = table[f"{diff}_verdict"]
    for kind in MATCH_KINDS:
        matched = f"diff_{kind}_test_{metric}"
        if f"{matched}_verdict" in table:
            out[f"vs equal-{kind} dense (95% CI)"] = [_difference(m, h) for m, h in
                                                      zip(table[f"{matched}_mean"], table[f"{matched}_ci95"])]
            out[f"verdict ({kind})"] = table[f"{matched}_verdict"]
    for column, fmt in (("num_parameters", "{:,.0f}"), ("active_parameters", "{:,.0f}"), ("dead_expert_fraction", "{:.2f}"),
                        ("epochs_trained", "{:.1f}"), ("train_seconds", "{:.2f}")):
        if f"{column}_mean" in table:
            out[column] = [fmt.format(v) if v == v else "" for v in table[f"{column}_mean"]]
    return out


def short_table(readable: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The columns a reader (and a paper) needs first, from compact()'s table: the groups, n, the test
    metric, the difference to the baseline with its p-value and verdict, and the model's size. Every other column
    stays in the long table and the CSV."""
    if readable.empty:
        return readable
    groups = list(readable.columns[: list(readable.columns).index("n") + 1])
    size = "active_parameters" if "active_parameters" in readable else "num_parameters"
    wanted = [f"test_{metric}", "vs baseline (95% CI)", "p (Holm)", "verdict", size]
    return readable[groups + [c for c in wanted if c in readable]]


def to_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    if table.empty:
        return "_no finished runs yet_\n"
    header = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(_cell(v, digits).replace("|", "\\|") for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def to_latex(table: pd.DataFrame, caption: str, digits: int = 4) -> str:
    """A booktabs tabular inside a table environment, ready for \\input in a paper."""
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


def _p_value(p: float) -> str:
    return "" if p != p else f"{p:.2g}"


def _group_text(value):
    return value if isinstance(value, (int, float, str, bool)) else str(value)
