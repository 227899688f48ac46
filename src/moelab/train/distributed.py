"""A job trained by several processes (`train.distributed.processes: P`) with DistributedDataParallel.

The process that runs the job (a local worker, a SLURM task, `run/train_models.py`) is rank 0: it holds
the job's claim and heartbeat and alone writes metrics, checkpoints, status and results, exactly where
a single process would. For each training of the job (trainer.train_members) it starts ranks 1..P-1 as
processes of their own (`train_members_distributed`), which train the same members from the same
checkpoint and write nothing of the job: their files go to a scratch folder removed when they end (or,
after a kill, by the next training that makes one on that machine).

Every rank takes its slice of each batch of train.batch_size, its loss weighted by its share of the
batch, and DistributedDataParallel averages the gradients: the step is that of the whole batch, as
with one process, and the epoch's figures are summed over the ranks (train/ranks.py).
Validation and test run on every rank on the whole sets (the weights are the same everywhere), so no
decision (early stopping, best weights) can differ between ranks.

With `expert_parallel: true` each rank holds E / P experts of every MoE layer and the tokens travel to
them (models/expert_parallel.py): validation runs on every rank through the sharded layers, in step;
checkpoints and best weights are gathered whole (so they resume under any process count), and rank 0
alone tests, on the gathered model (train/ranks.py, ShardedExperts).

A rank that dies fails the training with the rank named (`RankFailed`); rank 0 stops the others and
nothing of the unfinished epoch is written (the checkpoint is the last finished epoch's).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from moelab.results.io import read_json
from moelab.results.tree import JobTree
from moelab.train.ranks import Ranks, taking_part
from moelab.train.settings import TrainSettings
from moelab.train.trainer import Member, StopRequested, resolve_device, train_members

# how long rank 0, after an error, waits for a rank that died to be seen as dead (its exit is what
# explains the error); a rank that is alive is not waited for longer
DEATH_NOTICE_S = 5.0
# how long the ranks may take to meet, and a collective to wait for a slow rank
MEETING_TIMEOUT_S = 600.0


class RankFailed(Exception):
    """A rank other than 0 died while the job trained."""


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def free_address() -> str:
    """127.0.0.1 and a port nothing listens on, for the ranks to meet on this machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def train_members_distributed(job_dir: Path, members: list, data, settings: TrainSettings, seed: int,
                              device: torch.device, stop_requested: Callable[[], bool], continued_from: dict | None,
                              on_finished: Callable) -> None:
    """trainer.train_members, by `settings.distributed.processes` processes: this one is rank 0, the others are
    started here and stopped before this returns (or raises), whatever happens."""
    world_size = settings.distributed.processes
    if _standing is not None:
        _train_with_standing_ranks(members, data, settings, seed, device, stop_requested, continued_from, on_finished)
        return
    if device.type == "cuda" and torch.cuda.device_count() < world_size:  # NCCL: one GPU per rank
        raise ValueError(f"train.distributed.processes={world_size} needs {world_size} GPUs, one per process, and this "
                         f"process sees {torch.cuda.device_count()} (run_here gives each worker one GPU per process of "
                         f"its largest job; a process started otherwise needs them in CUDA_VISIBLE_DEVICES); submit "
                         f"the job (one GPU per task), or train it on CPUs with train.device: cpu")
    address = free_address()
    names = [member.variant["name"] for member in members]
    # removed here, also when a rank was killed before it could clean up
    scratch = scratch_folder()
    other_ranks: dict[int, subprocess.Popen] = {}

    def finished(member, results: dict | None, error: Exception | None) -> None:
        if error is not None:
            dead = _dead_ranks(other_ranks, wait=DEATH_NOTICE_S)
            if dead:
                error = RankFailed(f"{dead}; the job stopped there (its checkpoint is the last finished epoch's)")
        on_finished(member, results, error)

    try:
        # processes of their own (not multiprocessing children: a local worker is a daemon, which may have none)
        for rank in range(1, world_size):
            arguments = {"job_dir": str(job_dir), "names": names, "rank": rank, "world_size": world_size,
                         "address": address, "threads": torch.get_num_threads(), "scratch": str(scratch / str(rank))}
            other_ranks[rank] = subprocess.Popen([sys.executable, "-m", "moelab.train.distributed", json.dumps(arguments)],
                                             preexec_fn=_die_with_parent)
        _meet(0, world_size, address, device)
        with taking_part(Ranks(0, world_size, settings.distributed.expert_parallel)):
            train_members(members, data, settings, seed, device, stop_requested, continued_from, finished)
        for rank_process in other_ranks.values():  # they end with the training
            rank_process.wait(MEETING_TIMEOUT_S)
        dead = _dead_ranks(other_ranks, wait=0)
        if dead:
            raise RankFailed(f"{dead} after the training")
    except Exception as error:
        dead = _dead_ranks(other_ranks, wait=0 if isinstance(error, StopRequested) else DEATH_NOTICE_S)
        if dead and not isinstance(error, RankFailed):
            raise RankFailed(f"{dead}; the job stopped there") from error
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for rank_process in other_ranks.values():
            if rank_process.poll() is None:
                rank_process.kill()
            rank_process.wait()
        shutil.rmtree(scratch, ignore_errors=True)


SCRATCH_PREFIX = "moelab-ranks-"


def scratch_folder() -> Path:
    """A new scratch folder for ranks' files in the temporary directory, named after this process. Those of
    processes of this user that are gone (killed outright before they could remove theirs) are removed
    first, so that they do not pile up on a node."""
    temporary = Path(tempfile.gettempdir())
    for folder in temporary.glob(f"{SCRATCH_PREFIX}*"):
        owner = folder.name[len(SCRATCH_PREFIX):].split("-")[0]
        with contextlib.suppress(OSError):
            if owner.isdigit() and folder.stat().st_uid == os.getuid() and not _alive(int(owner)):
                shutil.rmtree(folder, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=temporary))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _die_with_parent() -> None:
    """In a rank's process before it starts: the kernel kills it when rank 0 dies (Linux), so that no rank
    outlives the process that holds the job."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _dead_ranks(other_ranks: dict[int, subprocess.Popen], wait: float) -> str:
    """The ranks that ended with an error, in words ('' when none), after waiting up to `wait` seconds for one."""
    deadline = time.monotonic() + wait
    while (other_ranks and all(process.poll() is None for process in other_ranks.values())
           and time.monotonic() < deadline):
        time.sleep(0.05)
    dead = [f"rank {rank} of {len(other_ranks) + 1} {_exit_words(process.returncode)}"
            for rank, process in other_ranks.items() if process.poll() not in (None, 0)]
    return ", ".join(dead)


def _exit_words(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


def _meet(rank: int, world_size: int, address: str, device: torch.device) -> None:
    dist.init_process_group(backend(device), init_method=f"tcp://{address}", rank=rank, world_size=world_size,
                            timeout=_timeout())


def _rank_main(job_dir: str, names: list[str], rank: int, world_size: int, address: str, threads: int,
                 scratch: str) -> None:
    """Rank `rank` of a job's training, started by rank 0 on this machine."""
    from moelab.train.process import prepare_process

    prepare_process(threads)
    try:
        _follow(job_dir, names, Ranks(rank, world_size), Path(scratch),
                meet=lambda device: _meet(rank, world_size, address, device))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _follow(job_dir: str, names: list[str], ranks: Ranks, scratch: Path, meet: Callable[[torch.device], None]) -> None:
    """Train the members `names` of the job as rank `ranks.rank`, from the job's checkpoints, writing to `scratch`.
    `meet`: join the other ranks (once the checkpoints are copied: rank 0 writes none before they all met)."""
    from moelab.data import DataSettings, load_dataset

    job = JobTree(Path(job_dir))
    spec = read_json(job.config_file)
    config = spec["config"]
    settings = TrainSettings.from_dict(config["train"])
    device = resolve_device(settings.device)
    if device.type == "cuda":
        device = torch.device("cuda", ranks.rank % torch.cuda.device_count())
    data = load_dataset(DataSettings(**config["data"]), config["seed"]).to(device)
    continued = spec.get("continued_from")
    own = _scratch_copy(job, names, continued, scratch)
    variants = {v["name"]: v for v in config["variants"]}
    members = [Member(variants[name], own.variant(name)) for name in names]
    meet(device)
    with taking_part(replace(ranks, expert_parallel=settings.distributed.expert_parallel)):
        # rank 0 records the errors; this rank shows its own and trains on, in step with rank 0
        train_members(members, data, settings, config["seed"], device, lambda: False, continued,
                      lambda member, results, error: _show(ranks.rank, member, error))


def _show(rank: int, member, error: Exception | None) -> None:
    if error is not None:
        import traceback

        print(f"rank {rank}, {member.variant['name']}: " + "".join(traceback.format_exception(error)),
              file=sys.stderr, flush=True)


def _scratch_copy(job: JobTree, names: list[str], continued: dict | None, scratch: Path) -> JobTree:
    """The checkpoints the members start from, copied under `scratch` (and those of the job they continue):
    this rank reads what rank 0 reads, and writes where nobody looks."""
    own = JobTree(scratch / job.key)
    jobs = [(job, own)] + ([(job.sibling(continued["job"]), own.sibling(continued["job"]))] if continued else [])
    for source_job, target_job in jobs:
        for name in names:
            source, target = source_job.variant(name), target_job.variant(name)
            for path, copy in ((source.last_checkpoint, target.last_checkpoint),
                               (source.best_weights, target.best_weights)):
                copy.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):  # none yet, or set aside by rank 0 meanwhile
                    shutil.copyfile(path, copy)
    return own


# Standing ranks: processes started together by SLURM (one task each), which meet once through the environment
# (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) and stay together for the whole job. Rank 0 runs the job; before
# each training it sends the members' names to the others, and None when the job is over. Rank 0 cannot see
# the other tasks' processes (they may be on other nodes): each of them counts up a key of the store they met
# by every HEARTBEAT_S (`Heartbeat`), and when a collective fails, rank 0 names the ranks whose count stopped.

HEARTBEAT_S = 1.0
_standing: Ranks | None = None
_store: dist.TCPStore | None = None


@contextlib.contextmanager
def standing_ranks(ranks: Ranks, device: torch.device):
    """Rank 0's side: jobs run inside train with these ranks; the others are released when it ends."""
    global _standing, _store
    _store = _meet_standing(ranks, device)
    _standing = ranks
    try:
        yield
        dist.broadcast_object_list([None], src=0)  # the job is over
    finally:
        _standing, _store = None, None
        dist.destroy_process_group()


def follow_rank_zero(job_dir: str, ranks: Ranks, device: torch.device) -> None:
    """A standing rank other than 0: train what rank 0 sends, until it sends None."""
    _meet_standing(ranks, device)
    heartbeat = Heartbeat(ranks.rank)
    try:
        while True:
            names = [None]
            dist.broadcast_object_list(names, src=0)
            if names[0] is None:
                return
            scratch = scratch_folder()
            try:
                _follow(job_dir, names[0], ranks, scratch, meet=lambda device: None)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    finally:
        heartbeat.stop()
        dist.destroy_process_group()


def _meet_standing(ranks: Ranks, device: torch.device) -> dist.TCPStore:
    """Join the other standing ranks through a store that rank 0 holds at MASTER_ADDR:MASTER_PORT."""
    if device.type == "cuda":  # the collectives of Python objects run on the current device
        torch.cuda.set_device(device)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=ranks.rank == 0,
                          timeout=_timeout(), wait_for_workers=False)
    dist.init_process_group(backend(device), store=store, rank=ranks.rank, world_size=ranks.world_size,
                            timeout=_timeout())
    return store


class Heartbeat:
    """A standing rank's sign of life: a count in rank 0's store, one up every HEARTBEAT_S, from a thread of
    its own (through a connection of its own), so that it goes on while the rank computes or waits in a
    collective, and stops only with the process (or with rank 0's store)."""

    def __init__(self, rank: int):
        self._store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                    timeout=_timeout(), wait_for_workers=False)
        self._key, self._stopped = _heartbeat_key(rank), threading.Event()
        self._thread = threading.Thread(target=self._beat, name="rank-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        with contextlib.suppress(Exception):  # rank 0's store gone: rank 0 ended, and this rank ends with it
            while not self._stopped.wait(HEARTBEAT_S):
                self._store.add(self._key, 1)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def _heartbeat_key(rank: int) -> str:
    return f"moelab/heartbeat/{rank}"


def _silent_ranks(store: dist.TCPStore, world_size: int, wait: float) -> list[int]:
    """The ranks other than 0 whose heartbeat did not move for `wait` seconds (fewer, once all have moved)."""
    def counts() -> dict[int, int]:
        return {rank: store.add(_heartbeat_key(rank), 0) for rank in range(1, world_size)}

    first, deadline = counts(), time.monotonic() + wait
    silent = set(first)
    while silent and time.monotonic() < deadline:
        time.sleep(HEARTBEAT_S / 4)
        silent = {rank for rank, count in counts().items() if count == first[rank]}
    return sorted(silent)


def _train_with_standing_ranks(members: list, data, settings: TrainSettings, seed: int, device: torch.device,
                               stop_requested: Callable[[], bool], continued_from: dict | None,
                               on_finished: Callable) -> None:
    if _standing.world_size != settings.distributed.processes:
        raise ValueError(f"the job asks for train.distributed.processes={settings.distributed.processes}, but "
                         f"{_standing.world_size} processes were started for it; launch it again")
    dist.broadcast_object_list([[member.variant["name"] for member in members]], src=0)

    def finished(member, results: dict | None, error: Exception | None) -> None:
        if error is not None and _lost_a_rank(error):
            error = RankFailed(f"{_silent_words(_standing.world_size)}; the job stopped there (its checkpoint is the "
                               f"last finished epoch's)")
        on_finished(member, results, error)

    with taking_part(replace(_standing, expert_parallel=settings.distributed.expert_parallel)):
        train_members(members, data, settings, seed, device, stop_requested, continued_from, finished)


def _silent_words(world_size: int) -> str:
    """Which rank went away, and where to read why."""
    silent = _silent_ranks(_store, world_size, wait=DEATH_NOTICE_S)
    job = os.environ.get("SLURM_JOB_ID", "<job id>")
    if not silent:
        return (f"a rank of {world_size} other than 0 stopped answering (killed, out of memory, its node lost: the "
                f"job's SLURM logs, slurm/{job}_<rank>_log.*, say which)")
    logs = ", ".join(f"slurm/{job}_{rank}_log.*" for rank in silent)
    return (", ".join(f"rank {rank} of {world_size}" for rank in silent)
            + f" stopped answering (killed, out of memory, its node lost: {logs} says how)")


def _lost_a_rank(error: Exception) -> bool:
    """Whether a collective failed because another rank went away (gloo: its connection closed; NCCL: the
    communicator was aborted or timed out)."""
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and any(
        words in str(error) for words in ("Connection closed by peer", "Connection reset by peer", "NCCL")))


def _timeout():
    from datetime import timedelta

    return timedelta(seconds=MEETING_TIMEOUT_S)


if __name__ == "__main__":  # a rank started by train_members_distributed
    _rank_main(**json.loads(sys.argv[1]))
