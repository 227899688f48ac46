"""The `search:` section: a hyperparameter search instead of (or on top of) the grid.

    search:
      sampler: tpe            # grid | random | tpe
      n_trials: 40
      parallel: 4             # trials at once: local workers, or SLURM tasks
      seed: 0
      objective: {variant: moe_topk, metric: val_acc, direction: maximize}
      space:
        train.lr: {loguniform: [1.0e-4, 1.0e-2]}
        train.weight_decay: {uniform: [0.0, 0.1]}
        variants.moe_topk.num_experts: {choice: [4, 8, 16]}
        variants.*.hidden: {int: [32, 256], log: true}
      pruner: {name: median, warmup_epochs: 5}    # median | asha | none

A space key is what a grid axis may be (seed, data.<key>, train.<key>, variants.<name>.<param>,
variants.*.<param>); a trial is one point of the space, applied like grid values, with the grid's
jobs (e.g. its seeds) under it. Everything is checked here, before anything is written: the
sampler is only built later (moelab.search), from this resolved section.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from moelab.config import grid as grid_module
from moelab.data import get_dataset_spec
from moelab.schema import Field, Issue, check_section, did_you_mean
from moelab.results.metric_direction import higher_is_better
from moelab.train.metric_names import SPLIT_METRICS

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("median", "asha", "none")
DIRECTIONS = ("maximize", "minimize")
# a space entry is one of these, and the options it may carry
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "loguniform": (),
    "uniform": (),
    "int": ("log", "step"),
    "choice": (),
}
# the values of a space entry checked against the key's schema and the models: at most this many
# points of the whole space (its corners and choices)
MAX_CHECKED_POINTS = 256

OBJECTIVE = {
    "variant": Field(str, help="the variant whose validation metric is optimised"),
    "metric": Field(str, None, nullable=True, help="a validation metric, e.g. val_acc (null: val_<primary metric>)"),
    "direction": Field(str, None, nullable=True, choices=DIRECTIONS,
                       help="null: minimize for losses and errors, else maximize"),
}

PRUNER = {
    "name": Field(str, "median", choices=PRUNERS),
    "warmup_epochs": Field(int, 0, min=0, help="epochs of a job before its trial may be pruned"),
    "startup_trials": Field(int, 3, min=0, help="median: trials that finish before any is pruned"),
    "reduction_factor": Field(int, 3, min=2, help="asha: how many of each rung's trials go on, 1 in this many"),
}

SEARCH = {
    "sampler": Field(str, "tpe", choices=SAMPLERS),
    "n_trials": Field(int, 20, min=1, help="trials that finish (complete, pruned, or failed by their own error)"),
    "parallel": Field(int, 1, min=1, help="trials at once: local workers, or SLURM tasks"),
    "seed": Field(int, 0, min=0, help="the sampler's seed"),
    "startup_trials": Field(int, None, min=1, nullable=True,
                            help="tpe: random trials before the model (null: a quarter of n_trials, 2 to 10)"),
    "objective": Field(dict, help="{variant, metric, direction}"),
    "space": Field(dict, help="key -> {loguniform|uniform: [low, high]} | {int: [low, high], log, step} | {choice: [...]}"),
    "pruner": Field(dict, None, nullable=True, help="{name: median|asha|none, warmup_epochs, ...}"),
}


def check_search(raw: Any, doc: dict) -> tuple[dict, list[Issue]]:
    """The resolved search section and every problem in it; `doc` is the checked rest of the experiment."""
    search, issues = check_section(SEARCH, raw, "search")
    if issues and not isinstance(raw, dict):
        return {}, issues
    issues = [i for i in issues if i.path not in ("search.objective", "search.space", "search.pruner")
              or "is required" in i.message]
    objective, found = _check_objective(raw.get("objective"), doc)
    issues += found
    search["objective"] = objective
    search["space"], found = _check_space(raw.get("space"), doc, search.get("sampler"))
    issues += found
    pruner = raw.get("pruner")
    if pruner is None:
        search["pruner"] = {**check_section(PRUNER, {}, "")[0], "name": "none"}
    else:
        search["pruner"], found = check_section(PRUNER, pruner, "search.pruner")
        issues += found
    return search, issues


def _check_objective(raw: Any, doc: dict) -> tuple[dict, list[Issue]]:
    if raw is None:
        return {}, []  # reported as required by the section check
    objective, issues = check_section(OBJECTIVE, raw, "search.objective")
    if issues:
        return objective, issues
    names = [v["name"] for v in doc.get("variants", [])]
    if names and objective["variant"] not in names:
        issues.append(Issue("search.objective.variant", f"no variant named {objective['variant']!r}"
                                                        f"{did_you_mean(objective['variant'], names)}; variants: "
                                                        f"{', '.join(names)}"))
    task = get_dataset_spec(doc["data"]["name"]).task
    known = [f"val_{name}" for name in SPLIT_METRICS[task]]
    metric = objective["metric"] or known[1]  # val_<primary>: SPLIT_METRICS puts the loss first
    if metric.startswith("test_"):
        issues.append(Issue("search.objective.metric", f"{metric!r} is a test metric: a search chooses by validation "
                                                       f"metrics only (choosing by the test set leaks it); "
                                                       f"use one of {', '.join(known)}"))
    elif metric not in known:
        issues.append(Issue("search.objective.metric", f"unknown validation metric {metric!r}{did_you_mean(metric, known)}; "
                                                       f"{doc['data']['name']} gives {', '.join(known)}"))
    objective["metric"] = metric
    if objective["direction"] is None:
        objective["direction"] = "maximize" if higher_is_better(metric) else "minimize"
    return objective, issues


def _check_space(raw: Any, doc: dict, sampler: str | None) -> tuple[dict, list[Issue]]:
    if raw is None:
        return {}, []  # reported as required by the section check
    if not isinstance(raw, dict) or not raw:
        return {}, [Issue("search.space", "must be a non-empty mapping of keys to distributions, e.g. "
                                          "train.lr: {loguniform: [1.0e-4, 1.0e-2]}")]
    space, issues = {}, []
    for key, spec in raw.items():
        where = f"search.space.{key}"
        fields, problem = grid_module._axis_fields(str(key), doc)
        if problem:
            issues.append(Issue(where, problem))
            continue
        if key in doc.get("grid", {}):
            issues.append(Issue(where, f"is also a grid axis (grid.{key}); a key is either searched or gridded"))
            continue
        entry, found = _check_distribution(spec, where)
        if not found and sampler == "grid" and "choice" not in entry:
            found = [Issue(where, "the grid sampler tries every value: give this key a list, {choice: [...]}")]
        if not found:
            for value in _checked_values(entry):
                for field in fields:
                    found += field.check(value, where)[1]
        issues += found
        space[key] = entry
    return space, issues


def _check_distribution(spec: Any, where: str) -> tuple[dict, list[Issue]]:
    known = ", ".join(DISTRIBUTIONS)
    example = "e.g. {loguniform: [1.0e-4, 1.0e-2]}, {uniform: [0.0, 0.1]}, {int: [32, 256], log: true}, {choice: [4, 8]}"
    if not isinstance(spec, dict):
        return {}, [Issue(where, f"must be a distribution, {example}; got {spec!r}")]
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    unknown = [k for k in spec if k not in DISTRIBUTIONS and k not in ("log", "step")]
    if unknown:
        return {}, [Issue(where, f"unknown distribution {unknown[0]!r}{did_you_mean(unknown[0], DISTRIBUTIONS)}; "
                                 f"known: {known}")]
    if len(kinds) != 1:
        return {}, [Issue(where, f"needs exactly one distribution ({known}), got {len(kinds)}; {example}")]
    kind = kinds[0]
    options = [k for k in spec if k != kind]
    wrong = [k for k in options if k not in DISTRIBUTIONS[kind]]
    if wrong:
        allowed = f"it takes {', '.join(DISTRIBUTIONS[kind])}" if DISTRIBUTIONS[kind] else "it takes no options"
        return {}, [Issue(f"{where}.{wrong[0]}", f"is not an option of {kind} ({allowed})")]
    value = spec[kind]
    if kind == "choice":
        if not isinstance(value, list) or not value:
            return {}, [Issue(f"{where}.choice", f"must be a non-empty list of values, got {value!r}")]
        if any(isinstance(v, (list, dict)) for v in value):
            return {}, [Issue(f"{where}.choice", "values must be numbers, strings, booleans or null")]
        if len({repr(v) for v in value}) != len(value):
            return {}, [Issue(f"{where}.choice", f"has repeated values {value!r}")]
        return {"choice": list(value)}, []
    number = Field(int) if kind == "int" else Field(float)
    if not isinstance(value, list) or len(value) != 2:
        return {}, [Issue(f"{where}.{kind}", f"must be a range [low, high], got {value!r}")]
    (low, low_issues), (high, high_issues) = number.check(value[0], f"{where}.{kind}[0]"), number.check(value[1], f"{where}.{kind}[1]")
    if low_issues or high_issues:
        return {}, low_issues + high_issues
    if low == high:
        return {}, [Issue(f"{where}.{kind}", f"is an empty range [{low}, {high}]; to fix a value, set it outside search")]
    if low > high:
        return {}, [Issue(f"{where}.{kind}", f"is a reversed range [{low}, {high}]; write [{high}, {low}]")]
    log = kind == "loguniform" or bool(spec.get("log", False))
    if "log" in spec and not isinstance(spec["log"], bool):
        return {}, [Issue(f"{where}.log", f"must be true or false, got {spec['log']!r}")]
    if log and low <= 0:
        return {}, [Issue(f"{where}.{kind}", f"a log range must lie above zero, got [{low}, {high}]")]
    entry = {kind: [low, high]}
    if kind == "int":
        step, found = Field(int, 1, min=1).check(spec.get("step", 1), f"{where}.step")
        if found:
            return {}, found
        if log and step != 1:
            return {}, [Issue(f"{where}.step", "a log range takes no step")]
        if (high - low) % step:
            return {}, [Issue(f"{where}.step", f"the range [{low}, {high}] is not a whole number of steps of {step}")]
        entry.update(log=log, step=step)
    return entry, []


def _checked_values(entry: dict) -> list:
    """The values of a space entry that are checked: its ends, or every choice."""
    if "choice" in entry:
        return list(entry["choice"])
    return list(next(iter(entry.values())))


def check_search_points(doc: dict) -> list[Issue]:
    """The models' own limits (e.g. k <= num_experts) at the corners of the space (every choice, both
    ends of each range), up to MAX_CHECKED_POINTS points; a sampled point inside still failing them
    ends its trial as failed."""
    space = doc["search"]["space"]
    keys = list(space)
    values = [_checked_values(space[key]) for key in keys]
    issues: list[Issue] = []
    seen: set[str] = set()
    for count, point in enumerate(itertools.product(*values)):
        if count >= MAX_CHECKED_POINTS:
            break
        pointed = apply_point(doc, dict(zip(keys, point)))
        for issue in grid_module.check_jobs(pointed):
            text = f"{issue.message} (at {', '.join(f'{k}={v}' for k, v in zip(keys, point))})"
            if text not in seen:
                seen.add(text)
                issues.append(Issue("search.space", f"{issue.path}: {text}"))
    return issues


def apply_point(doc: dict, point: dict) -> dict:
    """The experiment with a point of the space applied (as grid values are): its `grid` still
    expands into the point's jobs."""
    pointed = copy.deepcopy(doc)
    for key, value in point.items():
        grid_module._apply(pointed, key, value)
    pointed.pop("search", None)
    return pointed
