"""Grid axes and their expansion into jobs.

An axis is a dotted key and a list of values; the jobs are the cartesian product of the axes.

    seed                         the experiment seed (data split, initialisation, batching)
    data.<key>, train.<key>      a section value, e.g. train.lr, train.early_stopping.patience
    variants.<name>.<param>      one variant's model parameter
    variants.*.<param>           that parameter of every variant whose model has it

A job's key is a hash of its resolved configuration, so the same grid point always lands in the same
folder and a changed hyperparameter makes a new job.

A grid of more than MOELAB_MAX_GRID_JOBS jobs (limits.py) is refused from its axis lengths, before
it is expanded; each variant's model is refused above MOELAB_MAX_MODEL_PARAMETERS (model_size.py).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from moelab.config.baseline import add_matched_variants
from moelab.config.distributed import distributed_problems
from moelab.config.init_from import compatibility_problems
from moelab.config.limits import MAX_GRID_JOBS, count_text
from moelab.config.model_size import model_size_problem
from moelab.config.sections import DATA, TOP, TRAIN
from moelab.data import DataSettings, dataset_keys, dataset_names, get_dataset_spec
from moelab.models import get_model_spec, model_params
from moelab.schema import Field, Issue, did_you_mean, keyed

KEY_LENGTH = 12


@dataclass(frozen=True)
class Job:
    key: str
    config: dict  # {"seed", "data", "train", "variants"}: everything the job's training reads
    grid_values: dict  # axis -> value at this grid point
    matched: dict = field(default_factory=dict)  # MoE variant -> {"active"/"total": its matched dense variant}


def job_key(config: dict) -> str:
    """A variant's init_from counts by the hash of its weights, not by their path (init_from.py says why)."""
    keyed = {**config, "variants": [{**v, "init_from": v["init_from"]["sha256"]} if "init_from" in v else v
                                    for v in config["variants"]]}
    canonical = json.dumps(keyed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_LENGTH]


def key_without_epochs(config: dict) -> str:
    """What two jobs share when they differ in train.epochs alone (a longer one can continue a shorter one)."""
    return job_key({**config, "train": {k: v for k, v in config["train"].items() if k != "epochs"}})


def check_grid(raw_grid: dict, doc: dict, variants_ok: bool = True) -> tuple[dict, list[Issue]]:
    grid, issues = {}, grid_size_issues(raw_grid)
    for axis, values in raw_grid.items():
        where = f"grid.{axis}"
        fields, problem = _axis_fields(str(axis), doc)
        if problem:
            if variants_ok or not str(axis).startswith("variants."):
                issues.append(Issue(where, problem))
            continue
        if not isinstance(values, list) or not values:
            issues.append(Issue(where, f"must be a non-empty list of values, got {values!r}"))
            continue
        axis_issues = []
        checked = []
        for i, value in enumerate(values):
            for field in fields:
                value_ok, found = field.check(value, f"{where}[{i}]")
                axis_issues += found
            checked.append(value_ok)
            if axis == "data.name" and not axis_issues:
                axis_issues += _check_dataset_name(value, f"{where}[{i}]")
        if len({json.dumps(v, sort_keys=True) for v in checked}) != len(checked) and not axis_issues:
            axis_issues.append(Issue(where, f"has repeated values {values!r}; each value makes its own jobs"))
        issues += axis_issues
        grid[axis] = checked
    return grid, issues


def grid_size_issues(raw_grid: dict) -> list[Issue]:
    """Refuse a grid of more than MAX_GRID_JOBS jobs from its axis lengths, before it is expanded."""
    lengths = {str(axis): len(values) for axis, values in raw_grid.items() if isinstance(values, list) and values}
    jobs = math.prod(lengths.values())
    limit = MAX_GRID_JOBS.value()
    if jobs <= limit:
        return []
    shown = " x ".join(f"{n:,} ({axis:.60})" for axis, n in list(lengths.items())[:8])
    if len(lengths) > 8:
        shown += f" x ... ({len(lengths) - 8:,} more axes)"
    return [Issue("grid", f"makes {count_text(jobs)} jobs, {shown}, more than the limit of {limit:,} jobs; split the "
                          f"experiment, or {MAX_GRID_JOBS.lift_hint()}")]


def _axis_fields(axis: str, doc: dict) -> tuple[list[Field], str | None]:
    """The schema fields a grid axis sets, or why the axis is not allowed."""
    allowed = "allowed axes: seed, data.<key>, train.<key>, variants.<name>.<param>, variants.*.<param>"
    if axis == "seed":
        return [TOP["seed"]], None
    section, _, rest = axis.partition(".")
    if section in ("data", "train"):
        node: Any = DATA if section == "data" else TRAIN
        for part in rest.split("."):
            if not isinstance(node, dict) or part not in node:
                options = list(node) if isinstance(node, dict) else []
                return [], (f"unknown key {part!r} in {section}{did_you_mean(part, options)}; "
                            f"keys there: {', '.join(options)}")
            node = node[part]
        if isinstance(node, dict):
            return [], f"{axis} is a section; name one of its keys: {', '.join(node)}"
        return [node], None
    if section == "variants":
        name, _, param = rest.partition(".")
        if not param or "." in param:
            return [], f"variant axes look like variants.<name>.<param> or variants.*.<param>; {allowed}"
        names = [v["name"] for v in doc["variants"]]
        if name != "*" and name not in names:
            return [], f"no variant named {name!r}{did_you_mean(name, names)}; variants: {', '.join(names)}"
        targets = [v for v in doc["variants"] if name in ("*", v["name"])]
        fields = [get_model_spec(v["model"]).schema[param] for v in targets if param in get_model_spec(v["model"]).schema]
        if not fields:
            if name == "*":
                return [], f"no variant's model has a parameter {param!r}"
            return [], f"model {targets[0]['model']!r} of variant {name!r} has no parameter {param!r}"
        return fields, None
    return [], f"unknown grid axis {axis!r}; {allowed}"


def _check_dataset_name(value: Any, where: str) -> list[Issue]:
    if value in dataset_names():
        return []
    return [Issue(where, f"unknown dataset {value!r}{did_you_mean(value, dataset_names())}; known: {', '.join(dataset_names())}")]


def expand(doc: dict) -> list[Job]:
    base = {key: doc[key] for key in ("seed", "data", "train", "variants")}
    axes = list(doc["grid"].items())
    jobs = []
    # each job gets a fresh copy; the checked configuration holds JSON values only, and json's C code
    # copies it many times faster than copy.deepcopy (which a 100,000-job grid would wait on for a minute)
    base_text = json.dumps(base)
    for combo in itertools.product(*(values for _, values in axes)):
        config = json.loads(base_text)
        grid_values = {}
        for (axis, _), value in zip(axes, combo):
            _apply(config, axis, value)
            grid_values[axis] = value
        config["data"] = keyed(DATA, dataset_keys(config["data"]))
        config["train"] = keyed(TRAIN, config["train"])
        matched = add_matched_variants(config, doc.get("baseline"))
        config["variants"] = [keyed(get_model_spec(v["model"]).schema, v) for v in config["variants"]]
        jobs.append(Job(job_key(config), config, grid_values, matched))
    return jobs


def _apply(config: dict, axis: str, value: Any) -> None:
    if axis == "seed":
        config["seed"] = value
        return
    section, _, rest = axis.partition(".")
    if section == "variants":
        name, _, param = rest.partition(".")
        for variant in config["variants"]:
            if name in ("*", variant["name"]) and param in variant:
                variant[param] = value
        return
    node = config[section]
    parts = rest.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def check_jobs(doc: dict) -> list[Issue]:
    """Checks that need resolved grid points: limits across a model's parameters, models that read
    images on a dataset that has none, models too large to train (model_size.py), and init_from
    weights that do not fit their variant."""
    issues: list[Issue] = []
    seen: set[str] = set()
    # a variant's checks read its parameters and the data: grid points that differ only in the seed
    # or train settings share them, and most grids are mostly seeds
    checked: dict[tuple[str, str], list[str]] = {}
    for job in expand(doc):
        point = ", ".join(f"{k}={v}" for k, v in job.grid_values.items() if k != "seed")
        at = f" (at grid point {point})" if point else ""
        for name, problem in compatibility_problems(job.config):
            if f"{name}: {problem}{at}" not in seen:
                seen.add(f"{name}: {problem}{at}")
                issues.append(Issue(f"variants.{name}.init_from", problem + at))
        for key, problem in distributed_problems(job.config):
            if f"{key}: {problem}{at}" not in seen:
                seen.add(f"{key}: {problem}{at}")
                issues.append(Issue(key, problem + at))
        model_point = json.dumps({k: v for k, v in job.grid_values.items() if k.startswith(("variants.", "data."))},
                                 sort_keys=True)
        for variant in job.config["variants"]:
            case = (variant["name"], model_point)
            if case not in checked:
                checked[case] = _variant_problems(variant["model"], model_params(variant), job.config["data"])
            for problem in checked[case]:
                message = f"variants.{variant['name']}: {problem}{at}"
                if message not in seen:
                    seen.add(message)
                    issues.append(Issue(f"variants.{variant['name']}", f"{problem}{at}"))
    return issues


def _variant_problems(model: str, params: dict, data: dict) -> list[str]:
    spec, dataset = get_model_spec(model), get_dataset_spec(data["name"])
    problems = spec.check(params)
    if not problems and not dataset.images and spec.needs_images(params):
        problems = [f"model {model!r} reads images, but dataset {dataset.name!r} does not give images; use mlp, or "
                    "backbone: none"]
    if not problems and dataset.tokens != spec.needs_tokens:
        problems = [f"model {model!r} reads windows of bytes, but dataset {dataset.name!r} gives vectors; use it "
                    f"with data.name: text" if spec.needs_tokens else
                    f"dataset {dataset.name!r} gives windows of bytes for language modelling, which model {model!r} "
                    f"cannot read; use transformer or moe_transformer"]
    if not problems:
        too_large = model_size_problem(model, params, data)
        problems = [too_large] if too_large else []
    return problems


def check_data_files(jobs: list[Job]) -> list[Issue]:
    """Dataset files the jobs read (once per distinct data section). A launch checks the jobs it is
    about to run, before it writes anything; a relaunch with nothing to run reads no dataset."""
    issues: list[Issue] = []
    checked: set[str] = set()
    for job in jobs:
        data_text = json.dumps(job.config["data"], sort_keys=True)
        if data_text not in checked:
            checked.add(data_text)
            settings = DataSettings(**job.config["data"])
            issues += [Issue("data", problem) for problem in get_dataset_spec(settings.name).check(settings)]
    return issues
