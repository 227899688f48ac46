"""Everything one report is made of, from one read of the experiments tree: the runs, the per-epoch
curves, the summary table with its comparisons to the dense baseline, and the notes on what is
missing. Tables, plots and the HTML page are all written from one ReportData."""

from __future__ import annotations

import warnings
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from moelab.report.study import StudyData, read_study
from moelab.report.tables import (SAMPLES, add_baseline_differences, compact, compare_to_baseline, group_columns,
                                  matched_comparisons, summarise)
from moelab.results import ExperimentTree, collect
from moelab.results.configurations import COLUMN, describe_configurations, last_launch_configurations
from moelab.results.samples import read_sample_scores
from moelab.results.errors import DamagedRecord
from moelab.results.records import last_launch
from moelab.results.status import JobState


@dataclass(frozen=True)
class ReportData:
    tree: ExperimentTree
    runs: pd.DataFrame  # one row per job x variant, with diff_test_<metric> to the baseline
    curves: pd.DataFrame  # one row per job x variant x epoch (empty when read without curves)
    grid_axes: list[str]
    metric: str  # the primary metric (results.metric_direction says which way is better)
    baseline: str | None  # the dense variant every other one is compared with
    table: pd.DataFrame  # summarise() with compare_to_baseline(): one row per variant x grid point
    readable: pd.DataFrame  # the same table with formatted cells, for the markdown and LaTeX tables and the page
    notes: list[str]  # runs that are unfinished, failed or unreadable
    experiment_yaml: str = ""  # the resolved experiment as last launched
    last_launch: dict | None = None  # provenance of the last launch
    study: StudyData | None = None  # a search's trials, best trial and importances (report/study.py)
    configurations: list[str] = dataclasses.field(default_factory=list)  # the configuration(s) reported on
    # the other configurations in the folder: id, what differs, runs, seeds (results.configurations)
    other_configurations: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)

    @property
    def name(self) -> str:
        return self.tree.name

    @property
    def description(self) -> str:
        parsed = yaml.safe_load(self.experiment_yaml) if self.experiment_yaml else None
        return str(parsed.get("description", "")) if isinstance(parsed, dict) else ""

    @property
    def group_keys(self) -> list[str]:
        """The columns that name a row of the summary table: variant and grid values other than the seed."""
        return group_columns(self.runs, self.grid_axes) if not self.runs.empty else []

    @property
    def matched(self) -> list[dict]:
        """The comparisons of each MoE variant with its dense models of equal size (tables.matched_comparisons)."""
        return matched_comparisons(self.runs, self.table, self.metric, self.group_keys)


class UnknownConfiguration(ValueError):
    """A configuration id asked for that no job of the folder has."""


def read_report_data(path: Path, curves: bool = True, cache: bool = True, configuration: str | None = None) -> ReportData:
    """One collect of the experiment folder (curves=False: final results only, enough for the tables),
    restricted to one configuration: the last launch's, or the one whose id is `configuration`."""
    tree = ExperimentTree(Path(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what could not be read comes back in `problems` and becomes a note
        found = collect(tree.path, curves=curves, cache=cache)
    experiment_yaml = tree.experiment_file.read_text() if tree.experiment_file.is_file() else ""
    try:
        launch = last_launch(tree)
    except DamagedRecord as error:
        launch = None
        found.problems.append(f"{error.path}: {error.problem}; {error.remedy}")
    runs, run_curves = found.runs, found.curves
    if not runs.empty:  # per-sample test scores of finished runs, for the paired test over test examples
        runs = runs.assign(**{SAMPLES: [read_sample_scores(path) if state == JobState.DONE else None
                                        for path, state in zip(runs["path"], runs["state"])]})
    if configuration is not None and (runs.empty or configuration not in set(runs[COLUMN])):
        known = ", ".join(dict.fromkeys(runs[COLUMN])) if not runs.empty else "none"
        raise UnknownConfiguration(f"{tree.path}: no configuration {configuration!r} (found: {known}); "
                                   "the ids are listed on the report's first screen")
    covered = [configuration] if configuration is not None else last_launch_configurations(tree, runs)
    others = describe_configurations(runs, covered, found.grid_axes)
    if covered:
        runs = runs[runs[COLUMN].isin(covered)]
        if not run_curves.empty:
            run_curves = run_curves[run_curves["job"].isin(set(runs["job"]))]
    data = report_data_from_runs(tree, runs, run_curves, found.grid_axes, found.problems, experiment_yaml,
                                 launch.to_dict() if launch else None, read_study(tree))
    return dataclasses.replace(data, configurations=covered, other_configurations=others)


def report_data_from_runs(tree: ExperimentTree, runs: pd.DataFrame, curves: pd.DataFrame, grid_axes: list[str],
                          problems: list[str], experiment_yaml: str = "", last_launch: dict | None = None,
                          study: StudyData | None = None) -> ReportData:
    """The statistics of a report from runs as moelab.results.collect returns them."""
    metric = runs["metric"].dropna().iloc[0] if "metric" in runs and runs["metric"].notna().any() else "acc"
    parsed = yaml.safe_load(experiment_yaml) if experiment_yaml else None
    named = ((parsed.get("baseline") or {}).get("variant") if isinstance(parsed, dict) else None)
    runs, baseline = add_baseline_differences(runs, metric, named)
    table = compare_to_baseline(summarise(runs, grid_axes), metric, baseline)
    readable = compact(table, group_columns(runs, grid_axes) if not runs.empty else [], metric)
    notes = list(problems)
    # a run a search pruned is no problem: the study section counts those
    unfinished = runs[~runs["state"].isin([JobState.DONE, JobState.PRUNED])] if not runs.empty else runs
    for row in unfinished.itertuples(index=False):
        error = f": {row.error}" if isinstance(getattr(row, "error", None), str) else ""
        notes.append(f"job {row.job} variant {row.variant}: {row.state}{error}")
    return ReportData(tree, runs, curves, list(grid_axes), metric, baseline, table, readable, notes, experiment_yaml,
                      last_launch, study)
