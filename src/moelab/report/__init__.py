"""create-plots: tables, plots and an HTML report for experiment folders.

    <experiment>/summary/   runs.csv, summary.csv, summary.md, summary.tex, *.png and *.svg
    <experiment>/report/    index.html (static; reads the plots from ../summary/)
"""

from __future__ import annotations

import warnings
from pathlib import Path

from moelab.report import html, plots
from moelab.report.tables import add_baseline_differences, compact, group_columns, summarise, to_latex, to_markdown
from moelab.results import collect
from moelab.results.io import atomic_write, read_jsonl, write_text
from moelab.results.status import JobState

DONE = JobState.DONE.value


def write_report(experiment_dirs: list[Path]) -> list[Path]:
    """Write summary/ and report/ for each experiment folder; print where they are and what is missing."""
    return [_write_one(Path(path)) for path in experiment_dirs]


def write_tables(path: Path, cache: bool = True):
    """runs.csv, summary.csv, summary.md, summary.tex from final results only (no per-epoch files)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = collect(path, curves=False, cache=cache)
    out = path / "summary"
    runs, axes = found.runs, found.grid_axes
    metric = runs["metric"].dropna().iloc[0] if "metric" in runs and runs["metric"].notna().any() else "acc"
    runs, baseline = add_baseline_differences(runs, metric)
    table = summarise(runs, axes)
    readable = compact(table, group_columns(runs, axes) if not runs.empty else [], metric)
    atomic_write(out / "runs.csv", lambda f: runs.drop(columns=["path"], errors="ignore").to_csv(f, index=False))
    atomic_write(out / "summary.csv", lambda f: table.to_csv(f, index=False))
    notes = list(found.problems)
    unfinished = runs[runs["state"] != DONE] if not runs.empty else runs
    for row in unfinished.itertuples(index=False):
        error = f": {row.error}" if isinstance(getattr(row, "error", None), str) else ""
        notes.append(f"job {row.job} variant {row.variant}: {row.state}{error}")
    write_text(out / "summary.md", _markdown(path.name, readable, baseline, notes))
    write_text(out / "summary.tex", to_latex(readable, f"{path.name}: test {metric}, mean ± std over seeds"
                                             + (f"; difference to {baseline} paired over seeds" if baseline else "")))
    return runs, axes, metric, baseline, table, readable, notes


def _write_one(path: Path) -> Path:
    out = path / "summary"
    runs, axes, metric, baseline, table, readable, notes = write_tables(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        curves = collect(path, cache=True).curves
    drawn, skipped = [], {}
    numeric_axes = [a for a in axes if a != "seed"]
    jobs = [
        ("learning_curves", "Validation metric and training loss per epoch, mean ± std over seeds.",
         lambda p: plots.learning_curves(curves, axes, metric, p)),
        (f"test_{metric}", "Final test metric per variant and grid point (mean ± std over seeds).",
         lambda p: plots.test_metric_bars(runs, axes, metric, p)),
        *[(f"{metric}_vs_{plots.axis_label(a).replace('.', '_')}", f"Final test {metric} against {plots.axis_label(a)}, per variant.",
           lambda p, a=a: plots.metric_vs_axis(runs, a, metric, p)) for a in numeric_axes],
        ("latency_vs_accuracy", "Inference cost against accuracy, for soft and hard routing: when does an MoE beat "
         "a dense model of equal cost?", lambda p: plots.latency_vs_accuracy(runs, metric, p)),
        ("utilisation", "Share of training samples each expert received, per epoch (first choice).",
         lambda p: plots.utilisation_heatmaps(runs, p)),
        ("specialisation", "Which experts the test samples of each class went to.",
         lambda p: plots.specialisation_heatmaps(runs, p)),
        ("gate_batches", "Gate activations over all training batches.", lambda p: plots.gate_batches(runs, p)),
        ("confusion", "Test confusion matrices.", lambda p: plots.confusion_matrices(runs, p)),
        ("reconstructions", "The target image and each variant's fit.", lambda p: plots.reconstructions(runs, p)),
        ("training_time", "Training time per run.", lambda p: plots.training_time(runs, p)),
        ("params_vs_metric", "Parameter count against the test metric.", lambda p: plots.params_vs_metric(runs, metric, p)),
    ]
    for name, caption, draw in jobs:
        try:
            reason = draw(out / f"{name}.png")
        except Exception as error:  # a damaged analysis file costs its plot, never the report
            reason = f"could not draw it ({type(error).__name__}: {error})"
        if reason:
            skipped[name] = reason
        else:
            drawn.append((f"{name}.png", caption))

    if skipped:
        with open(out / "summary.md", "a") as f:
            f.write("\n## Plots not drawn\n" + "".join(f"- {k}: {v}\n" for k, v in skipped.items()))
    experiment_yaml = (path / "experiment.yaml").read_text() if (path / "experiment.yaml").is_file() else ""
    launches = read_jsonl(path / "launches.jsonl") if (path / "launches.jsonl").is_file() else []
    description = ""
    if experiment_yaml:
        import yaml

        description = (yaml.safe_load(experiment_yaml) or {}).get("description", "")
    page = html.render(path.name, description, runs, readable, table, metric, baseline, drawn, skipped, notes,
                       experiment_yaml, launches[-1] if launches else None)
    write_text(path / "report" / "index.html", page)

    finished_count = int((runs["state"] == DONE).sum()) if not runs.empty else 0
    print(f"{path}: {finished_count} of {len(runs)} runs finished")
    print(f"  report: {path / 'report' / 'index.html'}")
    print(f"  tables: {out / 'summary.csv'}, {out / 'summary.md'}, {out / 'summary.tex'}, {out / 'runs.csv'}")
    if drawn:
        print(f"  plots:  {len(drawn)} in {out}/ (PNG and SVG): {', '.join(n for n, _ in drawn)}")
    for name, reason in skipped.items():
        print(f"  skipped {name}: {reason}")
    if notes:
        print(f"  {len(notes)} note(s) on unfinished or unreadable runs in {out / 'summary.md'}")
    return out


def _markdown(name: str, table, baseline: str | None, notes: list[str]) -> str:
    parts = [f"# {name}: summary\n",
             "Grouped by variant and grid values (seeds pooled): mean ± std over n runs"
             + (f"; 'vs baseline' is the difference to {baseline} in the same job, paired over seeds, with its "
                "95 % confidence interval" if baseline else "")
             + ". Every column, with std and 95 % intervals, is in summary.csv.\n\n", to_markdown(table)]
    if notes:
        parts += ["\n## Unfinished, failed or unreadable\n"] + [f"- {n}\n" for n in notes]
    return "".join(parts)
