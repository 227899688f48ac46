"""Claims: which process is running a job right now, safe between nodes on a shared filesystem.

A claim is the file `jobs/<key>/.claim`, created with O_CREAT|O_EXCL (atomic on local filesystems
and on NFSv3 and later: of two nodes creating it at once, exactly one succeeds). It holds who claimed
the job (host, pid) and is kept alive by a heartbeat: its holder touches it every HEARTBEAT_S. A
claim is stale when its holder is gone: at once when the holder ran on this host and its pid is dead,
otherwise when its last heartbeat is older than the timeout (which assumes the nodes' clocks agree to
well within the timeout, as NTP keeps them). A claim file that cannot be read is stale once it is
older than the timeout. A stale claim is taken over under a takeover lock (an atomic mkdir), so two
takers never both win.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from moelab.results.tree import JobTree, TrialTree

# what can be claimed: a job, or a search's trial (held by the worker that runs it)
Claimable = JobTree | TrialTree

HEARTBEAT_S = 5.0
# a claim whose heartbeat is older than this is taken over (long enough for a loaded shared
# filesystem to delay a few heartbeats; MOELAB_CLAIM_TIMEOUT_S sets it)
DEFAULT_TIMEOUT_S = 120.0


def timeout_s() -> float:
    return float(os.environ.get("MOELAB_CLAIM_TIMEOUT_S", DEFAULT_TIMEOUT_S))


@dataclass(frozen=True)
class Holder:
    owner: str  # unique per claim
    host: str
    pid: int
    heartbeat_age_s: float
    problem: str | None = None  # why the claim file could not be read: its holder is unknown

    def is_alive(self, pids: dict[int, bool] | None = None) -> bool:
        """`pids`: whether each pid of this host is alive, filled in by calls that share it."""
        if self.host == socket.gethostname():
            if pids is None:
                pids = {}
            if self.pid not in pids:
                pids[self.pid] = _pid_alive(self.pid)
            return pids[self.pid] and self.heartbeat_age_s < timeout_s()
        return self.heartbeat_age_s < timeout_s()


def holder(job: Claimable) -> Holder | None:
    """Who holds the job's claim, or None. A claim file that cannot be read (caught half-written, or
    damaged: empty, truncated, garbage, a folder) names no holder: it is alive until its file is
    older than the heartbeat timeout, like a holder whose heartbeat stopped."""
    try:
        age = max(0.0, time.time() - os.stat(job.claim_file).st_mtime)
    except FileNotFoundError:
        return None
    try:
        with open(job.claim_file) as f:
            data = json.load(f)
        owner, host, pid = data["owner"], data["host"], data["pid"]
        if not (isinstance(owner, str) and isinstance(host, str) and type(pid) is int):
            raise ValueError("owner, host or pid of the wrong type")
    except FileNotFoundError:  # released meanwhile
        return None
    except (OSError, ValueError, TypeError, KeyError) as error:
        return Holder("", "", 0, age, problem=f"{type(error).__name__}: {error}")
    return Holder(owner, host, pid, age)


def is_claimed(job: Claimable, pids: dict[int, bool] | None = None) -> bool:
    """`pids`: a dict shared by the calls of one look over many jobs (one worker holds many claims:
    whether its process lives is asked once)."""
    found = holder(job)
    return found is not None and found.is_alive(pids)


class Claim:
    """A job held by this process, kept alive by a heartbeat thread until `release()`.

    `lost` turns true when the claim file vanished or names another owner: another worker judged
    this one dead and took the job over, so this one must stop writing to it."""

    def __init__(self, job: Claimable, owner: str):
        self.job, self.owner = job, owner
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job.key}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            found = holder(self.job)
            if found is None or (found.owner and found.owner != self.owner):
                self.lost = True
                return
            try:
                os.utime(self.job.claim_file)
            except OSError:
                self.lost = True
                return

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        found = holder(self.job)
        if found is not None and found.owner == self.owner:
            self.job.claim_file.unlink(missing_ok=True)

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def try_claim(job: Claimable) -> Claim | None:
    """Claim the job, taking over a stale claim; None when a live process holds it."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    if _create(job, owner):
        return Claim(job, owner)
    found = holder(job)
    if found is not None and found.is_alive():
        return None
    claim = _take_over(job, owner)
    if claim is not None and found is not None and found.problem:
        print(f"warning: {job.claim_file} could not be read ({found.problem}); taken over as stale", file=sys.stderr,
              flush=True)
    return claim


def _create(job: Claimable, owner: str) -> bool:
    job.path.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(job.claim_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "claimed_at": time.time()}, f)
    return True


def _take_over(job: Claimable, owner: str) -> Claim | None:
    lock = job.claim_takeover_lock
    try:
        lock.mkdir()
    except FileExistsError:
        # a taker that died while holding the takeover lock must not block the job forever
        try:
            if time.time() - lock.stat().st_mtime > timeout_s():
                lock.rmdir()
        except OSError:
            pass
        return None
    try:
        found = holder(job)  # again, under the lock: another taker may have won meanwhile
        if found is not None and found.is_alive():
            return None
        if job.claim_file.is_dir() and not job.claim_file.is_symlink():  # damage: nothing a claim writes
            shutil.rmtree(job.claim_file)
        job.claim_file.unlink(missing_ok=True)
        return Claim(job, owner) if _create(job, owner) else None
    finally:
        lock.rmdir()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
