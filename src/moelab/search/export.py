"""What a study leaves for the report and for people: trials.csv, study.json and best.yaml.

Written by the worker that tells the study how a trial ended, and again before every report (the
launch's own report, run/create-plots.py), so the report (which must not import this package) reads
plain files: one row per trial, the counts and the best trial with the parameter importances, and
the best point as an experiment file ready to run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from pathlib import Path

import optuna
import yaml
from filelock import FileLock
from optuna.trial import FrozenTrial, TrialState

from moelab.config import Experiment
from moelab.config.search import apply_point
from moelab.results.io import write_json, write_text
from moelab.results.tree import ExperimentTree
from moelab.search.study import FAILURE, StudySession


def refresh_study_files(experiment_dir: Path) -> None:
    """The study files of an experiment folder, from its journal (nothing when it holds no study)."""
    tree = ExperimentTree(Path(experiment_dir))
    if not tree.study.journal.is_file() or not tree.experiment_file.is_file():
        return
    doc = yaml.safe_load(tree.experiment_file.read_text())  # the resolved experiment, as last launched
    if isinstance(doc, dict) and doc.get("search"):
        write_study_files(StudySession(tree, Experiment(tree.experiment_file, doc)))


def trial_state(trial: FrozenTrial) -> str:
    """complete, pruned, failed (by its own error), lost (its worker died; retried), running, waiting."""
    if trial.state is TrialState.FAIL:
        return "failed" if FAILURE in trial.user_attrs else "lost"
    return trial.state.name.lower()


def write_study_files(session: StudySession) -> None:
    if not session.exists():
        return
    files = session.files
    with FileLock(files.export_lock):  # the last writer reads the newest journal
        study = session.load()
        trials = study.get_trials(deepcopy=False)
        keys = list(session.search["space"])
        write_text(files.trials_csv, _trials_csv(trials, keys))
        summary = _summary(session, study, trials)
        write_json(files.summary, summary)
        if summary["best"] is not None:
            write_text(files.best_experiment, best_experiment_text(session, summary["best"]))


def _trials_csv(trials: list[FrozenTrial], keys: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["number", "state", "value", *keys, "epochs", "retry_of", "failure", "jobs", "started", "finished",
                     "seconds"])
    for trial in trials:
        seconds = ((trial.datetime_complete - trial.datetime_start).total_seconds()
                   if trial.datetime_complete and trial.datetime_start else None)
        writer.writerow([trial.number, trial_state(trial), _number(trial.value),
                         *[trial.params.get(key, "") for key in keys],
                         len(trial.intermediate_values),  # epochs of the objective variant it trained or reused
                         trial.user_attrs.get("retry_of", ""), trial.user_attrs.get(FAILURE, ""),
                         " ".join(trial.user_attrs.get("jobs", [])),
                         trial.datetime_start.isoformat(timespec="seconds") if trial.datetime_start else "",
                         trial.datetime_complete.isoformat(timespec="seconds") if trial.datetime_complete else "",
                         "" if seconds is None else round(seconds, 1)])
    return out.getvalue()


def _summary(session: StudySession, study: optuna.Study, trials: list[FrozenTrial]) -> dict:
    search = session.search
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    best = None
    if complete:
        trial = study.best_trial
        best = {"number": trial.number, "value": trial.value, "params": trial.params,
                "jobs": trial.user_attrs.get("jobs", [])}
    importances, why_not = None, None
    if len(complete) < 2:
        why_not = f"needs at least 2 complete trials, has {len(complete)}"
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
            importances = {key: float(value) for key, value in found.items()}
        except (ValueError, RuntimeError) as error:  # e.g. every complete trial at the same point
            why_not = f"could not be computed ({error})"
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial_state(trial)] = counts.get(trial_state(trial), 0) + 1
    return {
        "experiment": session.experiment.name, "sampler": search["sampler"], "pruner": search["pruner"]["name"],
        "n_trials": session.n_trials, "parallel": search["parallel"], "objective": search["objective"],
        "space": search["space"], "counts": counts, "finished": session.progress_of(trials).finished,
        "best": best, "importances": importances, "importances_note": why_not,
    }


def best_experiment_text(session: StudySession, best: dict) -> str:
    """The experiment at the best point, `search:` removed: an ordinary grid experiment (its own name,
    so that running it does not mix with the study)."""
    doc = apply_point(session.experiment.doc, best["params"])
    name = session.experiment.name
    doc["name"] = f"{name}-best"
    objective = session.search["objective"]
    point = ", ".join(f"{k}={v}" for k, v in best["params"].items())
    doc["description"] = f"best point of the search {name} (trial {best['number']}): {point}"
    header = (f"# The best trial of the search {name}: trial {best['number']}, "
              f"{objective['metric']} of {objective['variant']} = {best['value']:.4f} (mean over "
              f"{len(best['jobs'])} job(s)).\n"
              "# Run it with: bash run/launch_experiment.sh run_here <this file>   (more seeds: grid.seed=[0,1,2,3,4])\n")
    return header + yaml.safe_dump(doc, sort_keys=False)


def _number(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else json.dumps(value)
