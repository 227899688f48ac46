"""submit: the plan's jobs as SLURM job arrays through submitit; returns right after submission.

Jobs are packed: each array task is a pool of workers that pull the launch's plan (slurm/job.py),
`jobs_per_gpu` at once per GPU (one per cpu on CPU tasks). How many tasks: `jobs_per_task` jobs
each, by default as many as make at most `array_parallelism` tasks (tasks beyond those that may run
at once would only wait in the queue; packing them saves scheduler entries and start-ups, and
pulling keeps the tasks evenly busy). The cluster's limits bound the count: a grid larger than the
user may still queue (MaxSubmitJobs, from accounting, else the profile's `max_submit_jobs`) goes
as fewer, fuller tasks, in arrays of at most MaxArraySize tasks: never an sbatch error.

submitit's folder (pickles and logs) is experiments/<name>/slurm/; every submission is recorded in
slurm/submissions.jsonl, which `status` reads to ask SLURM about the jobs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError
from submitit.slurm.slurm import _make_sbatch_string  # the exact script submitit submits (for --dry-run)

from moelab.config import ConfigError, Experiment
from moelab.launch.base import Backend, LaunchFailed, LaunchOptions, QueueView, rerun_failed_command
from moelab.launch.plan import LaunchPlan
from moelab.launch.slurm import queue
from moelab.launch.slurm.cluster import resource_issues
from moelab.launch.slurm.distributed_task import DistributedTask
from moelab.launch.slurm.job import PackedTask
from moelab.launch.slurm.resources import (distributed_parameters, load_resources, processes_of, profile_path,
                                           sbatch_parameters)
from moelab.results.io import append_jsonl, read_jsonl
from moelab.results.status import FAILURES, JobState, read_status, now
from moelab.results.tree import ExperimentTree
from moelab.schema import Issue


class SlurmFiles:
    """What the SLURM backend keeps in <experiment>/slurm/: submitit's pickles and logs, and one line
    per submission (the array ids and the jobs of its plan), which `status` reads."""

    def __init__(self, tree: ExperimentTree):
        self.tree = tree
        self.folder = tree.backend_dir("slurm")

    @property
    def submissions(self) -> Path:
        return self.folder / "submissions.jsonl"

    def logs(self, slurm_job_id: str) -> tuple[Path, Path]:
        """submitit's stdout/stderr files of an array task ('123_4') or a single job ('123')."""
        return self.folder / f"{slurm_job_id}_0_log.out", self.folder / f"{slurm_job_id}_0_log.err"

    def submitted_ids(self) -> dict[str, list[str]]:
        """job key -> the SLURM ids of its latest submission: array ids ('123': packed tasks pull
        jobs, any task of the array may run it) or, in submissions of earlier versions, the id of
        the array task that ran that one job ('123_4')."""
        ids: dict[str, list[str]] = {}
        if self.submissions.is_file():
            for record in read_jsonl(self.submissions):
                jobs = record.get("jobs", [])
                if isinstance(jobs, dict):
                    ids.update({key: [task] for key, task in jobs.items()})
                else:
                    ids.update({key: record.get("arrays", []) for key in jobs})
        return ids


@dataclass(frozen=True)
class Packing:
    tasks: int
    jobs_per_task: int
    arrays: list[int]  # tasks per array
    why: str  # what bounded the task count


def pack(jobs: int, concurrency: int, jobs_per_task: int | None, array_parallelism: int, max_array_size: int,
         may_submit: int | None) -> Packing:
    """Tasks for `jobs` jobs: `jobs_per_task` each (default: at most `array_parallelism` tasks, each
    at least `concurrency` jobs), no more tasks than may be submitted, in arrays of `max_array_size`."""
    per_task = jobs_per_task or max(concurrency, math.ceil(jobs / array_parallelism))
    tasks = math.ceil(jobs / per_task)
    why = f"{per_task} job(s) per task"
    if may_submit is not None and tasks > may_submit:
        tasks = may_submit
        per_task = math.ceil(jobs / tasks)
        tasks = math.ceil(jobs / per_task)
        why = f"at most {may_submit} more job(s) may be queued (MaxSubmitJobs): {per_task} job(s) per task"
    arrays = [min(max_array_size, tasks - start) for start in range(0, tasks, max_array_size)]
    return Packing(tasks, per_task, arrays, why)


class SlurmBackend(Backend):
    mode = "submit"
    verb = "submit"
    section = "slurm"

    @property
    def fuse(self) -> int:
        return self.resources["fuse"]  # a site profile may set it too

    def __init__(self, experiment: Experiment, options: LaunchOptions):
        super().__init__(experiment, options)
        self.resources = load_resources(experiment.doc["slurm"], options.profile)
        self._check_against_cluster()

    def _check_against_cluster(self) -> None:
        """Partition, GPUs, account and QOS as the cluster knows them: ConfigError (exit 2) before
        anything is written. Without a cluster to ask, submit's preflight says what is missing."""
        try:
            issues = resource_issues(self.resources)
        except queue.QueueUnavailable as error:
            if self.options.dry_run:
                print(f"note: {error}; partition, GPUs, account and QOS are not checked against the cluster")
            return
        if issues:
            # a value the experiment file does not set came from the site profile: say so
            profile = profile_path(self.options.profile)
            issues = [issue if issue.path.split(".")[1] in self.experiment.doc["slurm"] or profile is None
                      else dataclasses.replace(issue, origin=str(profile)) for issue in issues]
            overridden = {word.partition("=")[0]: word for word in self.options.argv
                          if word.startswith("slurm.") and "=" in word}
            raise ConfigError(self.experiment.source, issues, overridden)

    def preflight(self, tree: ExperimentTree) -> str | None:
        if not self.options.dry_run and shutil.which("sbatch") is None:
            return ("sbatch not found: submit needs a SLURM login node (or the dev cluster, "
                    "slurm/dev-cluster/start.sh); --dry-run works anywhere. Nothing was submitted.")
        return None

    @classmethod
    def queue_view(cls, tree: ExperimentTree) -> QueueView:
        """A job of an array that still has tasks queued or running is queued (until a worker claims
        it: then the disk says running); one whose array ended early says how the array ended."""
        submitted = SlurmFiles(tree).submitted_ids()
        if not submitted:
            return QueueView()
        try:
            by_id = queue.query(sorted({i for ids in submitted.values() for i in ids}), whole_arrays=True)
        except queue.QueueUnavailable as error:
            return QueueView(problem=str(error))
        view = QueueView()
        for key, ids in submitted.items():
            records = [r for task, r in by_id.items() if task in ids or task.split("_")[0] in ids]
            state = array_state(records)
            if state is not None:
                view.states[key] = state
            ended = [r for r in records if queue.STATES.get(r.state) not in (None, JobState.QUEUED, JobState.RUNNING)]
            if ended:
                view.notes[key] = f"SLURM says {ended[0].state} (exit code {ended[0].exit_code})"
            if len(records) == 1:  # one task ran this job alone: where and how long is the job's
                if records[0].node:
                    view.nodes[key] = records[0].node
                if records[0].elapsed_s is not None:
                    view.elapsed_s[key] = records[0].elapsed_s
        return view

    @classmethod
    def failure_details(cls, tree: ExperimentTree, key: str) -> list[str]:
        """The log of the array task that last ran the job (its status.json says which)."""
        status = read_status(tree.job(key))
        slurm = (status.slurm if status else None) or {}
        if slurm.get("array_task_id"):
            task = f"{slurm['array_job_id']}_{slurm['array_task_id']}"
        else:
            task = slurm.get("job_id") or next((i for i in SlurmFiles(tree).submitted_ids().get(key, []) if "_" in i), None)
        if not task:
            return []
        out, err = SlurmFiles(tree).logs(task)
        return [f"log: {err} (stdout: {out.name})"]

    def _python(self) -> str:
        return self.resources["python"] or shlex.quote(sys.executable)

    def concurrency(self) -> int:
        """Jobs one task runs at once."""
        if self.resources["gpus_per_node"]:
            return self.resources["gpus_per_node"] * self.resources["jobs_per_gpu"]
        return self.resources["cpus_per_task"]

    def packing(self, jobs: int) -> Packing:
        try:
            max_array = queue.max_array_size()
            queued = queue.queued_jobs_of_user()
            allowances = [queue.submit_allowance(self.resources["account"], self.resources["qos"], queued)]
        except queue.QueueUnavailable as error:
            if not self.options.dry_run:
                raise
            print(f"note: {error}; assuming MaxArraySize=1001 and no MaxSubmitJobs")
            max_array, queued, allowances = 1001, [], []
        max_array = min(max_array, self.resources["max_array_size"] or max_array)
        if self.resources["max_submit_jobs"]:  # the profile's word: every job of the user counts
            allowances.append(self.resources["max_submit_jobs"] - len(queued))
        allowances = [a for a in allowances if a is not None]
        may_submit = max(1, min(allowances)) if allowances else None
        return pack(jobs, self.concurrency(), self.resources["jobs_per_task"], self.resources["array_parallelism"],
                    max_array, may_submit)

    def search_packing(self, plan: LaunchPlan) -> Packing:
        """A search: `search.parallel` tasks (no more than trials are left), one worker each, all
        running at once; each asks the study for trials until it has enough."""
        tasks = min(plan.search.parallel, plan.search.trials_to_start)
        max_array = queue.max_array_size() if not self.options.dry_run else 1001
        max_array = min(max_array, self.resources["max_array_size"] or max_array)
        arrays = [min(max_array, tasks - start) for start in range(0, tasks, max_array)]
        return Packing(tasks, 1, arrays, f"a search: {tasks} trial(s) at once, one worker per task")

    def prepare(self, plan: LaunchPlan) -> tuple[Path, dict, Packing]:
        """submitit's folder, the sbatch parameters and the packing of this plan (said)."""
        folder = SlurmFiles(plan.tree).folder.resolve()  # nodes may start in another directory
        params = sbatch_parameters(self.resources, job_name=f"moelab-{plan.experiment.name}")
        self._check_distributed(plan)
        try:
            packing = self.packing(len(packed_jobs(plan))) if not plan.search else self.search_packing(plan)
        except queue.QueueUnavailable as error:
            raise LaunchFailed(f"cannot ask SLURM for its limits ({error})") from None
        if plan.search:  # every trial of `parallel` at once, whatever the profile's throttle
            params["array_parallelism"] = packing.tasks
        print(f"packing: {packing.tasks} task(s), {packing.why}, {min(packing.jobs_per_task, self.concurrency())} "
              f"at once per task")
        return folder, params, packing

    def _check_distributed(self, plan: LaunchPlan) -> None:
        nodes = self.resources["nodes"]
        uneven = sorted({processes_of(job) for job in plan.to_run if processes_of(job) > 1 and processes_of(job) % nodes})
        if uneven:
            raise ConfigError(self.experiment.source, [Issue("slurm.nodes", (
                f"{nodes} node(s) cannot share train.distributed.processes={uneven[0]} evenly (one task per process, "
                f"the same number on every node); use a number of nodes that divides it"))])

    def _distributed_parameters(self, params: dict, job) -> dict:
        return distributed_parameters(params, self.resources, processes_of(job))

    def launch(self, plan: LaunchPlan) -> int:
        trials = plan.search.trials_to_start if plan.search else 0
        if not plan.to_run and not trials:
            print("nothing to submit")
            return 0
        files = SlurmFiles(plan.tree)
        folder, params, packing = self.prepare(plan)
        args = (str(plan.tree.path.resolve()), str(plan.tree.plan_file(plan.launch_id).resolve()),
                self.resources["jobs_per_gpu"], packing.jobs_per_task)
        had_files = set(folder.iterdir()) if folder.is_dir() else None
        arrays = []
        try:
            for size in packing.arrays:
                executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=self.resources["max_num_timeout"],
                                                  python=self._python())
                executor.update_parameters(**params)
                # submitit prints sbatch's complaint itself; ours, below, is the one message
                with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                    handles = [executor.submit(PackedTask(), *args) for _ in range(size)]
                arrays.append((handles[0].job_id.split("_")[0], size))
            distributed = []  # never packed: each alone, one task per process
            for job in distributed_jobs(plan):
                executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=self.resources["max_num_timeout"],
                                                  python=self._python())
                executor.update_parameters(**self._distributed_parameters(params, job))
                with contextlib.redirect_stderr(io.StringIO()):
                    handle = executor.submit(DistributedTask(), args[0], args[1], job.key)
                arrays.append((handle.job_id, 1))
                distributed.append((job, handle.job_id))
        except (FailedJobError, OSError) as error:
            self._withdraw([array for array, _ in arrays], folder, had_files)
            reason = " ".join(str(error).split()) or type(error).__name__
            raise LaunchFailed(f"sbatch refused the submission: {reason}") from None
        packed_ids = [a for a, _ in arrays if a not in {i for _, i in distributed}]
        append_jsonl(files.submissions, {"time": now(), "launch_id": plan.launch_id, "arrays": packed_ids,
                                         "jobs": [job.key for job in packed_jobs(plan)]})
        for job, job_id in distributed:  # its own SLURM job: status asks SLURM about that one
            append_jsonl(files.submissions, {"time": now(), "launch_id": plan.launch_id, "arrays": [job_id],
                                             "jobs": [job.key], "processes": processes_of(job)})
        what = f"a search of {trials} trial(s)" if plan.search else f"{len(plan.to_run)} job(s)"
        print(f"submitted {what} as {packing.tasks} task(s) in {len(packed_ids)} array(s): "
              + ", ".join(f"array job {array} ({n} tasks, at most {min(n, params['array_parallelism'])} at once)"
                          for array, n in arrays if array in packed_ids))
        for job, job_id in distributed:
            print(f"distributed job {job.key}: SLURM job {job_id} ({processes_of(job)} processes, one task each)")
        print(f"logs: {folder}/<array id>_<task>_0_log.out (and .err)")
        print(f"follow them with: bash run/launch_experiment.sh status {plan.tree.path}")
        return 0

    def finish(self, plan: LaunchPlan, code: int) -> int:
        """Jobs that ended badly before (failed, cancelled, timed out...) are not resubmitted unasked:
        named, with the command that does, and exit 1 (the grid is incomplete), as run_here does."""
        planned = {job.key for job in plan.to_run}
        left = [(key, state) for key, state in plan.states.items() if state in FAILURES and key not in planned]
        if not left:
            return code
        print(f"not submitted: {len(left)} job(s) that ended badly in an earlier launch")
        for key, state in left:
            print(f"  {state.shown} {key}")
        print(f"resubmit them with: {rerun_failed_command(self.options.argv, self.mode, self.experiment.source)}")
        return max(code, 1)

    @staticmethod
    def _withdraw(arrays: list[str], folder: Path, had_files: set[Path] | None) -> None:
        """Undo a submission that failed part-way: cancel the arrays already queued (their tasks
        would pull a plan that is rolled back) and remove submitit's files written for it."""
        if arrays:
            subprocess.run(["scancel", *arrays], capture_output=True, timeout=60)
        if had_files is None:
            shutil.rmtree(folder, ignore_errors=True)
            return
        # only submitit's files of this submission: tasks of earlier ones may be writing logs here
        ours = re.compile("|".join([r"[0-9a-f]{32}\.pkl", r"\.submission_file_.*", *(rf"{a}_.*" for a in arrays)]))
        for path in set(folder.iterdir()) - had_files:
            if ours.fullmatch(path.name) and path.is_file():
                path.unlink(missing_ok=True)

    def dry_run(self, plan: LaunchPlan) -> int:
        """The jobs, the packing and the exact sbatch script of each array."""
        if not plan.to_run and not (plan.search and plan.search.trials_to_start):
            print("nothing to submit")
            return self.finish(plan, 0)
        folder, params, packing = self.prepare(plan)
        super().dry_run(plan)
        command = " ".join([self._python(), "-u -m submitit.core._submit", shlex.quote(str(folder))])
        for index, size in enumerate(packing.arrays):
            # submitit sends a batch of one as a plain job, not an array
            script = _make_sbatch_string(command=command, folder=folder, map_count=size if size > 1 else None, **params)
            print(f"\n# sbatch script of array {index + 1} ({size} tasks)\n{script}")
        for job in distributed_jobs(plan):
            script = _make_sbatch_string(command=command, folder=folder, **self._distributed_parameters(params, job))
            print(f"\n# sbatch script of distributed job {job.key} ({processes_of(job)} processes)\n{script}")
        return self.finish(plan, 0)


def distributed_jobs(plan: LaunchPlan) -> list:
    """The plan's jobs trained by several processes: each is submitted alone (never packed)."""
    return [job for job in plan.to_run if processes_of(job) > 1]


def packed_jobs(plan: LaunchPlan) -> list:
    return [job for job in plan.to_run if processes_of(job) == 1]


def array_state(records: list) -> JobState | None:
    """How an array stands for a job no task has finished: queued while any task is queued or
    running, else the first way a task ended early, else None (ended normally: the disk knows)."""
    states = [queue.STATES.get(r.state) for r in records]
    if JobState.RUNNING in states or JobState.QUEUED in states:
        return JobState.QUEUED
    return next((s for s in states if s is not None), None)
