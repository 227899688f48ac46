"""`status`: one line per job (state, variants done, restarts, node, elapsed) and the totals.

States come from the disk (status.json, results.json), merged with what each backend's queue knows
and the disk cannot; failed jobs show their last error line and where to read more.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from moelab.config import Experiment
from moelab.launch.backends import BACKENDS, backend_class
from moelab.launch.base import QueueView, rerun_failed_command
from moelab.results.errors import DamagedRecord
from moelab.results.records import last_launch
from moelab.results.states import view_job
from moelab.results.status import FAILURES
from moelab.results.tree import ExperimentTree


def print_status(experiment: Experiment, experiments_dir: Path) -> int:
    tree = ExperimentTree(Path(experiments_dir) / experiment.name)
    if "search" in experiment.doc:
        return print_search_status(experiment, tree)
    backends = [backend_class(mode) for mode in BACKENDS]
    views, view = queue_views(tree, backends)
    totals: Counter = Counter()
    print(f"{'job':<13} {'state':<14} {'variants':>8} {'restarts':>8}  {'node':<12} {'elapsed':>8}  grid values")
    failures = []
    for job, current in job_views(experiment, tree, view):
        job_tree = tree.job(job.key)
        state, status = current.state, current.status
        node = (status.host if status else None) or view.nodes.get(job.key, "")
        elapsed = (status.elapsed_s if status else None) or view.elapsed_s.get(job.key)
        totals[state.shown] += 1
        point = " ".join(f"{k}={v}" for k, v in job.grid_values.items())
        distributed = job.config["train"].get("distributed", {})
        if distributed.get("processes", 1) > 1:  # one job, trained by several processes (train/distributed.py)
            sharded = ", experts sharded" if distributed.get("expert_parallel") else ""
            point = f"{point}  ({distributed['processes']} processes{sharded})".strip()
        print(f"{job.key:<13} {state.shown:<14} {current.variants_done:>4}/{len(current.variants):<3} {status.restarts if status else 0:>8}  "
              f"{node[:12]:<12} {_duration(elapsed):>8}  {point}")
        if state in FAILURES:
            error = (status.first_error() if status else None) or view.notes.get(job.key) or "no error recorded"
            details = [line for backend in backends for line in backend.failure_details(tree, job.key)]
            failures.append((job.key, state.shown, error, details or [f"details: {job_tree.status_file}"]))
    print("\n" + ", ".join(f"{n} {s}" for s, n in sorted(totals.items())) + f" ({sum(totals.values())} jobs)")
    for key, shown, error, details in failures:
        print(f"  {shown} {key}: {error}")
        for line in details:
            print(f"    {line}")
    for backend, part in views:
        if part.problem:
            print(f"note: the {backend.mode} queue could not be asked ({part.problem}); states are from the disk only")
    if failures:
        print(f"rerun the failed jobs with: {rerun_hint(experiment, tree)}")
    return 0


def queue_views(tree: ExperimentTree, backends) -> tuple[list, QueueView]:
    """What each backend's queue knows of the experiment, and all of it merged."""
    views = [(backend, backend.queue_view(tree)) for backend in backends]
    view = QueueView()
    for _, part in views:
        for name in ("states", "notes", "nodes", "elapsed_s"):
            getattr(view, name).update(getattr(part, name))
    return views, view


def job_views(experiment: Experiment, tree: ExperimentTree, view: QueueView):
    """(job, its state from the disk merged with the queues') for every job of the experiment."""
    for job in experiment.jobs():
        # the job's own variants: with the dense ones baseline.match adds
        yield job, view_job(tree.job(job.key), [v["name"] for v in job.config["variants"]], view.states.get(job.key))


def state_counts(experiment: Experiment, tree: ExperimentTree) -> Counter:
    """How many jobs are in each state, as `status` counts them."""
    _, view = queue_views(tree, [backend_class(mode) for mode in BACKENDS])
    return Counter(current.state.shown for _, current in job_views(experiment, tree, view))


def rerun_hint(experiment: Experiment, tree: ExperimentTree) -> str:
    """The last launch's own command (run_here or submit, its file, overrides and options) with
    --rerun-failed."""
    try:
        last = last_launch(tree)
    except DamagedRecord:  # a damaged record costs the hint its options, not the status
        last = None
    if last is None:
        return rerun_failed_command([], "submit", experiment.source)
    return rerun_failed_command(last.argv, last.mode, last.experiment_file or experiment.source)


def _duration(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def print_search_status(experiment: Experiment, tree: ExperimentTree) -> int:
    """A search: one line per trial (state, objective, epochs of the objective variant, its point)."""
    from moelab.search import StudySession
    from moelab.search.export import trial_state

    session = StudySession(tree, experiment)
    trials = session.trials()
    metric = experiment.doc["search"]["objective"]["metric"]
    print(f"{'trial':>5} {'state':<9} {metric:>10} {'epochs':>6}  point")
    for trial in trials:
        state = trial_state(trial)
        if state == "running" and session.is_lost(trial):
            state = "lost"  # told to the study by the next worker that asks
        value = f"{trial.value:.4f}" if trial.value is not None else ""
        point = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        print(f"{trial.number:>5} {state:<9} {value:>10} {len(trial.intermediate_values):>6}  {point}")
    print(f"\nsearch: {session.progress().describe()}")
    if tree.study.best_experiment.is_file():
        print(f"best trial, ready to run: {tree.study.best_experiment}")
    return 0
