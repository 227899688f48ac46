"""Cluster resources for `submit`: schema defaults < site profile (slurm/profile.yaml) < the
experiment's `slurm:` section < command-line `slurm.<key>=value` overrides.

Key names follow submitit's (timeout_min, mem_gb, gpus_per_node, cpus_per_task, array_parallelism,
slurm_signal_delay_s, ...); `sbatch_parameters` turns them into submitit's SlurmExecutor parameters.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from moelab.config import ConfigError
from moelab.config.experiment import read_yaml
from moelab.schema import check_section
from moelab.config.sections import SLURM

DEFAULT_PROFILE = Path("slurm/profile.yaml")
PROFILE_ENV = "MOELAB_SLURM_PROFILE"


def profile_path(given: Path | None = None) -> Path | None:
    path = given or (Path(os.environ[PROFILE_ENV]) if os.environ.get(PROFILE_ENV) else DEFAULT_PROFILE)
    try:
        missing = not path.is_file()
    except OSError:  # a path the file system refuses: reading it says so
        missing = False
    if given is None and missing:
        return None  # no site profile: schema defaults
    return path


def load_resources(experiment_slurm: dict, profile: Path | None = None) -> dict:
    """The resolved resources; a bad profile raises ConfigError naming the profile file."""
    path = profile_path(profile)
    site: dict = {}
    if path is not None:
        raw = read_yaml(path, missing_hint="a site profile is a YAML file like slurm/profile.yaml")
        site, issues = check_section(SLURM, raw, "")
        if issues:
            raise ConfigError(path, issues)
        site = {k: v for k, v in site.items() if k in raw}
    defaults, _ = check_section(SLURM, {}, "")
    return {**defaults, **site, **experiment_slurm}


def sbatch_parameters(resources: dict, job_name: str) -> dict:
    """submitit SlurmExecutor.update_parameters() arguments for these resources."""
    mem = resources["mem_gb"]
    params = {
        "job_name": job_name,
        "time": resources["timeout_min"],
        # rounded up: --mem=0 would ask for all the memory of a node
        "mem": f"{int(mem)}GB" if mem == int(mem) else f"{math.ceil(mem * 1024)}MB",
        "cpus_per_task": resources["cpus_per_task"],
        "array_parallelism": resources["array_parallelism"],
        "signal_delay_s": resources["slurm_signal_delay_s"],
        "setup": list(resources["setup"]),
        "additional_parameters": dict(resources["additional_parameters"]),
    }
    if resources["gpus_per_node"]:
        params["gpus_per_node"] = resources["gpus_per_node"]
    for key in ("partition", "account", "qos", "constraint", "exclude"):
        if resources[key]:
            params[key] = resources[key]
    return params


def processes_of(job) -> int:
    """How many processes train a job of a plan (train.distributed.processes; 1 when left out)."""
    return job.config["train"].get("distributed", {}).get("processes", 1)


def distributed_parameters(params: dict, resources: dict, processes: int) -> dict:
    """submitit parameters of one distributed job: `processes` tasks over `nodes` nodes, one GPU per task on
    GPU partitions (tasks, not GPUs per node, decide how many processes start), no array."""
    nodes = resources["nodes"]
    distributed = {k: v for k, v in params.items() if k not in ("array_parallelism", "gpus_per_node")}
    distributed.update(nodes=nodes, ntasks_per_node=processes // nodes)
    if resources["gpus_per_node"]:
        distributed["gpus_per_task"] = 1
    return distributed
