"""Checks of `train.distributed` that need a job's resolved settings (a grid may vary them)."""

from __future__ import annotations

import json
from functools import lru_cache

from moelab.data import dataset_dimensions, get_dataset_spec
from moelab.models import model_params


def distributed_problems(config: dict) -> list[tuple[str, str]]:
    """(key, problem) for every setting of a job's configuration that several processes cannot train."""
    train = config["train"]
    settings = train.get("distributed", {})
    processes = settings.get("processes", 1)
    problems = []
    if processes > 1 and train["batch_size"] < processes:
        problems.append(("train.batch_size", f"must be at least train.distributed.processes={processes}: every "
                                             f"process takes its slice of each batch"))
    if settings.get("expert_parallel"):
        if processes < 2:
            problems.append(("train.distributed.expert_parallel",
                             "shares the experts out over the processes: set train.distributed.processes to 2 or "
                             "more, or expert_parallel to false"))
        else:
            for variant in config["variants"]:
                for problem in _expert_parallel_problems(json.dumps(variant, sort_keys=True),
                                                         json.dumps(config["data"], sort_keys=True), processes):
                    problems.append((f"variants.{variant['name']}",
                                     f"train.distributed.expert_parallel over {processes} processes: {problem}"))
    return problems


@lru_cache(maxsize=256)  # grids repeat the same variants over seeds and train settings
def _expert_parallel_problems(variant_text: str, data_text: str, processes: int) -> tuple[str, ...]:
    from moelab.models.expert_parallel import variant_problems  # torch: only when expert_parallel is asked for

    variant, data = json.loads(variant_text), json.loads(data_text)
    d_in, d_out = dataset_dimensions(data)
    return tuple(variant_problems(variant["model"], model_params(variant), d_in, d_out,
                                  get_dataset_spec(data["name"]).input_shape, processes))
