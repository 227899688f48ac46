"""Checks of `train.distributed` that need a job's resolved settings (a grid may vary them)."""

from __future__ import annotations


def distributed_problems(train: dict) -> list[tuple[str, str]]:
    """(key, problem) for every setting of a job's `train` section that several processes cannot train."""
    settings = train.get("distributed", {})
    processes = settings.get("processes", 1)
    problems = []
    if settings.get("expert_parallel"):
        problems.append(("train.distributed.expert_parallel",
                         "expert parallelism is not available in training yet (the layer is: moelab.models."
                         "expert_parallel, for your own code); set it to false"))
    if processes > 1 and train["batch_size"] < processes:
        problems.append(("train.batch_size", f"must be at least train.distributed.processes={processes}: every "
                                             f"process takes its slice of each batch"))
    return problems
