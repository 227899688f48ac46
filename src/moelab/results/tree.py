"""Where everything lives in the experiments tree, in one place.

    <root>/<name>/experiment.yaml            resolved experiment as last launched
    <root>/<name>/launches.jsonl             one line per launch
    <root>/<name>/jobs/<key>/config.json     the job's resolved configuration
    <root>/<name>/jobs/<key>/status.json     job and variant states, attempts, tracebacks
    <root>/<name>/jobs/<key>/<variant>/      metrics.jsonl, results.json (written last), weights/
    <root>/<name>/summary/                   tables and plots written by create-plots
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExperimentTree:
    path: Path

    @property
    def experiment_file(self) -> Path:
        return self.path / "experiment.yaml"

    @property
    def launches_file(self) -> Path:
        return self.path / "launches.jsonl"

    @property
    def jobs_dir(self) -> Path:
        return self.path / "jobs"

    @property
    def summary_dir(self) -> Path:
        return self.path / "summary"

    def job(self, key: str) -> "JobTree":
        return JobTree(self.jobs_dir / key)

    def jobs(self) -> list["JobTree"]:
        if not self.jobs_dir.is_dir():
            return []
        with os.scandir(self.jobs_dir) as entries:  # scandir: no stat per entry, fast on large trees
            names = sorted(e.name for e in entries if e.is_dir())
        return [JobTree(self.jobs_dir / name) for name in names]


@dataclass(frozen=True)
class JobTree:
    path: Path

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    def variant(self, name: str) -> "VariantTree":
        return VariantTree(self.path / name)


@dataclass(frozen=True)
class VariantTree:
    path: Path

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def results_file(self) -> Path:
        return self.path / "results.json"

    @property
    def best_weights(self) -> Path:
        return self.path / "weights" / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "weights" / "last.pt"

    def is_done(self) -> bool:
        return self.results_file.is_file()
