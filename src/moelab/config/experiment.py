"""Read an experiment file, apply command-line overrides, check everything, report all problems.

Nothing here writes or starts anything: a launch calls `load_experiment` first and stops with
exit code 2 on `ConfigError`, before the experiments tree is touched. Files are read strictly and
within limits (yaml_input.py, limits.py); model profiles are included (includes.py).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moelab.config import grid as grid_module
from moelab.config.errors import ConfigError
from moelab.config.includes import ExpandedVariants, Origin, expand_includes
from moelab.config.limits import MAX_NESTING_DEPTH
from moelab.config.baseline import check_baseline
from moelab.config.init_from import attach_init_from, split_init_from
from moelab.config import search as search_module
from moelab.config.sections import DATA, TOP
from moelab.config.yaml_input import parse_yaml, read_yaml_file
from moelab.data import dataset_keys, dataset_names, get_dataset_spec
from moelab.data.settings import COMMON_KEYS
from moelab.models import get_model_spec, model_names
from moelab.results.tree import JOB_FILE_NAMES
from moelab.schema import PATH_SAFE, Issue, check_section, did_you_mean, shown, unknown_key_message

__all__ = ["ConfigError", "Experiment", "apply_overrides", "check_document", "load_experiment", "read_yaml"]


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
                "report": self.doc["report"], **({"matched": job.matched} if job.matched else {})}


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    path = Path(path)
    raw = read_yaml(path)
    # included variants are in place before overrides, so that variants.<name>.<key> reaches them
    variants = _expand_variants(raw, path)
    raw, issues, overridden = apply_overrides(raw, overrides)
    if "variants" in overridden:  # replaced on the command line; its includes are relative to the file too
        variants = _expand_variants(raw, path)
    issues = variants.issues + issues
    name_from_file = "name" not in raw
    raw.setdefault("name", path.stem)
    doc, found = check_document(raw, variants.origins)
    if variants.issues:  # variants left empty by includes that failed are not a problem of their own
        found = [i for i in found if i.path != "variants"]
    issues += found
    if doc.get("search") is None:
        doc.pop("search", None)  # an experiment without a search reads (and is written) as before
    elif not any(i.path.startswith(("search", "variants", "data")) for i in issues):
        doc["search"], found = search_module.check_search(raw["search"], doc)
        issues += found
    if not issues:
        issues += _name_origins(grid_module.check_jobs(doc), raw["variants"], variants.origins)
    if not issues and "search" in doc:
        issues += search_module.check_search_points(doc)
    if issues:
        if name_from_file:
            issues = [dataclasses.replace(i, message=f"{i.message} (the name is the file's name; set name: in the "
                                                     "file to choose another)") if i.path == "name" else i
                      for i in issues]
        raise ConfigError(path, issues, overridden)
    return Experiment(path, doc)


def read_yaml(path: Path, missing_hint: str = "experiment files live in experiments/configs/") -> dict:
    doc = read_yaml_file(path, missing_hint)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(path, [Issue("", "the top level must be a mapping of sections (name, data, train, variants, grid, ...)")])
    return doc


def _expand_variants(raw: dict, path: Path) -> ExpandedVariants:
    variants = expand_includes(raw.get("variants"), path.parent)
    if isinstance(raw.get("variants"), list):
        raw["variants"] = variants.items
    return variants


def _name_origins(issues: list[Issue], raw_variants: list, origins: list[Origin | None]) -> list[Issue]:
    """Name the included file of each problem about a (checked, so uniquely named) variant from one."""
    files = {item["name"]: origin.file for item, origin in zip(raw_variants, origins) if origin}
    named = []
    for issue in issues:
        # the longest name that the path starts with: names may hold dots
        matches = [n for n in files if issue.path == f"variants.{n}" or issue.path.startswith(f"variants.{n}.")]
        named.append(dataclasses.replace(issue, origin=files[max(matches, key=len)]) if matches else issue)
    return named


def apply_overrides(raw: dict, overrides) -> tuple[dict, list[Issue], dict[str, str]]:
    """Apply `key=value` overrides (value parsed as YAML, read as strictly as a file). `variants.<name>.<key>`
    addresses a variant by name; `grid.<axis>` sets a whole grid axis (axis names contain dots)."""
    raw = copy.deepcopy(raw)
    issues: list[Issue] = []
    overridden: dict[str, str] = {}
    for text in overrides:
        key, sep, value_text = text.partition("=")
        key = key.strip()
        if not sep or not key:
            issues.append(Issue("", f"command-line override {text!r} must look like key=value, e.g. train.lr=0.01"))
            continue
        overridden[key] = text
        if len(key.split(".")) > MAX_NESTING_DEPTH.value():
            issues.append(Issue(key, f"the key has more than {MAX_NESTING_DEPTH.value()} parts"))
            continue
        try:
            value = parse_yaml(value_text, f"the command-line value of {key}")
        except ConfigError as error:
            issues += [Issue(_sub_path(key, i.path), f"override value {value_text[:200]!r}: {i.message}")
                       for i in error.issues]
            continue
        problem = _set_path(raw, key, value)
        if problem:
            issues.append(Issue(key, problem))
    return raw, issues, overridden


def _sub_path(key: str, inner: str) -> str:
    return key if not inner else f"{key}{inner}" if inner.startswith("[") else f"{key}.{inner}"


def _set_path(doc: dict, key: str, value: Any) -> str | None:
    if key.startswith("grid."):
        if doc.get("grid") is None:  # `grid:` with nothing under it
            doc["grid"] = {}
        if not isinstance(doc["grid"], dict):
            return "grid is not a mapping in the file"
        doc["grid"][key[len("grid."):]] = value
        return None
    parts = key.split(".")
    node: Any = doc
    if parts[0] == "variants" and len(parts) >= 3:
        variants = doc.get("variants") or []
        if not isinstance(variants, list):
            return "variants is not a list in the file"
        names = [v.get("name") if isinstance(v, dict) else None for v in variants]
        if parts[1] not in names:
            known = [str(n) for n in names if n is not None]
            return f"no variant named {parts[1]!r}{did_you_mean(parts[1], known)}; variants: {', '.join(known)}"
        node, parts = variants[names.index(parts[1])], parts[2:]
    for part in parts[:-1]:
        if node.get(part) is None:  # a section written with nothing under it
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            return f"cannot set {key}: {part} is not a section"
        node = child
    node[parts[-1]] = value
    return None


def check_document(raw: dict, origins: list[Origin | None] | None = None) -> tuple[dict, list[Issue]]:
    doc, issues = check_section(TOP, raw, "")
    # only the cluster keys the experiment sets: the rest come from the site profile (slurm/profile.yaml)
    explicit = raw.get("slurm") if isinstance(raw.get("slurm"), dict) else {}
    doc["slurm"] = {k: v for k, v in doc["slurm"].items() if k in explicit}
    # variants and grid need more than a field check: their own functions below
    issues = [i for i in issues if i.path not in ("variants", "grid")]
    if not any(i.path == "data" or i.path.startswith("data.") for i in issues):
        found = check_data(raw.get("data") or {}, doc["data"])
        issues += found
        if not found:
            doc["data"] = dataset_keys(doc["data"])
    raw_variants, init_from = split_init_from(raw.get("variants"))
    doc["variants"], variant_issues = check_variants(raw_variants, origins or [])
    issues += variant_issues + attach_init_from(doc["variants"], init_from)
    if not variant_issues and not any(i.path.split(".")[0] == "baseline" for i in issues):
        issues += check_baseline(doc)
    raw_grid = raw.get("grid") or {}
    if not isinstance(raw_grid, dict):
        issues.append(Issue("grid", f"must be a mapping of keys to lists of values, e.g. seed: [0, 1, 2], got "
                                    f"{shown(raw_grid)}"))
        doc["grid"] = {}
    else:
        doc["grid"], grid_issues = grid_module.check_grid(raw_grid, doc, variants_ok=not variant_issues)
        issues += grid_issues
    return doc, issues


def check_data(raw_data: dict, data: dict) -> list[Issue]:
    if not isinstance(raw_data, dict):
        return []
    name = data.get("name")
    if name not in dataset_names():
        return [Issue("data.name", f"unknown dataset {shown(name)}{did_you_mean(name, dataset_names())}; "
                                   f"known datasets: {', '.join(dataset_names())}")]
    used = set(COMMON_KEYS) | set(get_dataset_spec(name).options)
    return [Issue(f"data.{key}", f"is not read by dataset {name!r}; remove it (it is read by: "
                                 f"{', '.join(users)})" if users else "is not a data option")
            for key in raw_data if key in DATA and key not in used
            for users in [[n for n in dataset_names() if key in get_dataset_spec(n).options]]]


def check_variants(raw_variants: Any, origins: list[Origin | None] = ()) -> tuple[list[dict], list[Issue]]:
    """The variants, each checked against its model's parameters. `origins[i]` says which included
    file item i came from (None: the experiment file), for the messages."""
    if raw_variants is None:
        return [], [Issue("variants", "is required: a list of {name, model, <model parameters>}")]
    if not isinstance(raw_variants, list) or not raw_variants:
        return [], [Issue("variants", f"must be a non-empty list of {{name, model, <model parameters>}}, got "
                                      f"{shown(raw_variants)}")]
    variants, issues = [], []
    seen: dict[str, str] = {}  # name -> where it was first written
    for i, item in enumerate(raw_variants):
        origin = origins[i] if i < len(origins) else None
        file = origin.file if origin else ""
        where = f"variants[{origin.index if origin else i}]"
        if not isinstance(item, dict):
            issues.append(Issue(where, f"must be a mapping with name and model, got {shown(item)}", file))
            continue
        name = item.get("name")
        if not isinstance(name, str) or not PATH_SAFE.fullmatch(name) or name in JOB_FILE_NAMES:
            issues.append(Issue(f"{where}.name", "is required: a name made of letters, digits, '.', '_' and '-' "
                                                 "(it becomes a folder), unique in the experiment, got "
                                                 f"{shown(name)}", file))
            continue
        where = f"variants.{name}"
        if name in seen:
            issues.append(Issue(where, f"duplicate variant name {name!r} (first written in {seen[name]}); every "
                                       "variant needs its own name", file))
            continue
        seen[name] = file or "the experiment file"
        model = item.get("model")
        if not isinstance(model, str) or model not in model_names():
            issues.append(Issue(f"{where}.model", f"unknown model {shown(model)}{did_you_mean(model, model_names())}; "
                                                  f"known models: {', '.join(model_names())}", file))
            continue
        schema = get_model_spec(model).schema
        params = {k: v for k, v in item.items() if k not in ("name", "model")}
        for key in params:
            if key not in schema:
                issues.append(Issue(f"{where}.{shown(key, quote=False)}", f"not a parameter of model {model!r}"
                                    f"{unknown_key_message(str(key), schema)[len('unknown key'):]}", file))
        resolved, found = check_section(schema, {k: v for k, v in params.items() if k in schema}, where)
        issues += [dataclasses.replace(issue, origin=file) for issue in found]
        variants.append({"name": name, "model": model, **resolved})
    return variants, issues
