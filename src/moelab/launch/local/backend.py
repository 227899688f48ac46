"""run_here: the plan's jobs on this machine, by worker processes that pull them (launch/pool.py).

On GPUs: `local.jobs_per_gpu` workers per visible GPU, each seeing only its own (with jobs of P
processes on GPUs, train.distributed: per set of P GPUs, each worker seeing its set). On CPU: one
single-thread worker per core available to this process (never more threads than cores: torch's
thread pools collapse when they outnumber the cores), fewer with more threads each when the plan
has fewer jobs than cores. `--workers N` (or `local.workers`) sets the count; the cores are shared
out among them. A job that fails, or a worker that dies, is recorded and the rest go on; a job
held by another launch is waited for. Ctrl-C, SIGTERM and SIGHUP (also in a launch started in the
background, which inherits Ctrl-C ignored) stop the workers at their next safe point (train/stop.py),
a second one at once; the next launch resumes from the checkpoints.
"""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

from moelab.launch.base import Backend, LaunchFailed
from moelab.launch.plan import LaunchPlan
from moelab.launch.pool import PoolResult, WorkerPool, worker_slots
from moelab.results.status import JobState
from moelab.train.stop import stop_on_signals


class LocalBackend(Backend):
    mode = "run_here"
    verb = "run"
    section = "local"

    def launch(self, plan: LaunchPlan) -> int:
        trials = plan.search.trials_to_start if plan.search else 0
        if not plan.to_run and not trials:
            print("nothing to run")
            return self._summarise(plan, PoolResult())
        gpus = visible_gpus()
        local = self.experiment.doc["local"]
        # a search runs `search.parallel` trials at once, one worker each
        workers = self.options.workers or (plan.search.parallel if plan.search else local["workers"])
        per_job = gpus_per_job(plan.to_run) if gpus else 1
        try:
            slots = worker_slots(len(plan.to_run) or trials, workers, local["jobs_per_gpu"], gpus,
                                 len(os.sched_getaffinity(0)), per_job)
        except ValueError as error:
            raise LaunchFailed(f"{error} on this machine: submit the job (one GPU per task), or train it on CPUs "
                               f"with train.device: cpu") from error
        where = (f"{len(gpus)} GPU(s), {local['jobs_per_gpu']} job(s) per GPU"
                 + (f" per set of {per_job} (a job's processes, one GPU each)" if per_job > 1 else "") if gpus
                 else f"CPU, {slots[0].threads} thread(s) each")
        what = f"{trials} trial(s)" if plan.search else f"{len(plan.to_run)} job(s)"
        print(f"running {what} with {len(slots)} worker(s) ({where})", flush=True)
        jobs = {job.key: job for job in plan.to_run}
        pool = WorkerPool(plan.tree, plan.tree.plan_file(plan.launch_id), slots,
                          describe=lambda key: " ".join(f"{k}={v}" for k, v in jobs[key].grid_values.items())
                          if key in jobs else "")
        replaced = stop_on_signals(grace_s=None, on_repeat=pool.kill_workers)
        try:
            result = pool.run()
        finally:
            for signum, handler in replaced.items():
                signal.signal(signum, handler)
        return self._summarise(plan, result)

    def _summarise(self, plan: LaunchPlan, result: PoolResult) -> int:
        outcomes = result.outcomes
        done = [k for k, o in outcomes.items() if o["state"] == JobState.DONE]
        failed = {k: o for k, o in outcomes.items()
                  if o["state"] not in (JobState.DONE, JobState.INTERRUPTED, JobState.PRUNED)}
        elsewhere_failed = [k for k, state in result.settled.items() if state == JobState.FAILED]
        skipped = plan.skipped()
        print(f"\n{len(done)} done, {sum(skipped.values())} skipped "
              f"({', '.join(f'{n} {s}' for s, n in sorted(skipped.items())) or 'none'}), {len(failed)} failed"
              + (f", {len(result.settled)} run by another launch" if result.settled else ""))
        pruned = sum(o["state"] == JobState.PRUNED for o in outcomes.values())
        if plan.search:
            from moelab.search import StudySession

            print(f"search: {StudySession(plan.tree, plan.experiment).progress().describe()}"
                  + (f"; {pruned} job(s) pruned in this launch" if pruned else ""))
        for key, outcome in failed.items():
            for variant, error in outcome["errors"].items():
                print(f"  FAILED {key} {variant}: {error}")
            print(f"    traceback in {plan.tree.job(key).status_file}")
        for key in elsewhere_failed:
            print(f"  FAILED {key} (run by another launch): see {plan.tree.job(key).status_file}")
        if skipped.get(JobState.FAILED):
            print(f"  {skipped[JobState.FAILED]} job(s) failed in an earlier launch: rerun them with --rerun-failed")
        if result.interrupted:
            print("interrupted: run the same command again to resume where it stopped")
            return 130
        # the grid is incomplete while any of its jobs is failed, whichever launch ran it
        return 1 if failed or elsewhere_failed or skipped.get(JobState.FAILED) else 0

    def finish(self, plan: LaunchPlan, code: int) -> int:
        ran = plan.to_run or (plan.search and plan.search.trials_to_start)
        if code != 130 and self.options.report and plan.search:
            from moelab.search import StudySession, write_study_files

            write_study_files(StudySession(plan.tree, plan.experiment))  # importances over every trial
        if code != 130 and self.options.report and (ran or not plan.tree.report_file.is_file()):
            # imported here: the report needs pandas, matplotlib and scipy (seconds), which a
            # relaunch with nothing to run must not pay for
            from moelab.report.write import write_report

            write_report([plan.tree.path])
        elif code != 130 and self.options.report:
            print(f"report (nothing ran, unchanged): {plan.tree.report_file}")
        return code


def gpus_per_job(jobs) -> int:
    """The GPUs a worker needs for these jobs: one per process of the largest distributed job that trains
    on a GPU (train.distributed.processes; every worker gets that many, so that any worker can take any job)."""
    return max((job.config["train"].get("distributed", {}).get("processes", 1) for job in jobs
                if job.config["train"].get("device", "auto") != "cpu"), default=1)


def visible_gpus() -> list[int]:
    if not gpu_driver_present():
        return []  # torch could see none: not importing it saves the launcher a second and a half
    import torch  # only when there is something to run: a relaunch with nothing to do stays fast

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def gpu_driver_present() -> bool:
    """An NVIDIA driver (its libcuda, which every CUDA program loads) or AMD's kernel driver (/dev/kfd,
    which ROCm needs) is on this machine. Loading the library starts nothing on a GPU."""
    if Path("/dev/kfd").exists():
        return True
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True
