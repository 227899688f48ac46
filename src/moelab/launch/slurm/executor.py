"""submit: the plan's jobs as SLURM job arrays through submitit; returns right after submission.

One array per at most MaxArraySize jobs, throttled with array_parallelism (%N). submitit's folder
(pickles and logs) is experiments/<name>/slurm/; each array task trains one job and writes the same
experiments tree as run_here. Every submission is recorded in slurm/submissions.jsonl, which
`status` reads to ask SLURM about the jobs.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import submitit
from submitit.slurm.slurm import _make_sbatch_string  # the exact script submitit submits

from moelab.launch.base import Executor
from moelab.launch.plan import LaunchPlan
from moelab.launch.slurm import queue
from moelab.launch.slurm.job import TrainJob
from moelab.launch.slurm.resources import sbatch_parameters
from moelab.results.io import append_jsonl
from moelab.results.status import now

SUBMISSIONS = "submissions.jsonl"


def slurm_folder(experiment_dir: Path) -> Path:
    return experiment_dir / "slurm"


def log_paths(experiment_dir: Path, slurm_job_id: str) -> tuple[Path, Path]:
    """submitit's stdout/stderr files of an array task ('123_4') or a single job ('123')."""
    folder = slurm_folder(experiment_dir)
    return folder / f"{slurm_job_id}_0_log.out", folder / f"{slurm_job_id}_0_log.err"


class SlurmExecutor(Executor):
    mode = "submit"

    def __init__(self, resources: dict, dry_run: bool = False):
        self.resources, self.dry_run = resources, dry_run

    def _python(self) -> str:
        return self.resources["python"] or shlex.quote(sys.executable)

    def chunks(self, plan: LaunchPlan) -> list[list]:
        try:
            size = queue.max_array_size()
        except queue.QueueUnavailable as error:
            if not self.dry_run:
                raise
            print(f"note: {error}; assuming MaxArraySize=1001")
            size = 1001
        size = min(size, self.resources["max_array_size"] or size)
        return [plan.to_run[i : i + size] for i in range(0, len(plan.to_run), size)]

    def launch(self, plan: LaunchPlan) -> int:
        if not plan.to_run:
            print("nothing to submit")
            return 0
        folder = slurm_folder(plan.tree.path).resolve()  # nodes may start in another directory
        params = sbatch_parameters(self.resources, job_name=f"moelab-{plan.experiment.name}")
        if self.dry_run:
            return self._print_dry_run(plan, folder, params)
        submitted = []
        for chunk in self.chunks(plan):
            executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=self.resources["max_num_timeout"],
                                              python=self._python())
            executor.update_parameters(**params)
            with executor.batch():
                handles = [executor.submit(TrainJob(), str(plan.tree.job(job.key).path.resolve()), plan.fresh)
                           for job in chunk]
            ids = {job.key: handle.job_id for job, handle in zip(chunk, handles)}
            append_jsonl(folder / SUBMISSIONS, {"time": now(), "array_job_id": handles[0].job_id.split("_")[0],
                                                "jobs": ids})
            submitted.append((handles[0].job_id.split("_")[0], len(chunk)))
        total = sum(n for _, n in submitted)
        print(f"submitted {total} job(s) in {len(submitted)} array(s): "
              + ", ".join(f"array job {array} ({n} tasks, at most {min(n, self.resources['array_parallelism'])} at once)"
                          for array, n in submitted))
        print(f"logs: {folder}/<array id>_<task>_0_log.out (and .err)")
        print(f"follow them with: bash run/launch_experiment.sh status {plan.tree.path}")
        return 0

    def _print_dry_run(self, plan: LaunchPlan, folder: Path, params: dict) -> int:
        print("dry run: nothing is submitted or written\n")
        print(f"{'job':<14} grid values")
        for job in plan.to_run:
            print(f"{job.key:<14} " + " ".join(f"{k}={v}" for k, v in job.grid_values.items()))
        command = " ".join([self._python(), "-u -m submitit.core._submit", shlex.quote(str(folder))])
        for index, chunk in enumerate(self.chunks(plan)):
            # submitit sends a batch of one as a plain job, not an array
            script = _make_sbatch_string(command=command, folder=folder, map_count=len(chunk) if len(chunk) > 1 else None,
                                         **params)
            print(f"\n# sbatch script of array {index + 1} ({len(chunk)} tasks)\n{script}")
        return 0
