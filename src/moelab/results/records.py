"""Typed records of the experiments tree, each with its one writer and its readers, like `JobStatus`.

    LaunchRecord    one line of launches.jsonl: who launched what, from which commit, how many jobs
    TestedWeights   results.json's "tested": which epoch's weights and gate state the test results are of
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from filelock import FileLock

from moelab.results.errors import DamagedRecord
from moelab.results.io import append_jsonl, read_jsonl
from moelab.results.tree import ExperimentTree


@dataclass(frozen=True)
class LaunchRecord:
    time: str
    mode: str  # the command-line mode: run_here, submit, ...
    experiment_file: str = ""
    argv: list[str] = field(default_factory=list)  # the launch's own arguments, for the rerun hint
    git_commit: str | None = None  # None outside a git checkout
    git_dirty: bool | None = None  # the work tree had uncommitted changes (launches/<id>/git.diff holds them)
    provenance: str | None = None  # launches/<id>/, when the launch ran something
    host: str | None = None
    python: str | None = None
    jobs_total: int = 0
    jobs_run: int = 0
    jobs_skipped: dict[str, int] = field(default_factory=dict)  # state -> jobs not run in that state
    force: bool = False
    launch_id: str = ""
    trials_to_start: int | None = None  # a search launch

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.trials_to_start is None:
            data.pop("trials_to_start")
        return data

    @classmethod
    def from_dict(cls, data: dict, path=None) -> "LaunchRecord":
        """Keys this version does not know (written by a later one) are ignored."""
        missing = [name for name in ("time", "mode") if name not in data] if isinstance(data, dict) else ["a mapping"]
        if missing:
            raise DamagedRecord(path or "launches.jsonl", f"a launch record without {', '.join(missing)}",
                                "remove that line (it records a past launch only)")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def append_launch(tree: ExperimentTree, record: LaunchRecord) -> None:
    with FileLock(tree.launches_lock):
        append_jsonl(tree.launches_file, record.to_dict())


def read_launches(tree: ExperimentTree) -> list[LaunchRecord]:
    """Every launch, oldest first; a line cut short (a launch killed while appending) is skipped."""
    if not tree.launches_file.is_file():
        return []
    return [LaunchRecord.from_dict(row, tree.launches_file) for row in read_jsonl(tree.launches_file)]


def last_launch(tree: ExperimentTree) -> LaunchRecord | None:
    launches = read_launches(tree)
    return launches[-1] if launches else None


@dataclass(frozen=True)
class TestedWeights:
    """The weights a variant was tested with, and so the ones it answers with when served: the epoch
    they are of, the share of training the gate was set to at that epoch (an annealed temperature
    depends on it), and their validation metric (what picks a variant's best run)."""

    checkpoint: str  # train.checkpoint: best or last
    epoch: int
    progress: float  # the argument of the model's set_progress
    val: float | None

    @classmethod
    def at(cls, checkpoint: str, epoch: int, epochs: int, val: float | None) -> "TestedWeights":
        """The trainer sets the gate to `epoch / epochs` at the start of each epoch."""
        return cls(checkpoint, epoch, epoch / max(epochs, 1), val)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of_results(cls, results: dict, train: dict, path=None) -> "TestedWeights":
        """From a results.json (`train`: the job's train section); one written before it recorded
        them tested the best epoch's weights, or the last epoch's with `checkpoint: last`."""
        tested = results.get("tested")
        try:
            if tested is not None:
                return cls(str(tested["checkpoint"]), int(tested["epoch"]), float(tested["progress"]),
                           _number(tested.get("val")))
            checkpoint, epochs = train.get("checkpoint", "best"), int(train.get("epochs", 1))
            if checkpoint == "best":
                return cls.at("best", int(results["best_epoch"]), epochs,
                              _number(results.get(f"best_val_{results.get('metric')}")))
            return cls.at("last", int(results["epochs_trained"]) - 1, epochs, None)
        except (KeyError, TypeError, ValueError) as error:
            raise DamagedRecord(path or "results.json", f"which weights were tested is unreadable ({type(error).__name__}: "
                                f"{error})", "train the variant again (launch with --force)") from None


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
