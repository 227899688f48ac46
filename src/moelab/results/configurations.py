"""Which runs of an experiment folder may be compared: one configuration per comparison.

Every launch with other overrides (`train.epochs=12`) adds jobs to the same folder. Runs of different
configurations must not be pooled, and a seed run under two of them is not two seeds. A job's
configuration is what it computes (the `config` of its config.json, which holds only what changes
results: its hash is the job key) minus the seed, minus the values of the grid axes the launch
varied on purpose (including a search's parameters), and minus the dense models that
`baseline.match` sizes from the grid point (they follow from the rest). All jobs of one launch
therefore share one configuration; the report groups runs by it, covers the last launch's by
default and lists the others with what differs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

import pandas as pd

from moelab.results.errors import DamagedRecord
from moelab.results.records import JobSpec, last_launch
from moelab.results.tree import ExperimentTree

CONFIGURATION_ID_LENGTH = 8
COLUMN = "configuration"  # the column of load_runs that holds a run's configuration id
# the runs columns a configuration is described by (results/load.py flattens config.json into them)
DESCRIBED_PREFIXES = ("data.", "train.", "params.")


def configuration_values(spec: JobSpec) -> dict[str, Any]:
    """A job's configuration from its config.json, flattened to dotted keys (variants by name)."""
    config = spec.config
    grid_axes = [axis for axis in spec.grid_values if axis != "seed"]
    derived = {dense for kinds in spec.matched.values() for dense in kinds.values()}
    values: dict[str, Any] = {}
    for section, content in config.items():
        if section == "seed":
            continue
        if section == "variants":
            for variant in content:
                if variant["name"] in derived:
                    continue
                for key, value in variant.items():
                    if key == "init_from" and isinstance(value, dict):
                        value = value.get("sha256", value)  # the weights count, not where they were read from
                    if key != "name":
                        values[f"variants.{variant['name']}.{key}"] = value
        elif isinstance(content, dict):
            values.update(flatten(content, f"{section}."))
        else:
            values[section] = content
    return {key: value for key, value in values.items() if not any(_on_axis(key, axis) for axis in grid_axes)}


def configuration_id(spec: JobSpec) -> str:
    """A short id, stable across machines and runs, of a job's configuration."""
    canonical = json.dumps(configuration_values(spec), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:CONFIGURATION_ID_LENGTH]


def last_launch_configurations(tree: ExperimentTree, runs: pd.DataFrame) -> list[str]:
    """The configurations of the jobs of the experiment's last launch (its launches.jsonl record);
    for a tree whose record names no job found here, the configuration of the job written last."""
    if runs.empty or COLUMN not in runs:
        return []
    try:
        last = last_launch(tree)
    except DamagedRecord:  # the loader has named the file; the newest job stands in for the last launch
        last = None
    keys = set(last.job_keys) if last else set()
    of_last = runs[runs["job"].isin(keys)]
    if not of_last.empty:
        return list(dict.fromkeys(of_last[COLUMN]))
    newest = max(runs["job"].unique(), key=lambda key: _written_at(tree, key))
    return [runs.loc[runs["job"] == newest, COLUMN].iloc[0]]


def describe_configurations(runs: pd.DataFrame, reference: Iterable[str], grid_axes: Iterable[str] = ()) -> pd.DataFrame:
    """One row per configuration not in `reference`: its id, what differs from the reference
    configurations (`train.epochs=12 (vs 5)`), its runs and its distinct seeds. Grid axes and the
    dense models baseline.match sizes vary within a configuration and are left out."""
    reference = list(reference)
    if runs.empty or COLUMN not in runs:
        return pd.DataFrame(columns=[COLUMN, "differs", "runs", "seeds"])
    axes = [a for a in grid_axes if a != "seed"]
    # a variant's parameter is a params.<name> column of the runs, whichever variant the axis names
    axis_columns = {f"params.{a.rsplit('.', 1)[-1]}" if a.startswith("variants.") else a for a in axes}
    described = [c for c in runs.columns if c.startswith(DESCRIBED_PREFIXES) and c not in axis_columns]
    derived = {name for kind in ("matched_active", "matched_total") if kind in runs for name in runs[kind].dropna()}
    runs = runs[~runs["variant"].isin(derived)]
    ours = runs[runs[COLUMN].isin(reference)]
    rows = []
    for configuration, group in runs[~runs[COLUMN].isin(reference)].groupby(COLUMN, sort=False):
        differences = []
        for column in described:
            here, there = _values(group[column]), _values(ours[column])
            if here != there:
                differences.append(f"{column}={_shown(here)} (vs {_shown(there)})")
        variants_here, variants_there = set(group["variant"]), set(ours["variant"])
        if variants_here != variants_there:
            differences.append(f"variants {', '.join(sorted(variants_here))} (vs {', '.join(sorted(variants_there))})")
        rows.append({COLUMN: configuration, "differs": "; ".join(differences) or "settings not shown in the tables",
                     "runs": len(group), "seeds": group["seed"].nunique()})
    return pd.DataFrame(rows, columns=[COLUMN, "differs", "runs", "seeds"])


def _on_axis(key: str, axis: str) -> bool:
    """Whether a flattened key is set by a grid axis (`variants.*.num_experts` sets every variant's)."""
    if axis.startswith("variants.*."):
        return key.startswith("variants.") and key.rsplit(".", 1)[-1] == axis[len("variants.*."):]
    return key == axis


def flatten(section: dict, prefix: str) -> dict:
    """A nested section as dotted keys: {"a": {"b": 1}} -> {"<prefix>a.b": 1}."""
    flat = {}
    for key, value in section.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _values(column: pd.Series) -> list:
    return sorted({str(v) for v in column.dropna()})


def _shown(values: list) -> str:
    return "/".join(values) if values else "unset"


def _written_at(tree: ExperimentTree, key: str) -> int:
    try:
        return tree.job(key).config_file.stat().st_mtime_ns
    except OSError:
        return 0
