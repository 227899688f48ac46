"""The finished variants of an experiment, one at a time, for what copies them elsewhere (export/).

Each carries what a tracker keeps of a run: the job's configuration, the variant's parameters, its
per-epoch metrics, its results and the files worth attaching. Read lazily, so ten thousand jobs
take the memory of one; what cannot be read is listed in `problems`, never raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from moelab.results.configurations import flatten
from moelab.results.errors import DamagedRecord
from moelab.results.io import read_jsonl
from moelab.results.records import JobSpec, VariantResults, read_job_spec
from moelab.results.states import view_job
from moelab.results.status import JobState
from moelab.results.tree import ExperimentTree


@dataclass
class FinishedVariant:
    experiment: str  # its folder's name
    job: str  # the job key
    variant: str
    spec: JobSpec
    results: VariantResults
    epochs: list[dict]  # metrics.jsonl, one line per epoch
    files: list[Path]  # results.json, and the live curves when drawn

    @property
    def parameters(self) -> dict:
        return variant_parameters(self.spec, self.variant)

    @property
    def configuration(self) -> dict:
        """The job's whole resolved configuration (as hashed into its key), with its grid values."""
        return {**self.spec.config, "grid_values": self.spec.grid_values}


@dataclass
class FinishedVariants:
    """Iterate for the finished variants; `problems` fills while iterating."""

    tree: ExperimentTree
    skip: Callable[[str, str], bool] = lambda job, variant: False  # (job key, variant): already copied
    problems: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[FinishedVariant]:
        for job in self.tree.jobs():
            try:
                spec = read_job_spec(job)
            except DamagedRecord as error:
                self.problems.append(f"{error.path}: {error.problem}; job skipped")
                continue
            names = [name for name in spec.variant_names if not self.skip(job.key, name)]
            if not names:
                continue
            view = view_job(job, names)
            self.problems += [f"{job.path}/{problem}" for problem in view.problems]
            for name in names:
                shown = view.variants[name]
                if shown.state is not JobState.DONE or shown.results is None:
                    continue
                out = job.variant(name)
                bad: list[int] = []
                epochs = read_jsonl(out.metrics_file, lambda number, _: bad.append(number)) if out.metrics_file.is_file() else []
                if bad:
                    self.problems.append(f"{out.metrics_file}: skipped unreadable line(s) {bad}")
                files = [f for f in (out.results_file, out.curves_plot) if f.is_file()]
                yield FinishedVariant(self.tree.name, job.key, name, spec, shown.results, epochs, files)


def variant_parameters(spec: JobSpec, variant: str) -> dict:
    """A variant's hyperparameters, flat: variant, model, seed, grid values, its model's parameters
    (`params.`), the train and data settings; numbers, booleans and text (anything else as text)."""
    own = spec.variant(variant) or {}
    values = {"variant": variant, "model": own.get("model"), "seed": spec.seed, **spec.grid_values,
              **flatten({k: v for k, v in own.items() if k not in ("name", "model")}, "params."),
              **flatten(spec.train, "train."), **flatten(spec.data, "data.")}
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in values.items() if v is not None}


def report_plots(tree: ExperimentTree) -> list[Path]:
    """The plots create-plots wrote for the experiment's report."""
    return sorted(tree.summary_dir.glob("*.png")) if tree.summary_dir.is_dir() else []
