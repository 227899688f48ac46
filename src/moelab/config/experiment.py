"""Read an experiment file, apply command-line overrides, check everything, report all problems.

Nothing here writes or starts anything: a launch calls `load_experiment` first and stops with
exit code 2 on `ConfigError`, before the experiments tree is touched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from moelab.config import grid as grid_module
from moelab.config import search as search_module
from moelab.config.sections import DATA, TOP
from moelab.data import dataset_keys, dataset_names, get_dataset_spec
from moelab.data.settings import COMMON_KEYS
from moelab.models import get_model_spec, model_names
from moelab.results.tree import JOB_FILE_NAMES
from moelab.schema import PATH_SAFE, Issue, check_section, did_you_mean, unknown_key_message

class ConfigError(Exception):
    """Every problem found in one experiment file (and its overrides), reported together."""

    def __init__(self, source: str | Path, issues: list[Issue], overrides: dict[str, str] | None = None):
        self.source, self.issues, self.overrides = str(source), issues, overrides or {}
        super().__init__(str(self))

    def __str__(self) -> str:
        count = f"{len(self.issues)} problem{'s' if len(self.issues) != 1 else ''}"
        lines = [f"error: {self.source}: {count}; nothing was run or written:"]
        for issue in self.issues:
            origin = next((f" (set on the command line: {text})" for path, text in self.overrides.items()
                           if issue.path == path or issue.path.startswith((path + ".", path + "["))), "")
            lines.append(f"  - {issue}{origin}")
        return "\n".join(lines)


@dataclass
class Experiment:
    source: Path
    doc: dict  # resolved: every section with its defaults filled in

    @property
    def name(self) -> str:
        return self.doc["name"]

    def jobs(self) -> list[grid_module.Job]:
        return grid_module.expand(self.doc)

    def job_spec(self, job: grid_module.Job) -> dict:
        """A job's config.json: what it computes (`config`, hashed into its key) and how it reports."""
        return {"key": job.key, "experiment": self.name, "grid_values": job.grid_values, "config": job.config,
                "report": self.doc["report"]}


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    path = Path(path)
    raw = read_yaml(path)
    raw, issues, overridden = apply_overrides(raw, overrides)
    raw.setdefault("name", path.stem)
    doc, found = check_document(raw)
    issues += found
    if doc.get("search") is None:
        doc.pop("search", None)  # an experiment without a search reads (and is written) as before
    elif not any(i.path.startswith(("search", "variants", "data")) for i in issues):
        doc["search"], found = search_module.check_search(raw["search"], doc)
        issues += found
    if not issues:
        issues += grid_module.check_jobs(doc)
    if not issues and "search" in doc:
        issues += search_module.check_search_points(doc)
    if issues:
        raise ConfigError(path, issues, overridden)
    return Experiment(path, doc)


def read_yaml(path: Path, missing_hint: str = "experiment files live in experiments/configs/") -> dict:
    if not path.is_file():
        raise ConfigError(path, [Issue("", f"file not found; {missing_hint}")])
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except yaml.YAMLError as error:
        raise ConfigError(path, [Issue("", f"not valid YAML: {error}")]) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(path, [Issue("", "the top level must be a mapping of sections (name, data, train, variants, grid, ...)")])
    return doc


def apply_overrides(raw: dict, overrides) -> tuple[dict, list[Issue], dict[str, str]]:
    """Apply `key=value` overrides (value parsed as YAML). `variants.<name>.<key>` addresses a
    variant by name; `grid.<axis>` sets a whole grid axis (axis names contain dots)."""
    raw = copy.deepcopy(raw)
    issues: list[Issue] = []
    overridden: dict[str, str] = {}
    for text in overrides:
        key, sep, value_text = text.partition("=")
        key = key.strip()
        if not sep or not key:
            issues.append(Issue("", f"command-line override {text!r} must look like key=value, e.g. train.lr=0.01"))
            continue
        try:
            value = yaml.safe_load(value_text)
        except yaml.YAMLError as error:
            issues.append(Issue(key, f"override value {value_text!r} is not valid YAML: {error}"))
            continue
        overridden[key] = text
        problem = _set_path(raw, key, value)
        if problem:
            issues.append(Issue(key, problem))
    return raw, issues, overridden


def _set_path(doc: dict, key: str, value: Any) -> str | None:
    if key.startswith("grid."):
        doc.setdefault("grid", {})
        if not isinstance(doc["grid"], dict):
            return "grid is not a mapping in the file"
        doc["grid"][key[len("grid."):]] = value
        return None
    parts = key.split(".")
    node: Any = doc
    if parts[0] == "variants" and len(parts) >= 3:
        variants = doc.get("variants") or []
        names = [v.get("name") for v in variants if isinstance(v, dict)]
        if parts[1] not in names:
            return f"no variant named {parts[1]!r}{did_you_mean(parts[1], names)}; variants: {', '.join(map(str, names))}"
        node, parts = variants[names.index(parts[1])], parts[2:]
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return f"cannot set {key}: {part} is not a section"
        node = child
    node[parts[-1]] = value
    return None


def check_document(raw: dict) -> tuple[dict, list[Issue]]:
    doc, issues = check_section(TOP, raw, "")
    # only the cluster keys the experiment sets: the rest come from the site profile (slurm/profile.yaml)
    explicit = raw.get("slurm") if isinstance(raw.get("slurm"), dict) else {}
    doc["slurm"] = {k: v for k, v in doc["slurm"].items() if k in explicit}
    # variants and grid need more than a field check: their own functions below
    issues = [i for i in issues if i.path not in ("variants", "grid")]
    if not any(i.path.startswith("data.") for i in issues):
        found = check_data(raw.get("data") or {}, doc["data"])
        issues += found
        if not found:
            doc["data"] = dataset_keys(doc["data"])
    doc["variants"], variant_issues = check_variants(raw.get("variants"))
    issues += variant_issues
    raw_grid = raw.get("grid") or {}
    if not isinstance(raw_grid, dict):
        issues.append(Issue("grid", "must be a mapping of keys to lists of values, e.g. seed: [0, 1, 2]"))
    else:
        doc["grid"], grid_issues = grid_module.check_grid(raw_grid, doc, variants_ok=not variant_issues)
        issues += grid_issues
    return doc, issues


def check_data(raw_data: dict, data: dict) -> list[Issue]:
    if not isinstance(raw_data, dict):
        return []
    name = data.get("name")
    if name not in dataset_names():
        return [Issue("data.name", f"unknown dataset {name!r}{did_you_mean(name, dataset_names())}; "
                                   f"known datasets: {', '.join(dataset_names())}")]
    used = set(COMMON_KEYS) | set(get_dataset_spec(name).options)
    return [Issue(f"data.{key}", f"is not read by dataset {name!r}; remove it (it is read by: "
                                 f"{', '.join(users)})" if users else "is not a data option")
            for key in raw_data if key in DATA and key not in used
            for users in [[n for n in dataset_names() if key in get_dataset_spec(n).options]]]


def check_variants(raw_variants: Any) -> tuple[list[dict], list[Issue]]:
    if raw_variants is None:
        return [], [Issue("variants", "is required: a list of {name, model, <model parameters>}")]
    if not isinstance(raw_variants, list) or not raw_variants:
        return [], [Issue("variants", "must be a non-empty list of {name, model, <model parameters>}")]
    variants, issues, seen = [], [], set()
    for i, item in enumerate(raw_variants):
        where = f"variants[{i}]"
        if not isinstance(item, dict):
            issues.append(Issue(where, f"must be a mapping with name and model, got {item!r}"))
            continue
        name = item.get("name")
        if not isinstance(name, str) or not PATH_SAFE.match(name) or name in JOB_FILE_NAMES:
            issues.append(Issue(f"{where}.name", "is required: a name made of letters, digits, '.', '_' and '-' "
                                                 "(it becomes a folder), unique in the experiment"))
            continue
        where = f"variants.{name}"
        if name in seen:
            issues.append(Issue(where, f"duplicate variant name {name!r}; every variant needs its own name"))
            continue
        seen.add(name)
        model = item.get("model")
        if model not in model_names():
            issues.append(Issue(f"{where}.model", f"unknown model {model!r}{did_you_mean(model, model_names())}; "
                                                  f"known models: {', '.join(model_names())}"))
            continue
        schema = get_model_spec(model).schema
        params = {k: v for k, v in item.items() if k not in ("name", "model")}
        for key in params:
            if key not in schema:
                issues.append(Issue(f"{where}.{key}", f"not a parameter of model {model!r}"
                                    f"{unknown_key_message(key, schema)[len('unknown key'):]}"))
        resolved, found = check_section(schema, {k: v for k, v in params.items() if k in schema}, where)
        issues += found
        variants.append({"name": name, "model": model, **resolved})
    return variants, issues
