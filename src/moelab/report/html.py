"""The HTML report (ExperimentTree.report_file): one static page (works from file:// and any web server).

First screen: what is missing or failed, whether there are enough seeds to compare, which variant
wins and by how much (paired over seeds, with a 95 % interval and a verdict at Holm's adjusted
level), and what its experts did. Then the summary table, every plot, the
unfinished runs, the configuration and the provenance.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

import pandas as pd

from moelab.results.metric_direction import higher_is_better
from moelab.report.data import ReportData
from moelab.report.plots import Plot
from moelab.report.study import best_trials_data, study_section
from moelab.report.stats import degenerate_reason
from moelab.report.tables import (FAMILY_WISE_ALPHA, MATCHED_INTRO, axis_label, collapse_warning, comparisons_note, short_table,
                                  configurations_note, describe_match, distributed_note, family_size, finished,
                                  small_sample_warning)

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:1rem 2rem;color:#222}
h1{margin-bottom:.2rem} .sub{color:#666;margin-top:0}
.box{border-radius:6px;padding:.8rem 1rem;margin:1rem 0}
.warn{background:#fff4e5;border:1px solid #f0b35c} .ok{background:#eef7ee;border:1px solid #8bc98b}
.headline{background:#eef3fb;border:1px solid #8aa9d6;font-size:1.1rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0} th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
td{white-space:nowrap} .wide{overflow-x:auto}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
figure{margin:1.5rem 0} figure img{max-width:100%;border:1px solid #ddd} figcaption{color:#555;font-size:.9rem}
pre{background:#f6f6f6;padding:.6rem;overflow:auto;font-size:.8rem} code{background:#f3f3f3;padding:0 .2rem}
"""

MAX_MATCHED_LINES = 12  # equal-size comparisons listed on the first screen; all of them are in the table


def render(data: ReportData, drawn: list[Plot], not_drawn: dict[str, str]) -> str:
    runs, notes, summary = data.runs, data.notes, data.tree.summary
    done = finished(runs)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(data.name)}: moelab report</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{_e(data.name)}</h1><p class='sub'>{_e(data.description)}</p>",
             f"<p>{len(done)} of {len(runs)} runs finished "
             f"({runs['job'].nunique() if not runs.empty else 0} jobs x {runs['variant'].nunique() if not runs.empty else 0} variants)."
             f" Tables: {_link(data, summary.summary_csv)}, {_link(data, summary.runs_csv)}, {_link(data, summary.latex)}.</p>"]
    distributed = distributed_note(runs)
    if distributed:
        parts.append(f"<p class='sub'>{_e(distributed)}</p>")
    if data.study is not None:
        parts.append(study_section(data, lambda file: _href(data, file)))
    if notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in notes[:20])
        more = f"<li>... and {len(notes) - 20} more (see {_e(summary.markdown.name)})</li>" if len(notes) > 20 else ""
        parts.append(f"<div class='box warn'><b>{len(notes)} run(s) unfinished, failed or unreadable</b>; "
                     f"the numbers below use finished runs only.<ul>{items}{more}</ul></div>")
    else:
        parts.append("<div class='box ok'>Every run of the grid finished.</div>")
    too_few_seeds = small_sample_warning(data.table, data.metric, data.baseline)
    if too_few_seeds:
        parts.append(f"<div class='box warn'><b>No verdict for some comparisons.</b> {_e(too_few_seeds)}</div>")
    collapsed = collapse_warning(runs, data.group_keys)
    if collapsed:
        parts.append(f"<div class='box warn'><b>Expert collapse.</b> {_e(collapsed)}</div>")
    parts.append(headline(data))
    if data.configurations:
        others = "".join(f"<li><b>{_e(row.configuration)}</b>: {_e(row.differs)} ({row.runs} run(s), {row.seeds} seed(s))</li>"
                         for row in data.other_configurations.itertuples())
        parts.append(f"<div class='box{' warn' if others else ''}'>"
                     f"{_e(configurations_note(data.configurations, data.other_configurations))}"
                     + (f"<ul>{others}</ul>" if others else "") + "</div>")
    note = comparisons_note(data.table, data.metric, data.baseline)
    if note:  # on the first screen: how the verdicts above were reached
        parts.append(f"<p class='sub'>{_e(note)}</p>")
    matched = data.matched
    if matched:
        items = "".join(f"<li>{_e(describe_match(entry))}</li>" for entry in matched[:MAX_MATCHED_LINES])
        more = (f"<li>... and {len(matched) - MAX_MATCHED_LINES} more in the summary table</li>"
                if len(matched) > MAX_MATCHED_LINES else "")
        parts.append(f"<div class='box headline'><b>Against dense models of equal size.</b> {_e(MATCHED_INTRO)}"
                     f"<ul>{items}{more}</ul></div>")
    parts.append("<h2>Summary</h2><p>Grouped by variant and grid values, seeds pooled: mean ± std; "
                 f"'vs baseline' is the difference to <b>{_e(data.baseline or 'the dense baseline')}</b> in the same job, "
                 "paired over seeds, with its 95 % confidence interval.</p>")
    short = short_table(data.readable, data.metric)
    parts.append(f"<div class='wide'>{short.to_html(index=False, border=0, na_rep='')}</div>"
                 + (f"<p>Every column: <a href='#all-columns'>below</a> and in {_link(data, data.tree.summary.summary_csv)}.</p>"
                    if short.shape[1] < data.readable.shape[1] else "")
                 if not data.readable.empty else "<p>No finished runs yet.</p>")
    experts = _experts_table(done)
    if experts is not None:
        parts.append("<h2>What the experts did</h2><p>Final-epoch balance of the training routing (normalised entropy: "
                     "1 = every expert equally used; collapsed or dead = experts that are the first choice of under 1 % of "
                     "the samples; effective experts = exp(entropy of the first-choice shares); MaxVio = the most loaded "
                     "expert's load over the mean, minus 1), the share of test samples "
                     "whose first expert changed in the last epoch (routing flips), and on the test set the share of "
                     "samples sent to the expert that sees most of their class (routing purity). Under expert choice "
                     "a sample's prediction depends on the other samples of its batch: the share of test predictions "
                     "that change when the test set is batched differently is measured and shown.</p>")
        parts.append(experts.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.3f}"))
    if short_table(data.readable, data.metric).shape[1] < data.readable.shape[1]:
        parts.append(f"<h2 id='all-columns'>Summary, every column</h2>"
                     f"<div class='wide'>{data.readable.to_html(index=False, border=0, na_rep='')}</div>")
    parts.append("<h2>Plots</h2>")
    for plot in drawn:
        parts.append(f"<figure><img src='{_e(_href(data, summary.plot(plot.name, 'png')))}' alt='{_e(plot.name)}'>"
                     f"<figcaption><b>{_e(plot.name)}</b>: {_e(plot.caption)} "
                     f"<a href='{_e(_href(data, summary.plot(plot.name, 'svg')))}'>SVG</a></figcaption></figure>")
    if not_drawn:
        parts.append("<p>Not drawn: " + "; ".join(f"{_e(k)} ({_e(v)})" for k, v in not_drawn.items()) + ".</p>")
    parts.append(f"<h2>Configuration</h2><details><summary>{_e(data.tree.experiment_file.name)} (resolved, as last "
                 f"launched)</summary><pre>{_e(data.experiment_yaml)}</pre></details>")
    if data.last_launch:
        parts.append(f"<details><summary>Provenance of the last launch</summary>"
                     f"<pre>{_e(json.dumps(data.last_launch, indent=2))}</pre></details>")
    parts.append("<p class='sub'>Written by moelab create-plots. Static files: open from disk or any web server.</p></body></html>")
    return "\n".join(parts)


def headline(data: ReportData) -> str:
    """The first-screen box: the best variant and grid point (for a search: the objective's variant
    in the trial selected on validation, never the best test score of all trials), its difference to
    the baseline with the verdict, and what its experts did."""
    table, metric, baseline = data.table, data.metric, data.baseline
    column = f"test_{metric}_mean"
    if table.empty or column not in table:
        return "<div class='box headline'>No finished runs yet: nothing to compare.</div>"
    if data.study is None:
        scope = data
        best = table.sort_values(column, ascending=not higher_is_better(metric)).iloc[0]
        lead = f"has the best test {_e(metric)}"
    else:
        scope = best_trials_data(data, 1)
        if scope is None or scope.table.empty:
            return "<div class='box headline'>No trial has completed yet: none selected.</div>"
        objective = data.study.objective
        rows = scope.table[scope.table["variant"] == objective["variant"]]
        best = (rows if not rows.empty else scope.table).iloc[0]
        selected = data.study.summary.get("best") or {}
        lead = (f"in trial {_e(selected.get('number', '?'))}, selected on validation ({_e(objective['metric'])} of "
                f"{_e(objective['variant'])}), has test {_e(metric)}")
    point = ", ".join(f"{axis_label(k)}={best[k]}" for k in data.group_keys if k != "variant")
    text = (f"<b>{_e(best['variant'])}</b>{' (' + _e(point) + ')' if point else ''} {lead}: "
            f"<b>{best[column]:.4f}</b> ± {_nan0(best.get(f'test_{metric}_std')):.4f} over {int(best['n'])} seed(s)")
    diff = best.get(f"diff_test_{metric}_mean")
    if baseline and diff is not None and diff == diff and best["variant"] != baseline:
        half = best.get(f"diff_test_{metric}_ci95")
        interval = f" (95 % CI [{diff - half:+.4f}, {diff + half:+.4f}])" if half == half else ""
        adjusted = best.get(f"diff_test_{metric}_p_holm")
        method = {"bootstrap": "paired bootstrap over seeds and test examples", "sign-flip": "sign-flip test over seeds"}.get(
            best.get(f"diff_test_{metric}_method"), "paired test")
        test = (f"{method}, Holm-adjusted over {family_size(table, metric)} comparison(s) at "
                f"family-wise {FAMILY_WISE_ALPHA * 100:g} %: p = {adjusted:.2g}" if adjusted == adjusted else "no test")
        degenerate = degenerate_reason(int(best[f"diff_test_{metric}_n"]), best[f"diff_test_{metric}_std"])
        if degenerate:
            test += f"; no verdict: {degenerate}"
        text += (f"; <b>{diff:+.4f}</b> vs {_e(baseline)} in the same jobs{interval}: "
                 f"<b>{_e(best[f'diff_test_{metric}_verdict'])}</b> ({test}).")
    elif baseline and best["variant"] == baseline:
        text += ": the dense baseline has the highest mean (whether another variant is worse: its verdict below)."
    else:
        text += "."
    done = finished(scope.runs)
    rows = done[done["variant"] == best["variant"]]
    if "load_entropy" in rows and rows["load_entropy"].notna().any():
        collapsed = rows["num_collapsed_experts"].mean() if "num_collapsed_experts" in rows else 0.0
        text += (f"<br>Its experts: balance (normalised entropy) {rows['load_entropy'].mean():.3f}, "
                 f"{collapsed:.1f} collapsed expert(s) on average")
        if "routing_purity" in rows and rows["routing_purity"].notna().any():
            text += f", routing purity {rows['routing_purity'].mean():.3f} (share of test samples sent to their class's main expert)"
        text += "."
    return f"<div class='box headline'>{text}</div>"


def _experts_table(done: pd.DataFrame) -> pd.DataFrame | None:
    if done.empty or "load_entropy" not in done:
        return None
    moe = done[done["load_entropy"].notna()].copy()
    if moe.empty:
        return None
    columns = {"load_entropy": "balance (entropy)", "load_cv": "load CV", "num_collapsed_experts": "collapsed experts",
               "dead_expert_fraction": "dead experts (share)", "effective_experts": "effective experts",
               "max_vio": "MaxVio (max load / mean - 1)",
               "test_batch_dependence": "predictions changed by another batching (expert choice)",
               "routing_flip_rate": "routing flips (last epoch)", "routing_purity": "routing purity",
               "test_guide_agreement": "guide agreement"}
    present = [c for c in columns if c in moe]
    table = moe.groupby("variant", sort=False)[present].mean().reset_index()
    return table.rename(columns=columns)


def _href(data: ReportData, file: Path) -> str:
    """The address of a file of the tree relative to the page, so the report works from disk and any server."""
    return Path(os.path.relpath(file, data.tree.report_file.parent)).as_posix()


def _link(data: ReportData, file: Path) -> str:
    return f"<a href='{_e(_href(data, file))}'>{_e(file.name)}</a>"


def _nan0(value) -> float:
    return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _e(text) -> str:
    return html.escape(str(text), quote=True)
