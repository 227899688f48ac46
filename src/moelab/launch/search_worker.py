"""A worker's part in a search: ask the study for a trial, run its jobs, tell the study how it ended.

A worker asks when it is free (no batches): the study hands out the next trial under its lock
(search/study.py), the worker runs the trial's jobs one after another (the grid's jobs at the
trial's point, e.g. its seeds), reporting the objective variant's validation metric after every
epoch so that the pruner can stop the trial there, then tells the study the objective (the mean over
the jobs of the variant's best validation metric), or that the trial was pruned or failed, and asks
again. A job already trained by an earlier trial of the same point is reused, not trained again: its
epochs are reported to the new trial as if it trained them now; a job another worker is training
right now is waited for.

Like worker.py, this module must not import torch at the top.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from moelab.config import Experiment, Job
from moelab.launch.plan import PlanFile
from moelab.results.claims import try_claim
from moelab.results.errors import DamagedRecord
from moelab.results.io import write_json_if_changed
from moelab.results.status import FAILURES, JobState, job_state, read_status
from moelab.results.tree import ExperimentTree

# how often a worker looks again at a job another worker trains, or at a study whose last trials run elsewhere
POLL_S = 1.0


def run_trials(tree: ExperimentTree, plan: PlanFile, report: Callable[[tuple], None],
               stop_requested: Callable[[], bool], runtime_info: dict, wait_for_others: bool) -> None:
    """Run trials until the study has n_trials finished or running. `wait_for_others`: then stay
    while other workers' trials run (one of them may be lost and come back for a retry)."""
    from moelab.search import StudySession

    session = StudySession(tree, Experiment(Path(plan.search["source"]), plan.search["doc"]))
    try:
        _ask_and_run(session, tree, report, stop_requested, runtime_info, wait_for_others)
    except DamagedRecord as error:
        # the study cannot go on from a damaged journal: the worker ends with the one line that says what to
        # do (exit 0: the launcher must not start another worker on it)
        report(("note", f"error: {error}"))


def _ask_and_run(session, tree: ExperimentTree, report, stop_requested, runtime_info: dict,
                 wait_for_others: bool) -> None:
    from moelab.search import write_study_files

    while not stop_requested():
        run = session.next_trial()
        if run is None:
            if wait_for_others and session.has_live_trials():
                time.sleep(POLL_S)
                continue
            return
        try:
            summary = _run_trial(run, tree, report, stop_requested, runtime_info)
        except (KeyboardInterrupt, SystemExit, DamagedRecord):
            raise  # the trial is left running: lost once this worker is gone, retried by the next ask
        except Exception as error:  # a bug must fail its trial, not kill workers one after another
            traceback.print_exc()
            run.fail(f"{type(error).__name__}: {error}")
            summary = f"failed ({type(error).__name__}: {error})"
        finally:
            run.release()
        if summary is None:  # interrupted: lost, retried by the next ask
            return
        try:
            write_study_files(session)
        except Exception as error:  # the files are written again after the next trial and before a report
            print(f"warning: could not write the study files: {type(error).__name__}: {error}", flush=True)
        report(("note", f"{run.describe()}: {summary} [{session.progress().describe()}]"))


def _run_trial(run, tree: ExperimentTree, report, stop_requested, runtime_info: dict) -> str | None:
    """Run (or reuse) the trial's jobs and tell the study how the trial ended; a line on it, or None
    when it was interrupted."""
    reused = 0
    for index, job in enumerate(run.point.jobs):
        state, error = _run_job(run, index, job, tree, report, stop_requested, runtime_info)
        if state is None:
            return None
        if state == "reused":
            reused += 1
        elif state is JobState.PRUNED:
            run.prune()
            return f"pruned after {len(run.reported)} epoch(s) of {run.objective_section['variant']}"
        elif state is not JobState.DONE:
            run.fail(f"job {job.key} {state}: {error}")
            return f"failed: job {job.key} {state} ({error})"
    value = run.complete()
    objective = run.objective_section
    jobs = f"{len(run.point.jobs)} job(s)" + (f", {reused} reused" if reused else "")
    if run.told != "complete":
        return f"failed: {objective['metric']} is not a number ({jobs})"
    return f"complete, {objective['metric']} of {objective['variant']} = {value:.4f} ({jobs})"


def _run_job(run, index: int, job: Job, tree: ExperimentTree, report, stop_requested,
             runtime_info: dict) -> tuple[JobState | str | None, str]:
    """Train job `index` of the trial, or reuse it. Returns its state ("reused" for a finished job
    of an earlier trial, None when interrupted) and its error line."""
    from moelab.train.job import run_job
    from moelab.train.trainer import StopRequested

    job_tree = tree.job(job.key)
    names = [v["name"] for v in job.config["variants"]]  # the job's own: baseline.match adds dense ones
    write_json_if_changed(job_tree.config_file, run.point.job_spec(job))
    while True:
        state = job_state(job_tree, names)
        if state is JobState.RUNNING:  # another trial of the same point trains it now
            if stop_requested():
                return None, ""
            time.sleep(POLL_S)
            continue
        if state is JobState.DONE:
            return (JobState.PRUNED if run.replay(index) else "reused"), ""
        if state in FAILURES:
            status = read_status(job_tree)
            return state, (status.first_error() if status else None) or "failed before"
        # pending, interrupted or pruned by an earlier trial: what it trained counts, then it goes on
        if run.replay(index):
            return JobState.PRUNED, ""
        claim = try_claim(job_tree)
        if claim is None:
            continue  # someone claimed it a moment ago: wait for them
        if job_state(job_tree, names) in (JobState.DONE, *FAILURES):  # finished by its last holder meanwhile
            claim.release()
            continue
        try:
            report(("started", job.key))
            try:
                outcome = run_job(job_tree.path, stop_requested=stop_requested, runtime_info=runtime_info, claim=claim,
                                  should_prune=run.prune_hook(index))
            except StopRequested:  # the claim was lost to a worker that took the job over
                return None, ""
            report(("finished", job.key, asdict(outcome)))
        finally:
            claim.release()
        return outcome.state, "; ".join(f"{k}: {v}" for k, v in outcome.errors.items())
