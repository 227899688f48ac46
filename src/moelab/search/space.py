"""The search space as Optuna distributions, a point of it as jobs, and a trial's objective.

A point is applied to the experiment as grid values are (config/search.py `apply_point`) and the
experiment's own grid then expands it: the jobs of a point are ordinary jobs with ordinary keys,
the point's values recorded in their grid values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from moelab.config import Experiment, Job
from moelab.config.search import apply_point
from moelab.results.io import read_jsonl
from moelab.results.tree import ExperimentTree


def distributions(space: dict) -> dict[str, BaseDistribution]:
    """Optuna's distribution for each key of a checked space (config/search.py)."""
    found: dict[str, BaseDistribution] = {}
    for key, entry in space.items():
        if "loguniform" in entry:
            found[key] = FloatDistribution(*entry["loguniform"], log=True)
        elif "uniform" in entry:
            found[key] = FloatDistribution(*entry["uniform"])
        elif "int" in entry:
            found[key] = IntDistribution(*entry["int"], log=entry["log"], step=entry["step"])
        else:
            found[key] = CategoricalDistribution(entry["choice"])
    return found


def is_log(entry: dict) -> bool:
    return "loguniform" in entry or bool(entry.get("log"))


@dataclass(frozen=True)
class Point:
    """A point of the space as the experiment it makes and that experiment's jobs."""

    params: dict
    experiment: Experiment
    jobs: list[Job]

    def job_spec(self, job: Job) -> dict:
        return self.experiment.job_spec(job)


def point_jobs(experiment: Experiment, params: dict) -> Point:
    pointed = Experiment(experiment.source, apply_point(experiment.doc, params))
    # the point's values are the job's grid values too: the tables group runs by them
    jobs = [Job(job.key, job.config, {**params, **job.grid_values}) for job in pointed.jobs()]
    return Point(dict(params), pointed, jobs)


def epoch_values(tree: ExperimentTree, key: str, variant: str, metric: str) -> list[tuple[int, float]]:
    """(epoch, value) of a job's variant's validation metric, as far as it trained."""
    metrics = tree.job(key).variant(variant).metrics_file
    if not metrics.is_file():
        return []
    return [(int(row["epoch"]), float(row[metric])) for row in read_jsonl(metrics)
            if isinstance(row.get(metric), (int, float))]


def best_value(values: list[float], direction: str) -> float:
    """The best of a job's epochs (NaN when none is a number: a diverged run)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan
    return max(finite) if direction == "maximize" else min(finite)


def objective(tree: ExperimentTree, keys: list[str], objective_section: dict) -> float:
    """The mean over a trial's jobs of the objective variant's best validation metric."""
    bests = [best_value([v for _, v in epoch_values(tree, key, objective_section["variant"], objective_section["metric"])],
                        objective_section["direction"]) for key in keys]
    return sum(bests) / len(bests) if bests else math.nan
