"""submit: the plan's jobs as SLURM job arrays through submitit; returns right after submission.

One array per at most MaxArraySize jobs, throttled with array_parallelism (%N). submitit's folder
(pickles and logs) is experiments/<name>/slurm/; each array task trains one job and writes the same
experiments tree as run_here. Every submission is recorded in slurm/submissions.jsonl, which
`status` reads to ask SLURM about the jobs.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import submitit
from submitit.slurm.slurm import _make_sbatch_string  # the exact script submitit submits

from moelab.config import Experiment
from moelab.launch.base import Backend, LaunchOptions, QueueView
from moelab.launch.plan import LaunchPlan
from moelab.launch.slurm import queue
from moelab.launch.slurm.job import TrainJob
from moelab.launch.slurm.resources import load_resources, sbatch_parameters
from moelab.results.io import append_jsonl, read_jsonl
from moelab.results.status import now
from moelab.results.tree import ExperimentTree


class SlurmFiles:
    """What the SLURM backend keeps in <experiment>/slurm/: submitit's pickles and logs, and one line
    per submission (job key -> SLURM id), which `status` reads to ask SLURM about the jobs."""

    def __init__(self, tree: ExperimentTree):
        self.folder = tree.backend_dir("slurm")

    @property
    def submissions(self) -> Path:
        return self.folder / "submissions.jsonl"

    def logs(self, slurm_job_id: str) -> tuple[Path, Path]:
        """submitit's stdout/stderr files of an array task ('123_4') or a single job ('123')."""
        return self.folder / f"{slurm_job_id}_0_log.out", self.folder / f"{slurm_job_id}_0_log.err"

    def submitted_ids(self) -> dict[str, str]:
        """job key -> SLURM id of its latest submission ('123_4', or '123' for a single job)."""
        ids: dict[str, str] = {}
        if self.submissions.is_file():
            for record in read_jsonl(self.submissions):
                ids.update(record.get("jobs", {}))
        return ids


class SlurmBackend(Backend):
    mode = "submit"
    verb = "submit"

    def __init__(self, experiment: Experiment, options: LaunchOptions):
        super().__init__(experiment, options)
        self.resources = load_resources(experiment.doc["slurm"], options.profile)
        self.dry_run = options.dry_run

    def preflight(self, tree: ExperimentTree) -> str | None:
        if not self.dry_run and shutil.which("sbatch") is None:
            return ("sbatch not found: submit needs a SLURM login node (or the dev cluster, "
                    "slurm/dev-cluster/start.sh); --dry-run works anywhere. Nothing was submitted.")
        return None

    @classmethod
    def queue_view(cls, tree: ExperimentTree) -> QueueView:
        ids = SlurmFiles(tree).submitted_ids()
        if not ids:
            return QueueView()
        try:
            by_id = queue.query(sorted(set(ids.values())))
        except queue.QueueUnavailable as error:
            return QueueView(problem=str(error))
        view = QueueView()
        for key, slurm_id in ids.items():
            record = by_id.get(slurm_id)
            if record is None:
                continue
            if record.moelab_state:
                view.states[key] = record.moelab_state
            view.notes[key] = f"SLURM says {record.state} (exit code {record.exit_code})"
            if record.node:
                view.nodes[key] = record.node
            if record.elapsed_s is not None:
                view.elapsed_s[key] = record.elapsed_s
        return view

    @classmethod
    def failure_details(cls, tree: ExperimentTree, key: str) -> list[str]:
        slurm_id = SlurmFiles(tree).submitted_ids().get(key)
        if not slurm_id:
            return []
        out, err = SlurmFiles(tree).logs(slurm_id)
        return [f"log: {err} (stdout: {out.name})"]

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
        files = SlurmFiles(plan.tree)
        folder = files.folder.resolve()  # nodes may start in another directory
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
            append_jsonl(files.submissions, {"time": now(), "array_job_id": handles[0].job_id.split("_")[0],
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
