"""Hyperparameter search over an experiment's space with Optuna (samplers, pruners, ask-and-tell).

The study lives in Optuna's file journal inside the experiment folder (results.tree.StudyFiles), so
workers on any node of a shared filesystem ask it for trials with no database server. A trial is
one point of the space applied to the experiment like grid values; its jobs are the grid's jobs at
that point, keyed and stored like any other job, so a point trained before is never trained again.

    study.py    open the study, reconcile lost trials, ask for the next trial, tell how it ended
    space.py    the space as Optuna distributions, a point as jobs, the objective from a trial's jobs
    export.py   trials.csv, study.json (with parameter importances) and best.yaml, for the report

Workers (launch/search_worker.py) run the trials; the report reads only the exported files.
"""

from moelab.search.export import write_study_files
from moelab.search.study import StudyProgress, StudySession, TrialRun

__all__ = ["StudyProgress", "StudySession", "TrialRun", "write_study_files"]
