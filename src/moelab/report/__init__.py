"""create-plots: tables and plots for one or more experiment folders, in <experiment>/summary/."""

from __future__ import annotations

import warnings
from pathlib import Path

from moelab.report import plots
from moelab.report.tables import compact, group_columns, summarise, to_markdown
from moelab.results import collect
from moelab.results.io import atomic_write, write_text
from moelab.results.status import DONE


def write_report(experiment_dirs: list[Path]) -> list[Path]:
    """Write summary/ for each experiment folder; print where things are and what is missing."""
    written = []
    for path in experiment_dirs:
        written.append(_write_one(Path(path)))
    return written


def _write_one(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = collect(path)
    out = path / "summary"
    runs, curves, axes = found.runs, found.curves, found.grid_axes
    metric = runs["metric"].dropna().iloc[0] if "metric" in runs and runs["metric"].notna().any() else "acc"
    table = summarise(runs, axes)
    atomic_write(out / "runs.csv", lambda f: runs.to_csv(f, index=False))
    atomic_write(out / "summary.csv", lambda f: table.to_csv(f, index=False))
    unfinished = runs[runs["state"] != DONE] if not runs.empty else runs
    notes = list(found.problems)
    for row in unfinished.itertuples(index=False):
        error = f": {row.error}" if isinstance(getattr(row, "error", None), str) else ""
        notes.append(f"job {row.job} variant {row.variant}: {row.state}{error}")
    skipped = {}
    for name, draw in (
        ("learning_curves.png", lambda p: plots.learning_curves(curves, axes, metric, p)),
        (f"test_{metric}.png", lambda p: plots.test_metric_bars(runs, axes, metric, p)),
        ("params_vs_metric.png", lambda p: plots.params_vs_metric(runs, metric, p)),
    ):
        reason = draw(out / name)
        if reason:
            skipped[name] = reason
    readable = compact(table, group_columns(runs, axes) if not runs.empty else [], metric)
    write_text(out / "summary.md", _markdown(path.name, readable, notes, skipped))
    print(f"{path}: {int((runs['state'] == DONE).sum()) if not runs.empty else 0} of {len(runs)} runs finished")
    print(f"  tables: {out / 'summary.csv'}, {out / 'summary.md'}, {out / 'runs.csv'}")
    drawn = [name for name in ("learning_curves.png", f"test_{metric}.png", "params_vs_metric.png") if name not in skipped]
    if drawn:
        print(f"  plots:  {', '.join(str(out / n) for n in drawn)}")
    for name, reason in skipped.items():
        print(f"  skipped {name}: {reason}")
    if notes:
        print(f"  {len(notes)} note(s) on unfinished or unreadable runs in {out / 'summary.md'}")
    return out


def _markdown(name: str, table, notes: list[str], skipped: dict[str, str]) -> str:
    parts = [f"# {name}: summary\n", "Grouped by variant and grid values (seeds pooled): mean ± std over n runs; "
             "every column, with std, is in summary.csv.\n\n", to_markdown(table)]
    if notes:
        parts += ["\n## Unfinished, failed or unreadable\n"] + [f"- {n}\n" for n in notes]
    if skipped:
        parts += ["\n## Plots not drawn\n"] + [f"- {k}: {v}\n" for k, v in skipped.items()]
    return "".join(parts)
