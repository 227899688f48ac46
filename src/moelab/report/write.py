"""Writing an experiment's summary folder and HTML report (what create-plots and run_here's report do)."""

from __future__ import annotations

from pathlib import Path

from moelab.report import html
from moelab.report.data import ReportData, read_report_data
from moelab.report.plots import draw_plots
from moelab.report.tables import (MATCHED_INTRO, SAMPLES, SAMPLES_SUFFIX, collapse_warning, comparisons_note, configurations_note, describe_match,
                                  distributed_note, short_table, small_sample_warning, to_latex, to_markdown)
from moelab.results.io import atomic_write, write_text
from moelab.results.status import JobState


def write_report(experiment_dirs: list[Path], configuration: str | None = None) -> list[Path]:
    """Write the summary folder and the HTML report of each experiment folder, on the configuration
    of its last launch or the one whose id is `configuration` (results/configurations.py); print where
    they are and what is missing. Returns the summary folders."""
    return [_write_one(Path(path), configuration) for path in experiment_dirs]


def write_tables(path: Path, cache: bool = True) -> ReportData:
    """The tables alone, from final results only (no per-epoch files, no plots, no page)."""
    data = read_report_data(Path(path), curves=False, cache=cache)
    _write_csv_and_latex(data)
    write_text(data.tree.summary.markdown, _markdown(data, not_drawn={}))
    return data


def _write_one(path: Path, configuration: str | None) -> Path:
    data = read_report_data(path, configuration=configuration)
    summary = data.tree.summary
    _write_csv_and_latex(data)
    drawn, not_drawn = draw_plots(data)
    write_text(summary.markdown, _markdown(data, not_drawn))  # after the plots: it lists those not drawn
    write_text(data.tree.report_file, html.render(data, drawn, not_drawn))

    runs = data.runs
    finished_count = int((runs["state"] == JobState.DONE).sum()) if not runs.empty else 0
    print(f"{path}: {finished_count} of {len(runs)} runs finished (configuration {', '.join(data.configurations) or '-'})")
    if not data.other_configurations.empty:
        print(f"  {len(data.other_configurations)} other configuration(s) in the folder, not in this report: "
              f"{', '.join(data.other_configurations['configuration'])} (--configuration ID reports on one)")
    print(f"  report: {data.tree.report_file}")
    print(f"  tables: {summary.summary_csv}, {summary.markdown}, {summary.latex}, {summary.runs_csv}")
    if drawn:
        print(f"  plots:  {len(drawn)} in {summary.path}/ (PNG and SVG): "
              f"{', '.join(summary.plot(p.name).name for p in drawn)}")
    for name, reason in not_drawn.items():
        print(f"  skipped {name}: {reason}")
    if data.notes:
        print(f"  {len(data.notes)} note(s) on unfinished or unreadable runs in {summary.markdown}")
    return summary.path


def _write_csv_and_latex(data: ReportData) -> None:
    summary = data.tree.summary
    # per-sample scores stay in the variants' analysis folders: one number per cell here
    arrays = [c for c in data.runs.columns if c == SAMPLES or c.endswith(SAMPLES_SUFFIX)]
    atomic_write(summary.runs_csv, lambda f: data.runs.drop(columns=["path", *arrays], errors="ignore").to_csv(f, index=False))
    atomic_write(summary.summary_csv, lambda f: data.table.to_csv(f, index=False))
    caption = f"{data.name}: test {data.metric}, mean ± std over seeds"
    if data.baseline:
        caption += (f"; difference to {data.baseline} paired over seeds; verdicts by a paired test (its method is in "
                    f"{summary.markdown.name}), Holm-adjusted over all comparisons (family-wise 5 %)")
    write_text(summary.latex, to_latex(short_table(data.readable, data.metric), caption))


def _markdown(data: ReportData, not_drawn: dict[str, str]) -> str:
    parts = [f"# {data.name}: summary\n",
             "Grouped by variant and grid values (seeds pooled): mean ± std over n runs"
             + (f"; 'vs baseline' is the difference to {data.baseline} in the same job, paired over seeds, with its "
                "95 % confidence interval" if data.baseline else "")
             + f". Every column, with std and 95 % intervals, is in {data.tree.summary.summary_csv.name}.\n\n"]
    if data.configurations:
        parts.append(f"{configurations_note(data.configurations, data.other_configurations)}\n\n")
        parts += [f"- {row.configuration}: {row.differs} ({row.runs} run(s), {row.seeds} seed(s))\n"
                  for row in data.other_configurations.itertuples()]
        parts.append("\n" if not data.other_configurations.empty else "")
    too_few_seeds = small_sample_warning(data.table, data.metric, data.baseline)
    if too_few_seeds:
        parts.append(f"**No verdict for some comparisons.** {too_few_seeds}\n\n")
    collapsed = collapse_warning(data.runs, data.group_keys)
    if collapsed:
        parts.append(f"**Expert collapse.** {collapsed}\n\n")
    distributed = distributed_note(data.runs)
    if distributed:
        parts.append(f"{distributed}\n\n")
    note = comparisons_note(data.table, data.metric, data.baseline)
    if note:
        parts.append(f"{note}\n\n")
    parts.append(to_markdown(data.readable))
    if data.matched:
        parts += [f"\n## Against dense models of equal size\n\n{MATCHED_INTRO}\n\n"]
        parts += [f"- {describe_match(entry)}\n" for entry in data.matched]
    if data.notes:
        parts += ["\n## Unfinished, failed or unreadable\n"] + [f"- {n}\n" for n in data.notes]
    if not_drawn:
        parts += ["\n## Plots not drawn\n"] + [f"- {name}: {reason}\n" for name, reason in not_drawn.items()]
    return "".join(parts)
