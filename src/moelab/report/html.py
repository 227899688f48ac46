"""experiments/<name>/report/index.html: one static page (works from file:// and any web server).

First screen: what is missing or failed, which variant wins and by how much (paired over seeds,
with a 95 % interval), and what its experts did. Then the summary table, every plot, the
unfinished runs, the configuration and the provenance.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd

from moelab.report.plots import axis_label
from moelab.report.tables import finished

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:1rem 2rem;color:#222}
h1{margin-bottom:.2rem} .sub{color:#666;margin-top:0}
.box{border-radius:6px;padding:.8rem 1rem;margin:1rem 0}
.warn{background:#fff4e5;border:1px solid #f0b35c} .ok{background:#eef7ee;border:1px solid #8bc98b}
.headline{background:#eef3fb;border:1px solid #8aa9d6;font-size:1.1rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0} th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
figure{margin:1.5rem 0} figure img{max-width:100%;border:1px solid #ddd} figcaption{color:#555;font-size:.9rem}
pre{background:#f6f6f6;padding:.6rem;overflow:auto;font-size:.8rem} code{background:#f3f3f3;padding:0 .2rem}
"""

def render(name: str, description: str, runs: pd.DataFrame, readable: pd.DataFrame, table: pd.DataFrame,
           metric: str, baseline: str | None, plots: list[tuple[str, str]], skipped: dict[str, str], notes: list[str],
           experiment_yaml: str, launch: dict | None) -> str:
    done = finished(runs)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(name)}: moelab report</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{_e(name)}</h1><p class='sub'>{_e(description)}</p>",
             f"<p>{len(done)} of {len(runs)} runs finished "
             f"({runs['job'].nunique() if not runs.empty else 0} jobs x {runs['variant'].nunique() if not runs.empty else 0} variants)."
             f" Tables: <a href='../summary/summary.csv'>summary.csv</a>, <a href='../summary/runs.csv'>runs.csv</a>,"
             f" <a href='../summary/summary.tex'>summary.tex</a>.</p>"]
    if notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in notes[:20])
        more = f"<li>... and {len(notes) - 20} more (see summary.md)</li>" if len(notes) > 20 else ""
        parts.append(f"<div class='box warn'><b>{len(notes)} run(s) unfinished, failed or unreadable</b>; "
                     f"the numbers below use finished runs only.<ul>{items}{more}</ul></div>")
    else:
        parts.append("<div class='box ok'>Every run of the grid finished.</div>")
    parts.append(_headline(table, runs, metric, baseline))
    parts.append("<h2>Summary</h2><p>Grouped by variant and grid values, seeds pooled: mean ± std; "
                 f"'vs baseline' is the difference to <b>{_e(baseline or 'the dense baseline')}</b> in the same job, "
                 "paired over seeds, with its 95 % confidence interval.</p>")
    parts.append(readable.to_html(index=False, border=0, na_rep="") if not readable.empty else "<p>No finished runs yet.</p>")
    experts = _experts_table(done)
    if experts is not None:
        parts.append("<h2>What the experts did</h2><p>Final-epoch balance of the training routing (normalised entropy: "
                     "1 = every expert equally used; collapsed = experts under 1 % of samples), and on the test set the "
                     "share of samples sent to the expert that sees most of their class (routing purity).</p>")
        parts.append(experts.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.3f}"))
    parts.append("<h2>Plots</h2>")
    for plot, caption in plots:
        stem = Path(plot).stem
        parts.append(f"<figure><img src='../summary/{_e(plot)}' alt='{_e(stem)}'>"
                     f"<figcaption><b>{_e(stem)}</b>: {_e(caption)} "
                     f"<a href='../summary/{_e(stem)}.svg'>SVG</a></figcaption></figure>")
    if skipped:
        parts.append("<p>Not drawn: " + "; ".join(f"{_e(k)} ({_e(v)})" for k, v in skipped.items()) + ".</p>")
    parts.append(f"<h2>Configuration</h2><details><summary>experiment.yaml (resolved, as last launched)</summary>"
                 f"<pre>{_e(experiment_yaml)}</pre></details>")
    if launch:
        parts.append(f"<details><summary>Provenance of the last launch</summary><pre>{_e(json.dumps(launch, indent=2))}</pre></details>")
    parts.append("<p class='sub'>Written by moelab create-plots. Static files: open from disk or any web server.</p></body></html>")
    return "\n".join(parts)


def _headline(table: pd.DataFrame, runs: pd.DataFrame, metric: str, baseline: str | None) -> str:
    column = f"test_{metric}_mean"
    if table.empty or column not in table:
        return "<div class='box headline'>No finished runs yet: nothing to compare.</div>"
    best = table.sort_values(column, ascending=False).iloc[0]
    point = ", ".join(f"{axis_label(k)}={best[k]}" for k in table.columns
                      if k not in ("variant", "n") and not k.endswith(("_mean", "_std", "_ci95")))
    text = (f"<b>{_e(best['variant'])}</b>{' (' + _e(point) + ')' if point else ''} has the best test {_e(metric)}: "
            f"<b>{best[column]:.4f}</b> ± {_nan0(best.get(f'test_{metric}_std')):.4f} over {int(best['n'])} run(s)")
    diff = best.get(f"diff_test_{metric}_mean")
    if baseline and diff is not None and diff == diff and best["variant"] != baseline:
        half = best.get(f"diff_test_{metric}_ci95")
        interval = f" (95 % CI [{diff - half:+.4f}, {diff + half:+.4f}])" if half == half else ""
        verdict = "" if half != half else (" — clearly better" if diff - half > 0 else
                                           " — not distinguishable from the baseline at this n" if diff + half > 0 else
                                           " — worse")
        text += f"; <b>{diff:+.4f}</b> vs {_e(baseline)} in the same jobs{interval}{verdict}."
    elif baseline and best["variant"] == baseline:
        text += ": the dense baseline wins."
    else:
        text += "."
    done = finished(runs)
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
               "routing_purity": "routing purity", "test_guide_agreement": "guide agreement"}
    present = [c for c in columns if c in moe]
    table = moe.groupby("variant", sort=False)[present].mean().reset_index()
    return table.rename(columns=columns)


def _nan0(value) -> float:
    return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _e(text) -> str:
    return html.escape(str(text), quote=True)
