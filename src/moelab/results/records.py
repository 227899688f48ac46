"""Typed records of the experiments tree, each with its one writer and its readers, like `JobStatus`.

    LaunchRecord    one line of launches.jsonl: who launched what, from which commit, how many jobs
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
