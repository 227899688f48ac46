"""A variant's `init_from`: start its training from the weights of another run instead of at random.

    variants:
      - {name: moe, model: moe_topk, init_from: experiments/default/jobs/<key>/moe}

The value is a variant folder of an experiments tree (its weights/best.pt is used) or a .pt file in a
variant's weights/ folder (best.pt; or last.pt, the weights after its last epoch), relative to the
folder the launch runs in (the repository root with run/launch_experiment.sh) or absolute. It is
resolved to {"path": the .pt file, "sha256": the hash of its content}. A job's key hashes the weights,
not their path (grid.job_key): the same weights give the same job wherever the tree lies, and a
source trained again gives a new job instead of results that silently belong to other weights.

Validation, before anything runs: the path exists and lies in a variant folder whose job's
config.json names it; at every grid point, the weights come from the same model with the same
architecture (models/params.py) on data of the same dimensions.
"""

from __future__ import annotations

import json
from pathlib import Path

from moelab.data import dataset_dimensions
from moelab.models import get_model_spec, model_params
from moelab.results.io import file_sha256, read_json
from moelab.results.tree import JobTree, VariantTree
from moelab.schema import Issue


def split_init_from(raw_variants) -> tuple[object, dict[str, object]]:
    """The variants without their init_from keys (checked as model parameters otherwise), and each
    init_from by variant name."""
    if not isinstance(raw_variants, list):
        return raw_variants, {}
    found = {}
    for item in raw_variants:
        if isinstance(item, dict) and "init_from" in item and isinstance(item.get("name"), str):
            found.setdefault(item["name"], item["init_from"])
    return [{k: v for k, v in item.items() if k != "init_from"} if isinstance(item, dict) else item
            for item in raw_variants], found


def attach_init_from(variants: list[dict], values: dict[str, object]) -> list[Issue]:
    """Resolve each init_from and add it to its (checked) variant."""
    issues = []
    for variant in variants:
        if variant["name"] in values:
            resolved, problem = resolve(values[variant["name"]])
            if problem:
                issues.append(Issue(f"variants.{variant['name']}.init_from", problem))
            else:
                variant["init_from"] = resolved
    return issues


def resolve(value) -> tuple[dict | None, str | None]:
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        value = value["path"]  # the resolved form, as experiment.yaml keeps it
    if not isinstance(value, str) or not value:
        return None, f"must be the path of a variant folder or of a .pt file in one, got {value!r}"
    path = Path(value).expanduser().absolute()
    if path.is_dir():
        weights = VariantTree(path).best_weights
        if not weights.is_file():
            return None, (f"{value} has no {weights.relative_to(path)}: not a finished variant's folder, or one trained "
                          "with train.save_weights: false (name its weights/last.pt instead)")
    elif path.is_file() and path.suffix == ".pt":
        weights = path
    elif path.exists():
        return None, f"{value} is neither a variant folder nor a .pt file"
    else:
        return None, f"{value} does not exist"
    weights = weights.resolve()
    if source_variant(weights) is None:
        return None, (f"{value} is not in a variant folder of an experiments tree (<job>/<variant>/weights/*.pt with "
                      "the job's config.json naming the variant): nothing says which model the weights are for")
    return {"path": str(weights), "sha256": file_sha256(weights)}, None


def source_variant(weights: Path) -> tuple[dict, dict] | None:
    """The variant (model and parameters) and the data section the weights were trained with."""
    variant_folder = weights.parent.parent
    try:
        config = read_json(JobTree(variant_folder.parent).config_file)["config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None
    variant = next((v for v in config.get("variants", []) if v.get("name") == variant_folder.name), None)
    return (variant, config["data"]) if variant is not None and weights.parent.name == "weights" else None


def compatibility_problems(config: dict) -> list[tuple[str, str]]:
    """(variant name, problem) for each init_from of a job whose weights do not fit the variant there."""
    problems = []
    for variant in config["variants"]:
        if "init_from" not in variant:
            continue
        weights = Path(variant["init_from"]["path"])
        found = source_variant(weights)
        if found is None:
            problems.append((variant["name"], f"{weights} is no longer in a variant folder of an experiments tree"))
            continue
        source, data = found
        if source["model"] != variant["model"]:
            problems.append((variant["name"], f"the weights in {weights} are of model {source['model']!r}, "
                                              f"this variant is {variant['model']!r}"))
            continue
        spec = get_model_spec(variant["model"])
        theirs, ours = spec.architecture(model_params(source)), spec.architecture(model_params(variant))
        differ = [k for k in ours if theirs.get(k) != ours[k]]
        if differ:
            problems.append((variant["name"], f"the weights in {weights} have " +
                             ", ".join(f"{k}={theirs.get(k)!r}" for k in differ) + ", this variant has " +
                             ", ".join(f"{k}={ours[k]!r}" for k in differ)))
        elif dataset_dimensions(data) != dataset_dimensions(config["data"]):
            (d_in, d_out), (here_in, here_out) = dataset_dimensions(data), dataset_dimensions(config["data"])
            problems.append((variant["name"], f"the weights in {weights} were trained on {data['name']} ({d_in} inputs, "
                                              f"{d_out} outputs); this job's data has {here_in} inputs, {here_out} outputs"))
    return problems
