"""What SLURM knows about jobs that the disk cannot: one batched sacct call (squeue without accounting)."""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from dataclasses import dataclass

from moelab.results.status import JobState

# SLURM's words for a job, in moelab's vocabulary: queued or running jobs are never submitted twice;
# the failures are what --rerun-failed resubmits
STATES = {
    "PENDING": JobState.QUEUED, "REQUEUED": JobState.QUEUED, "REQUEUE_HOLD": JobState.QUEUED,
    "REQUEUE_FED": JobState.QUEUED, "CONFIGURING": JobState.RUNNING, "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING, "SUSPENDED": JobState.RUNNING, "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING, "STAGE_OUT": JobState.RUNNING,
    "FAILED": JobState.FAILED, "CANCELLED": JobState.CANCELLED, "TIMEOUT": JobState.TIMEOUT,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY, "NODE_FAIL": JobState.NODE_FAIL, "BOOT_FAIL": JobState.NODE_FAIL,
    "DEADLINE": JobState.TIMEOUT, "PREEMPTED": JobState.CANCELLED, "REVOKED": JobState.CANCELLED,
}


@dataclass
class QueueRecord:
    state: str  # SLURM's own word, e.g. CANCELLED
    node: str = ""
    elapsed_s: int | None = None
    exit_code: str = ""

    @property
    def moelab_state(self) -> JobState | None:
        return STATES.get(self.state)


class QueueUnavailable(RuntimeError):
    pass


def query(job_ids: list[str], whole_arrays: bool = False) -> dict[str, QueueRecord]:
    """SLURM's view of these job ids ('123' or '123_4'), keyed by those ids; with `whole_arrays`,
    of every task of the arrays they name, keyed by task id."""
    if not job_ids:
        return {}
    base_ids = sorted({j.split("_")[0] for j in job_ids})
    try:
        records = _sacct(base_ids)
    except QueueUnavailable:
        records = _squeue(base_ids)
    if whole_arrays:
        return records
    return {j: records[j] for j in job_ids if j in records}


def _sacct(base_ids: list[str]) -> dict[str, QueueRecord]:
    out = ask_slurm(["sacct", "-n", "-P", "-X", "-j", ",".join(base_ids), "-o", "JobID,State,NodeList,ElapsedRaw,ExitCode"])
    records = {}
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) < 5:
            continue
        job, state, node, elapsed, exit_code = fields[:5]
        record = QueueRecord(state.split()[0] if state else "UNKNOWN", node if node != "None assigned" else "",
                             int(elapsed) if elapsed.isdigit() else None, exit_code)
        for expanded in expand_ids(job):
            records[expanded] = record
    return records


def _squeue(base_ids: list[str]) -> dict[str, QueueRecord]:
    out = ask_slurm(["squeue", "-h", "-r", "-j", ",".join(base_ids), "-o", "%i|%T|%N"])
    records = {}
    for line in out.splitlines():
        job, state, node = (line.split("|") + ["", "", ""])[:3]
        records[job] = QueueRecord(state, node)
    return records


def expand_ids(job: str) -> list[str]:
    """'12_[0-2,5%4]' -> ['12_0', '12_1', '12_2', '12_5']: sacct's form for array tasks not started yet."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job)
    if not match:
        return [job]
    base, spec = match.groups()
    ids = []
    for part in spec.split("%")[0].split(","):
        low, _, high = part.partition("-")
        ids += [f"{base}_{i}" for i in range(int(low), int(high or low) + 1)]
    return ids


def max_array_size() -> int:
    """The cluster's MaxArraySize: an array holds at most this many tasks (indices 0..MaxArraySize-1)."""
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", ask_slurm(["scontrol", "show", "config"]), re.MULTILINE)
    return int(match.group(1)) if match else 1001


@dataclass(frozen=True)
class QueuedJob:
    account: str
    qos: str


def queued_jobs_of_user() -> list[QueuedJob]:
    """This user's jobs in the queue now (array tasks one by one): they count against MaxSubmitJobs."""
    out = ask_slurm(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%a|%q"])
    return [QueuedJob(*(line.split("|") + [""])[:2]) for line in out.splitlines() if line.strip()]


def submit_allowance(account: str | None, qos: str | None, queued: list[QueuedJob]) -> int | None:
    """How many more jobs this user may queue under `account` and `qos` (None: the ones SLURM picks,
    the user's default account and that association's default QOS), by the MaxSubmitJobs that apply
    there: the association's MaxSubmit and GrpSubmit, counted over the user's queued jobs of that
    account, and the QOS's per-user MaxSubmitPU, counted over the user's queued jobs of that QOS
    (each QOS the association allows when it has no default). Jobs of other accounts and QOS do not
    count, as SLURM counts them. None when no limit applies or accounting cannot be asked."""
    user = getpass.getuser()
    try:
        account = account or ask_slurm(["sacctmgr", "-n", "-P", "show", "user", user, "format=DefaultAccount"]).strip()
        out = ask_slurm(["sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={user}", f"account={account}",
                         "format=MaxSubmit,GrpSubmit,QOS,DefaultQOS"])
        allowances, qos_names = [], {qos} if qos else set()
        in_account = sum(job.account == account for job in queued)
        for line in out.splitlines():
            max_submit, group_submit, allowed, default = (line.split("|") + ["", "", "", ""])[:4]
            allowances += [int(v) - in_account for v in (max_submit, group_submit) if v.isdigit()]
            if not qos:
                qos_names |= {default} if default else {q for q in allowed.split(",") if q}
        if qos_names:
            out = ask_slurm(["sacctmgr", "-n", "-P", "show", "qos", "format=Name,MaxSubmitPU"])
            for line in out.splitlines():
                name, limit = (line.split("|") + [""])[:2]
                if name in qos_names and limit.isdigit():
                    allowances.append(int(limit) - sum(job.qos == name for job in queued))
    except QueueUnavailable:
        return None
    return min(allowances) if allowances else None


def ask_slurm(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        raise QueueUnavailable(f"{command[0]} not found: is this a SLURM login node?")
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise QueueUnavailable(f"{' '.join(command[:2])} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout
