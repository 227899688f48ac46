"""Typed records of the experiments tree, each with its one writer and its readers, like `JobStatus`.

    JobSpec         a job's config.json: what it computes (hashed into its key) and where it stands in the grid
    LaunchRecord    one line of launches.jsonl: who launched what, from which commit, how many jobs
    VariantResults  a variant's results.json, written last by the trainer (the variant's completion marker)
    TestedWeights   results.json's "tested": which epoch's weights and gate state the test results are of
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

from filelock import FileLock

from moelab.results.errors import DamagedRecord
from moelab.results.io import append_jsonl, read_json, read_jsonl
from moelab.results.tree import ExperimentTree, JobTree, VariantTree


@dataclass
class JobSpec:
    """A job's config.json, checked enough to build paths and models from it. config/ writes it
    (Experiment.job_spec); everything else reads it here."""

    key: str
    experiment: str
    grid_values: dict
    seed: int
    data: dict
    train: dict
    variants: list[dict]  # each with a "name" and a "model"
    matched: dict = field(default_factory=dict)  # MoE variant -> {"active"/"total": its matched dense variant}
    config: dict = field(default_factory=dict)  # the whole resolved configuration, as hashed into the key
    continued_from: dict | None = None  # {"job", "epochs"}: the shorter finished job its variants start from

    @property
    def variant_names(self) -> list[str]:
        return [v["name"] for v in self.variants]

    @property
    def fusion_key(self) -> str:
        """Equal for jobs that differ only in their seed: they train the same networks with the same
        settings, and fused training may train them as one. Jobs that continue shorter ones continue
        their own seed's job, so only how many epochs they take over counts (fused training groups
        its shares by the epoch they start at in any case)."""
        continued = self.continued_from and {"epochs": self.continued_from.get("epochs")}
        return json.dumps({**{k: v for k, v in self.config.items() if k != "seed"}, "continued_from": continued},
                          sort_keys=True, default=str)

    def variant(self, name: str) -> dict | None:
        return next((v for v in self.variants if v["name"] == name), None)

    @classmethod
    def from_dict(cls, doc: Any, key: str, path=None) -> "JobSpec":
        where = path or "config.json"
        try:
            config = doc["config"]
            variants = [dict(v) for v in config["variants"]]
            spec = cls(key, str(doc.get("experiment", "")), dict(doc.get("grid_values") or {}), int(config["seed"]),
                       dict(config["data"]), dict(config.get("train") or {}), variants, dict(doc.get("matched") or {}),
                       config, doc.get("continued_from"))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise DamagedRecord(where, f"lacks what a job needs ({type(error).__name__}: {error})", _RELAUNCH) from None
        if any(not isinstance(v.get("name"), str) or not isinstance(v.get("model"), str) for v in variants):
            raise DamagedRecord(where, "names a variant without a name or a model", _RELAUNCH)
        source = spec.continued_from
        if source is not None and not (isinstance(source, dict) and isinstance(source.get("job"), str)
                                       and isinstance(source.get("epochs"), int)):
            raise DamagedRecord(where, "continued_from is not {job, epochs}", _RELAUNCH)
        return spec


_RELAUNCH = "launch the experiment again with --force to write it afresh (that job is trained again)"


def read_job_spec(job: JobTree, read: Callable[[Any], Any] = read_json) -> JobSpec:
    """`read` parses the file (the dashboard passes its cache)."""
    try:
        doc = read(job.config_file)
    except FileNotFoundError:
        raise DamagedRecord(job.config_file, "missing", _RELAUNCH) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedRecord(job.config_file, f"unreadable ({type(error).__name__})", _RELAUNCH) from None
    return JobSpec.from_dict(doc, job.key, job.config_file)


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
    job_keys: list[str] = field(default_factory=list)  # the launch's jobs: the report covers their configuration
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


def check_launches_file(tree: ExperimentTree) -> None:
    """A launch appends to launches.jsonl: something else in its place (a folder) stops it before it writes."""
    if tree.launches_file.exists() and not tree.launches_file.is_file():
        raise DamagedRecord(tree.launches_file, "is not a file", "move it aside: it only records past launches")


def read_launches(tree: ExperimentTree) -> list[LaunchRecord]:
    """Every launch, oldest first; a line cut short (a launch killed while appending) is skipped."""
    check_launches_file(tree)
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
                                f"{error})", _RETRAIN) from None


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class VariantResults:
    """results.json: test metrics, parameter counts, the best epoch, which weights were tested, and
    the summaries of the expert analysis."""

    values: dict  # every key as the trainer wrote it
    path: str = ""

    @property
    def metric(self) -> str | None:
        return self.values.get("metric")

    @property
    def best_val(self) -> float | None:
        return _number(self.values.get(f"best_val_{self.metric}"))

    def scalars(self) -> dict:
        """The values a table holds (not the lists and mappings)."""
        return {k: v for k, v in self.values.items() if not isinstance(v, (dict, list))}

    def tested(self, train: dict) -> TestedWeights:
        """`train`: the job's train section (for a results.json written before `tested` was)."""
        return TestedWeights.of_results(self.values, train, self.path)


def read_variant_results(variant: VariantTree, read: Callable[[Any], Any] = read_json) -> VariantResults:
    """`read` parses the file (the dashboard passes its cache). Raises FileNotFoundError while the
    variant is unfinished, DamagedRecord when the file cannot be read."""
    try:
        values = read(variant.results_file)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as error:  # json's decode error is a ValueError
        raise DamagedRecord(variant.results_file, f"unreadable ({type(error).__name__})", _RETRAIN) from None
    if not isinstance(values, dict):
        raise DamagedRecord(variant.results_file, "unreadable (not a mapping)", _RETRAIN)
    return VariantResults(values, str(variant.results_file))


_RETRAIN = "delete it to train the variant again at the next launch"


_HEADLINE = re.compile(r"<div class='box headline'>(.*?)</div>", re.S)
_TAG = re.compile(r"<[^>]+>")


def read_report_headline(tree: ExperimentTree) -> str | None:
    """The first headline box of the report create-plots wrote, as plain text; None before a report
    exists or when it has none (the page is read, not recomputed: a large tree takes seconds to
    aggregate)."""
    try:
        text = tree.report_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = _HEADLINE.search(text)
    return " ".join(html.unescape(_TAG.sub(" ", found.group(1))).split()) if found else None
