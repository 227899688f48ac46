"""A worker: a process that pulls the jobs of a launch's plan, one at a time, until none is left
(and, for a search, then runs the trials it asks the study for: launch/search_worker.py).

Local workers (run_here) and the workers inside each SLURM array task are the same: each reads
launches/<id>/plan.json, claims the next job nobody holds (results/claims.py), runs it, and claims
the next. No job runs twice at once; a job whose worker died is taken over once its claim is stale.

This module must not import torch at the top: the GPU a worker may see is set in its environment
before torch is first imported (`train.process.prepare_process`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from moelab.launch.plan import PlanFile
from moelab.results.claims import Claim, try_claim
from moelab.results.records import JobSpec, read_job_spec
from moelab.results.status import JobState, job_state, read_status
from moelab.results.tree import ExperimentTree, JobTree
from moelab.train.process import prepare_process
from moelab.train.stop import STOP_SIGNALS, request_stop, stop_on_signals, stop_requested

# how often a worker with nothing to claim looks again at jobs held by others
POLL_S = 1.0


def pull_jobs(tree: ExperimentTree, plan: PlanFile, report: Callable[[tuple], None],
              stop_requested: Callable[[], bool], runtime_info: dict, wait_for_others: bool) -> None:
    """Run the plan's jobs that are still this launch's to run. `report` receives ("started", key),
    ("finished", key, outcome) and ("settled", key, state) for a job someone else finished.
    `wait_for_others`: stay while other processes hold jobs (a local launch waits for them; a SLURM
    task leaves them to their holders and frees its allocation). With `plan.fuse` > 1, a claimed job
    takes up to fuse - 1 more of the plan's jobs that differ from it only in their seed, trained as
    one model (train/fused.py)."""
    from moelab.train.job import JobOutcome, run_fused_jobs, run_job  # imports torch: after prepare_process
    from moelab.train.trainer import StopRequested

    remaining = {key: attempts for key, attempts in plan.jobs}
    specs: dict[str, JobSpec] = {}

    fusion_keys: dict[str, str] = {}

    def spec(key: str) -> JobSpec:
        if key not in specs:
            specs[key] = read_job_spec(tree.job(key))
        return specs[key]

    def fusion_key(key: str) -> str:  # compared for every remaining job at each claim: computed once
        if key not in fusion_keys:
            fusion_keys[key] = spec(key).fusion_key
        return fusion_keys[key]

    def claim_to_run(key: str) -> tuple[Claim | None, bool]:
        """The job's claim when it is this launch's to run now; and whether a live process holds it."""
        job = tree.job(key)
        verdict = _verdict(job, spec(key).variant_names, remaining[key], plan.launch_id)
        if verdict == "settled":
            report(("settled", key, str(job_state(job, spec(key).variant_names))))
            del remaining[key]
            return None, False
        if verdict == "held":
            return None, True
        claim = try_claim(job)
        if claim is None:
            return None, True
        # again: someone may have just finished it
        if _verdict(job, spec(key).variant_names, remaining[key], plan.launch_id, claimed=True) == "settled":
            claim.release()
            report(("settled", key, str(job_state(job, spec(key).variant_names))))
            del remaining[key]
            return None, False
        return claim, False

    while remaining and not stop_requested():
        held_elsewhere = False
        for key in list(remaining):
            if stop_requested():
                return
            if key not in remaining:  # taken into a fused group, or settled, in this pass
                continue
            processes = spec(key).train.get("distributed", {}).get("processes", 1)
            if runtime_info.get("slurm") and processes > 1:
                del remaining[key]  # submitted alone, one task per process (launch/slurm/distributed_task.py)
                continue
            claim, held = claim_to_run(key)
            held_elsewhere |= held
            if claim is None:
                continue
            claims = {key: claim}
            # a job of several processes is never fused; nor one whose worker died while it trained in this
            # launch (fused, most likely: alone, a death is its own, and the others are not held back)
            fusable = plan.fuse > 1 and processes == 1 and not _died_training(tree.job(key), plan.launch_id)
            for other in list(remaining) if fusable else []:
                if len(claims) >= plan.fuse:
                    break
                if (other in claims or fusion_key(other) != fusion_key(key)
                        or _died_training(tree.job(other), plan.launch_id)):
                    continue
                more, held = claim_to_run(other)
                held_elsewhere |= held
                if more is not None:
                    claims[other] = more
            try:
                fresh = {}
                for k in claims:
                    status = read_status(tree.job(k))
                    # a forced job is discarded once per launch: an attempt of this launch (interrupted,
                    # then taken over or requeued) resumes
                    fresh[k] = plan.fresh and (status is None or status.launch_id != plan.launch_id)
                    report(("started", k))
                info = {**runtime_info, "launch_id": plan.launch_id}
                lost = lambda: stop_requested() or any(c.lost for c in claims.values())  # noqa: E731
                try:
                    if len(claims) == 1:
                        outcomes = [run_job(tree.job(key).path, fresh=fresh[key], stop_requested=stop_requested,
                                            runtime_info=info, claim=claim)]
                    else:
                        outcomes = run_fused_jobs([tree.job(k) for k in claims], [fresh[k] for k in claims], lost, info)
                except StopRequested:  # asked to stop, or a claim was lost to a worker that took the job over
                    outcomes = [JobOutcome(k, JobState.INTERRUPTED) for k in claims]
                except Exception as error:  # run_job records variant errors itself; this is the rest
                    outcomes = [JobOutcome(k, JobState.FAILED, errors={"job": f"{type(error).__name__}: {error}"})
                                for k in claims]
                    traceback.print_exc()
                for outcome in outcomes:
                    report(("finished", outcome.key, asdict(outcome)))
                    del remaining[outcome.key]
            finally:
                for held_claim in claims.values():
                    held_claim.release()
        if remaining and held_elsewhere:
            if not wait_for_others:
                return
            time.sleep(POLL_S)


def _died_training(job: JobTree, launch_id: str) -> bool:
    """Whether an attempt of this launch started the job and ended without a word (its status still says
    running, and nobody holds its claim any more, or the caller just took it over): its worker died."""
    status = read_status(job)
    return status is not None and status.launch_id == launch_id and status.state == JobState.RUNNING


def _verdict(job: JobTree, names: list[str], planned: int, launch_id: str, claimed: bool = False) -> str:
    """run: this launch's to run; held: a live process holds it; settled: finished by someone since
    the plan was made. A finished job is in a plan only to be rerun (--force, --rerun-failed), and is
    this launch's to rerun until an attempt of this launch, or any attempt since the plan was made,
    finished it (a forced attempt starts its count afresh, so the count alone cannot tell).
    `claimed`: this process holds the job's claim (a claimed job reads as running)."""
    state = job_state(job, names)
    if state is JobState.RUNNING and not claimed:
        return "held"
    status = read_status(job)
    if state in (JobState.DONE, JobState.FAILED) and status is not None and (
            status.launch_id == launch_id or status.attempts > planned):
        return "settled"
    return "run"


def worker_main(worker_id: int, gpus: tuple[int, ...], threads: int, experiment_dir: str, plan_path: str, events,
                runtime_info: dict, wait_for_others: bool, launcher_pid: int) -> None:
    """A worker process: set up threads and GPU, then pull jobs, reporting to the launcher's queue.
    It starts with the stop signals blocked (see WorkerPool._start): one sent while it starts up
    waits until its handlers are in place."""
    # Ctrl-C, SIGTERM and SIGHUP stop the job at its next safe point (train/stop.py); Ctrl-C reaches
    # a worker twice (from the terminal, then passed on by the launcher): the second changes nothing
    stop_on_signals()
    # SLURM signals every process of a task before its time limit; the task's main process stops
    # the workers itself
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _stop_when_orphaned(launcher_pid)
    prepare_process(threads, gpus)
    plan = PlanFile.read(Path(plan_path))
    tree, report = ExperimentTree(Path(experiment_dir)), lambda event: events.put((worker_id, *event))
    pull_jobs(tree, plan, report, stop_requested=stop_requested, runtime_info=runtime_info,
              wait_for_others=wait_for_others)
    if plan.search is not None and not stop_requested():  # no planned job left: ask the study for trials
        from moelab.launch.search_worker import run_trials

        run_trials(tree, plan, report, stop_requested=stop_requested, runtime_info=runtime_info,
                   wait_for_others=wait_for_others)


def _stop_when_orphaned(launcher_pid: int) -> None:
    """A launcher killed without a chance to clean up (SIGKILL, the OOM killer, a closed SSH session)
    leaves its workers to the init process: they notice within a second, also one still starting
    up (its launcher may be gone before this runs), and stop like on Ctrl-C."""

    def watch() -> None:
        while os.getppid() == launcher_pid:
            time.sleep(0.5)
        request_stop()

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
