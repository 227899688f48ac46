"""run_here: the plan's jobs on this machine, in worker processes that each take many jobs.

Workers default to one per visible GPU (each sees only its own), else one that uses every core.
A job that fails, or a worker that dies (out of memory, killed), is recorded and the rest go on.
Ctrl-C stops the workers between two writes; the next launch resumes from the checkpoints.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass

from tqdm import tqdm

from moelab.launch.base import Backend
from moelab.launch.local.worker import worker_main
from moelab.launch.plan import LaunchPlan
from moelab.report import write_report
from moelab.results.status import JobState


@dataclass
class WorkerSlot:
    process: multiprocessing.Process
    gpu: int | None
    job: str | None = None


class LocalBackend(Backend):
    mode = "run_here"
    verb = "run"

    @property
    def requested_workers(self) -> int | None:
        return self.options.workers or self.experiment.doc["local"]["workers"]

    def launch(self, plan: LaunchPlan) -> int:
        jobs = plan.to_run
        if not jobs:
            print("nothing to run")
            return self._summarise(plan, {}, interrupted=False)
        gpus = visible_gpus()
        workers = min(len(jobs), self.requested_workers or max(1, len(gpus)))
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        where = f"{len(gpus)} GPU(s)" if gpus else f"CPU, {threads} thread(s) each"
        print(f"running {len(jobs)} job(s) with {workers} worker(s) ({where})", flush=True)
        pool = _Pool(workers, gpus, threads)
        outcomes = pool.run([(job.key, str(plan.tree.job(job.key).path), plan.fresh) for job in jobs],
                            {job.key: job for job in jobs})
        return self._summarise(plan, outcomes, pool.interrupted)

    def _summarise(self, plan: LaunchPlan, outcomes: dict[str, dict], interrupted: bool) -> int:
        done = [k for k, o in outcomes.items() if o["state"] == JobState.DONE]
        failed = {k: o for k, o in outcomes.items() if o["state"] not in (JobState.DONE, JobState.INTERRUPTED)}
        skipped = plan.skipped()
        print(f"\n{len(done)} done, {sum(skipped.values())} skipped "
              f"({', '.join(f'{n} {s}' for s, n in sorted(skipped.items())) or 'none'}), {len(failed)} failed")
        for key, outcome in failed.items():
            for variant, error in outcome["errors"].items():
                print(f"  FAILED {key} {variant}: {error}")
            print(f"    traceback in {plan.tree.job(key).status_file}")
        if skipped.get(JobState.FAILED):
            print(f"  {skipped[JobState.FAILED]} job(s) failed in an earlier launch: rerun them with --rerun-failed")
        if interrupted:
            print("interrupted: run the same command again to resume where it stopped")
            return 130
        # the grid is incomplete while any of its jobs is failed, whichever launch ran it
        return 1 if failed or skipped.get(JobState.FAILED) else 0

    def finish(self, plan: LaunchPlan, code: int) -> int:
        if code != 130 and self.options.report:
            write_report([plan.tree.path])
        return code


def visible_gpus() -> list[int]:
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


class _Pool:
    def __init__(self, workers: int, gpus: list[int], threads: int):
        self.context = multiprocessing.get_context("spawn")  # fresh interpreters: safe with CUDA
        self.tasks = self.context.Queue()
        self.results = self.context.Queue()
        self.gpus, self.threads = gpus, threads
        self.slots: dict[int, WorkerSlot] = {}
        self.next_id = 0
        self.workers = workers
        self.interrupted = False

    def _start_worker(self) -> None:
        gpu = self.gpus[self.next_id % len(self.gpus)] if self.gpus else None
        process = self.context.Process(target=worker_main, args=(self.next_id, gpu, self.threads, self.tasks, self.results),
                                       daemon=True)
        process.start()
        self.slots[self.next_id] = WorkerSlot(process, gpu)
        self.next_id += 1

    def run(self, tasks: list[tuple], jobs: dict) -> dict[str, dict]:
        for task in tasks:
            self.tasks.put(task)
        for _ in range(self.workers):
            self.tasks.put(None)
            self._start_worker()
        outcomes: dict[str, dict] = {}
        bar = tqdm(total=len(tasks), unit="job", disable=not sys.stdout.isatty(), leave=False)
        try:
            while len(outcomes) < len(tasks):
                try:
                    message = self.results.get(timeout=0.5)
                except queue.Empty:
                    self._reap_dead_workers(outcomes, bar, jobs)
                    if not self.slots:
                        break
                    continue
                if message[0] == "started":
                    self.slots[message[1]].job = message[2]
                else:
                    _, worker, key, outcome = message
                    self.slots[worker].job = None
                    self._record(outcomes, key, outcome, bar, jobs)
        except KeyboardInterrupt:
            self.interrupted = True
            self._stop_workers()
        finally:
            bar.close()
        for slot in self.slots.values():
            slot.process.join(timeout=5)
        return outcomes

    def _record(self, outcomes: dict, key: str, outcome: dict, bar, jobs: dict) -> None:
        outcomes[key] = outcome
        bar.update(1)
        point = " ".join(f"{k}={v}" for k, v in jobs[key].grid_values.items())
        scores = " ".join(f"{v}={r.get('test_' + r['metric'], float('nan')):.4f}" for v, r in outcome["results"].items())
        tqdm.write(f"[{len(outcomes)}/{len(jobs)}] {key} {outcome['state']:<6} {outcome['seconds']:6.1f}s  {point}  {scores}")
        sys.stdout.flush()

    def _reap_dead_workers(self, outcomes: dict, bar, jobs: dict) -> None:
        for worker, slot in list(self.slots.items()):
            if slot.process.is_alive():
                continue
            del self.slots[worker]
            if slot.process.exitcode == 0:
                continue
            if slot.job is not None and slot.job not in outcomes:
                reason = f"worker process died with exit code {slot.process.exitcode}"
                if slot.process.exitcode == -signal.SIGKILL:
                    reason += " (killed: out of memory?)"
                self._record(outcomes, slot.job, {"key": slot.job, "state": JobState.FAILED, "seconds": 0.0,
                                                  "errors": {"job": reason}, "results": {}}, bar, jobs)
            if len(outcomes) < len(jobs):
                self._start_worker()  # takes over the dead worker's stop marker in the queue

    def _stop_workers(self) -> None:
        # Ctrl-C in a terminal reaches the workers too; a signal sent to the launcher alone is passed on
        for slot in self.slots.values():
            if slot.process.is_alive():
                os.kill(slot.process.pid, signal.SIGINT)
        deadline = time.monotonic() + 10
        for slot in self.slots.values():
            slot.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()  # it ignores further signals once interrupted
