"""`status`: one line per job (state, variants done, restarts, node, elapsed) and the totals.

States come from the disk (status.json, results.json), merged with one batched sacct call for what
the disk cannot know; failed jobs show their last error line and where the full log is.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from moelab.config import Experiment
from moelab.launch.plan import FAILURES, merge_states
from moelab.launch.slurm import queue
from moelab.launch.slurm.executor import SUBMISSIONS, log_paths, slurm_folder
from moelab.results.io import read_jsonl
from moelab.results.status import job_state, read_status
from moelab.results.tree import ExperimentTree

NAMES = {"pending": "NOT_STARTED"}  # everything else is shown as its state word in capitals


def submitted_ids(tree: ExperimentTree) -> dict[str, str]:
    """job key -> SLURM id of its latest submission ('123_4', or '123' for a single job)."""
    path = slurm_folder(tree.path) / SUBMISSIONS
    ids: dict[str, str] = {}
    if path.is_file():
        for record in read_jsonl(path):
            ids.update(record.get("jobs", {}))
    return ids


def queue_states(tree: ExperimentTree) -> tuple[dict[str, str], dict[str, queue.QueueRecord], str | None]:
    """(job key -> moelab state from SLURM, job key -> SLURM record, why SLURM could not be asked)."""
    ids = submitted_ids(tree)
    if not ids:
        return {}, {}, None
    try:
        by_id = queue.query(sorted(set(ids.values())))
    except queue.QueueUnavailable as error:
        return {}, {}, str(error)
    records = {key: by_id[i] for key, i in ids.items() if i in by_id}
    states = {key: r.moelab_state for key, r in records.items() if r.moelab_state}
    return states, records, None


def print_status(experiment: Experiment, experiments_dir: Path) -> int:
    tree = ExperimentTree(Path(experiments_dir) / experiment.name)
    names = [v["name"] for v in experiment.doc["variants"]]
    states, records, problem = queue_states(tree)
    ids = submitted_ids(tree)
    totals: Counter = Counter()
    print(f"{'job':<13} {'state':<14} {'variants':>8} {'restarts':>8}  {'node':<12} {'elapsed':>8}  grid values")
    failures = []
    for job in experiment.jobs():
        job_tree = tree.job(job.key)
        state = merge_states(job_state(job_tree, names), states.get(job.key))
        status = read_status(job_tree) or {}
        record = records.get(job.key)
        done = sum(job_tree.variant(n).is_done() for n in names)
        restarts = max(status.get("attempts", 1) - 1, status.get("slurm", {}).get("restart_count", 0), 0)
        node = status.get("host") or (record.node if record else "") or ""
        elapsed = status.get("elapsed_s") or (record.elapsed_s if record else None)
        shown = NAMES.get(state, state.upper())
        totals[shown] += 1
        point = " ".join(f"{k}={v}" for k, v in job.grid_values.items())
        print(f"{job.key:<13} {shown:<14} {done:>4}/{len(names):<3} {restarts:>8}  {node[:12]:<12} "
              f"{_duration(elapsed):>8}  {point}")
        if state in FAILURES:
            failures.append((job.key, shown, _last_error(status, record), ids.get(job.key)))
    print("\n" + ", ".join(f"{n} {s}" for s, n in sorted(totals.items())) + f" ({sum(totals.values())} jobs)")
    for key, shown, error, slurm_id in failures:
        print(f"  {shown} {key}: {error}")
        if slurm_id:
            out, err = log_paths(tree.path, slurm_id)
            print(f"    log: {err} (stdout: {out.name})")
        else:
            print(f"    details: {tree.job(key).status_file}")
    if problem:
        print(f"note: SLURM could not be asked ({problem}); states are from the disk only")
    if failures:
        print(f"rerun the failed jobs with: bash run/launch_experiment.sh submit {experiment.source} --rerun-failed")
    return 0


def _last_error(status: dict, record: queue.QueueRecord | None) -> str:
    for variant in status.get("variants", {}).values():
        if variant.get("error"):
            return variant["error"]
    if status.get("error"):
        return status["error"]
    if record is not None:
        return f"SLURM says {record.state} (exit code {record.exit_code})"
    return "no error recorded"


def _duration(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
