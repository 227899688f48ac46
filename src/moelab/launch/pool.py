"""A pool of worker processes pulling one launch's plan: what run_here runs, and what each SLURM
array task runs on its node. It starts the workers, prints one line per job they finish, restarts a
worker that died (its job is taken over from its stale claim), and stops them all when a stop is
requested (train/stop.py: Ctrl-C, SIGTERM, SIGHUP) or on KeyboardInterrupt where no handler is installed.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from moelab.launch.plan import PlanFile
from moelab.launch.progress import ProgressLines
from moelab.launch.worker import worker_main
from moelab.results.status import JobState, JobStatus, read_status
from moelab.results.tree import ExperimentTree
from moelab.train.stop import GRACE_S, STOP_SIGNALS, stop_requested

# a job whose worker died this many times (out of memory, most likely) is recorded as failed
MAX_WORKER_DEATHS_PER_JOB = 2


@dataclass(frozen=True)
class Slot:
    """Where one worker runs: its GPUs (none on CPU; several for a job of several processes, one each)
    and its torch threads."""

    gpus: tuple[int, ...]
    threads: int


def worker_slots(jobs: int, workers: int | None, jobs_per_gpu: int, gpus: list[int], cores: int,
                 gpus_per_job: int = 1) -> list[Slot]:
    """Workers and their threads for `jobs` jobs: `jobs_per_gpu` per GPU (per set of `gpus_per_job`
    GPUs: a distributed job's processes, train.distributed), else one single-thread worker per core,
    `workers` overriding the count; never more workers than jobs, and never more threads than cores
    (torch's thread pools collapse when they outnumber the cores)."""
    if gpus:
        sets = [tuple(gpus[i : i + gpus_per_job]) for i in range(0, len(gpus) - gpus_per_job + 1, gpus_per_job)]
        if not sets:
            raise ValueError(f"a job of {gpus_per_job} processes needs {gpus_per_job} GPUs, one per process, and "
                             f"{len(gpus)} are visible")
        count = max(1, min(jobs, workers or len(sets) * jobs_per_gpu))
        return [Slot(sets[i % len(sets)], max(1, cores // count)) for i in range(count)]
    count = max(1, min(jobs, workers or cores))
    return [Slot((), max(1, cores // count))] * count


@dataclass
class _Worker:
    process: multiprocessing.Process
    slot: Slot
    jobs: list[str] = field(default_factory=list)  # the jobs it holds: several for a fused group


@dataclass
class PoolResult:
    outcomes: dict[str, dict] = field(default_factory=dict)  # job key -> JobOutcome as a dict, ran here
    settled: dict[str, str] = field(default_factory=dict)  # job key -> state, finished by another process
    interrupted: bool = False


class WorkerPool:
    def __init__(self, tree: ExperimentTree, plan_path, slots: list[Slot], runtime_info: dict | None = None,
                 describe=lambda key: "", wait_for_others: bool = True):
        self.context = multiprocessing.get_context("spawn")  # fresh interpreters: safe with CUDA
        self.events = self.context.Queue()
        self.tree, self.plan_path, self.slots = tree, str(plan_path), slots
        self.runtime_info = runtime_info or {}
        self.wait_for_others = wait_for_others  # see worker.pull_jobs
        self.describe = describe  # job key -> text printed after its line (grid values, scores)
        self.workers: dict[int, _Worker] = {}
        self.next_id = 0
        self.deaths: dict[str, int] = {}
        self.result = PoolResult()
        self.stopping = False

    def run(self) -> PoolResult:
        total = len(PlanFile.read(self.plan_path).jobs)
        for slot in self.slots:
            self._start(slot)
        bar = tqdm(total=total, unit="job", disable=not sys.stdout.isatty(), leave=False)
        self.bar, self.total = bar, total
        progress = ProgressLines(self.tree)
        try:
            while self.workers:
                progress.update([key for w in self.workers.values() for key in w.jobs])
                if stop_requested():
                    self.result.interrupted = True
                    self.stop()
                    break
                try:
                    worker_id, *event = self.events.get(timeout=0.5)
                except queue.Empty:
                    self._reap()
                    continue
                self._handle(worker_id, event)
            self._drain()
        except KeyboardInterrupt:
            self.result.interrupted = True
            self.stop()
        finally:
            progress.close()
            bar.close()
        return self.result

    def stop(self, drain: bool = True) -> None:
        """Ask every worker to stop (each records its job as interrupted at its next safe point) and
        wait for them. From a signal handler, `drain=False`: the interrupted code may hold the event
        queue's lock."""
        self.stopping = True
        # Ctrl-C in a terminal reaches the workers too; a signal sent to the launcher alone is passed on
        workers = list(self.workers.values())
        for worker in workers:
            if worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGINT)
        # a worker exits by itself GRACE_S after the request; this is for one that hangs harder
        deadline = time.monotonic() + GRACE_S + 10
        for worker in workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
        self.kill_workers()
        if drain:
            self._drain()

    def kill_workers(self) -> None:
        """End every worker at once (a second Ctrl-C): what they wrote is whole, their jobs resume
        from their last checkpoints."""
        for worker in self.workers.values():
            if worker.process.is_alive():
                worker.process.kill()

    def _start(self, slot: Slot) -> None:
        process = self.context.Process(target=worker_main, daemon=True, args=(
            self.next_id, slot.gpus, slot.threads, str(self.tree.path), self.plan_path, self.events, self.runtime_info,
            self.wait_for_others, os.getpid()))
        # the worker inherits the blocked signals: one sent while it starts up (before its handlers
        # are installed) waits for them instead of killing it or raising a KeyboardInterrupt there
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.workers[self.next_id] = _Worker(process, slot)
        self.next_id += 1

    def _handle(self, worker_id: int, event: list) -> None:
        kind, key = event[0], event[1]
        worker = self.workers.get(worker_id)
        if kind == "started":
            if worker:
                worker.jobs.append(key)
        elif kind == "finished":
            if worker and key in worker.jobs:
                worker.jobs.remove(key)
            self.result.settled.pop(key, None)
            self._record(key, event[2])
        elif kind == "note":  # a line for people, e.g. how a search's trial ended
            tqdm.write(key)
            sys.stdout.flush()
        elif kind == "settled" and key not in self.result.outcomes and key not in self.result.settled and not any(
                key in w.jobs for w in self.workers.values()):  # one of ours that is just finishing
            self.result.settled[key] = event[2]
            self._print(key, f"{event[2]:<6} (ran elsewhere)")

    def _record(self, key: str, outcome: dict) -> None:
        if outcome["state"] == JobState.INTERRUPTED and self.stopping:
            return
        self.result.outcomes[key] = outcome
        scores = " ".join(f"{v}={r.get('test_' + r['metric'], float('nan')):.4f}" for v, r in outcome["results"].items())
        self._print(key, f"{outcome['state']:<6} {outcome['seconds']:6.1f}s  {self.describe(key)}  {scores}")

    def _print(self, key: str, text: str) -> None:
        self.bar.update(1)
        done = len(self.result.outcomes) + len(self.result.settled)
        tqdm.write(f"[{done}/{self.total}] {key} {text}" if self.total else f"[{done}] {key} {text}")
        sys.stdout.flush()

    def _drain(self) -> None:
        while True:
            try:
                worker_id, *event = self.events.get_nowait()
            except (queue.Empty, OSError, ValueError):
                return
            self._handle(worker_id, event)

    def _reap(self) -> None:
        for worker_id, worker in list(self.workers.items()):
            if worker.process.is_alive():
                continue
            self._drain()  # its last events may still be in the queue
            del self.workers[worker_id]
            if worker.process.exitcode == 0 or self.stopping:
                continue
            reason = f"worker process died with exit code {worker.process.exitcode}"
            if worker.process.exitcode == -signal.SIGKILL:
                reason += " (killed: out of memory?)"
            running = f" while running {', '.join(worker.jobs)}" if worker.jobs else ""
            print(f"{reason}{running}; starting another worker", flush=True)
            for key in worker.jobs:
                self.deaths[key] = self.deaths.get(key, 0) + 1
                if self.deaths[key] >= MAX_WORKER_DEATHS_PER_JOB:
                    self._give_up(key, reason)
            self._start(worker.slot)  # takes the jobs over from the dead worker's claims

    def _give_up(self, key: str, reason: str) -> None:
        """Record a job that keeps killing its worker as failed, so that no worker claims it again."""
        job = self.tree.job(key)
        status = read_status(job) or JobStatus(key)
        status.state = JobState.FAILED
        status.error = f"{reason}, {self.deaths[key]} times while running this job"
        status.write(job)
        self._record(key, {"key": key, "state": JobState.FAILED, "seconds": 0.0, "errors": {"job": status.error},
                           "results": {}})
