"""One view of a job and its variants' states, for `status`, the dashboard and the loader alike.

The job's state is `job_state` (the disk) merged with a queue's word; each variant's comes from
status.json and its results.json, every word one of `JobState`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from moelab.results.errors import DamagedRecord
from moelab.results.io import read_json
from moelab.results.records import VariantResults, read_variant_results
from moelab.results.status import JobState, JobStatus, disk_state, merge_states, read_status
from moelab.results.tree import JobTree


@dataclass
class VariantView:
    name: str
    state: JobState
    results: VariantResults | None  # its results.json, when done
    error: str | None
    traceback: str | None


@dataclass
class JobView:
    disk: JobState  # what the disk says
    state: JobState  # the disk merged with the queue's word
    status: JobStatus | None  # status.json, None when absent or unreadable
    variants: dict[str, VariantView]
    problems: list[str]  # files that could not be read, each naming the file

    @property
    def variants_done(self) -> int:
        return sum(v.state is JobState.DONE for v in self.variants.values())


def view_job(job: JobTree, names: list[str], queue_state: JobState | None = None,
             read: Callable[[Any], Any] = read_json) -> JobView:
    """The job whose variants are `names` (its own, with the dense ones baseline.match adds). `read`
    parses a results.json (the dashboard passes its cache)."""
    status = read_status(job)
    disk = disk_state(job, names, status, read)
    problems = []
    if status is None and job.status_file.exists():
        problems.append(f"{job.status_file.name}: unreadable (being written, or damaged); states taken from the "
                        "results files")
    variants = {}
    for name in names:
        record = status.variants.get(name) if status else None
        state = record.state if record else JobState.PENDING
        out, results = job.variant(name), None
        if out.is_done():
            try:
                results = read_variant_results(out, read)
                state = JobState.DONE
            except FileNotFoundError:
                pass  # removed since it was seen (a relaunch with --force): unfinished
            except DamagedRecord as error:
                problems.append(f"{name}/results.json: {error.problem}; variant counted as unfinished")
                state = JobState.DAMAGED
        elif state is JobState.DONE:
            problems.append(f"{name}/results.json: missing although status.json says done; variant counted as unfinished")
            state = JobState.DAMAGED
        elif state in (JobState.RUNNING, JobState.PENDING) and disk is JobState.INTERRUPTED:
            state = JobState.INTERRUPTED  # the process that was training it is gone: the next launch resumes it
        variants[name] = VariantView(name, state, results, record.error if record else None,
                                     record.traceback if record else None)
    return JobView(disk, merge_states(disk, queue_state), status, variants, problems)
