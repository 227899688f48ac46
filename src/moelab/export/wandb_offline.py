"""Export to W&B as offline runs (`<to>/wandb/offline-run-*`), uploaded later with `wandb sync`.

Nothing reaches the network. The W&B project has the experiment's name; each finished job x
variant is a run in the group of its variant, its config the job's configuration, its history the
per-epoch metrics (step = epoch), its summary the numbers of results.json. `<to>/exported.jsonl`
lists the runs written completely: they are not written again; a run folder of an id not listed
there is what an interrupted export left, removed before that run is written anew.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from moelab.export.common import MissingExtra, epoch_metrics, final_metrics, run_id, run_name
from moelab.results.finished import FinishedVariant, FinishedVariants
from moelab.results.io import append_jsonl, read_jsonl
from moelab.results.tree import ExperimentTree

LEDGER = "exported.jsonl"


@dataclass
class Exported:
    added: int
    already: int
    runs: str  # where the offline runs are


def export(tree: ExperimentTree, to: Path, problems: list[str]) -> Exported:
    os.environ["WANDB_MODE"] = "offline"  # also for what wandb starts: never the network
    try:
        import wandb
    except ImportError:
        raise MissingExtra("wandb", "wandb", "wandb") from None
    to.mkdir(parents=True, exist_ok=True)
    ledger = to / LEDGER
    done = {(row.get("experiment"), row.get("job"), row.get("variant"))
            for row in (read_jsonl(ledger) if ledger.is_file() else [])}
    variants = FinishedVariants(tree, skip=lambda job, variant: (tree.name, job, variant) in done)
    already = sum(1 for experiment, _, _ in done if experiment == tree.name)
    added = 0
    for item in variants:
        identity = run_id(item)
        for left in (to / "wandb").glob(f"offline-run-*-{identity}"):
            shutil.rmtree(left)
        _write_run(wandb, to, item, identity)
        append_jsonl(ledger, {"experiment": tree.name, "job": item.job, "variant": item.variant, "id": identity})
        added += 1
    problems += variants.problems
    return Exported(added, already, str(to / "wandb"))


def _write_run(wandb, to: Path, item: FinishedVariant, identity: str) -> None:
    settings = wandb.Settings(silent=True, console="off", save_code=False, x_disable_stats=True, x_disable_meta=True)
    run = wandb.init(mode="offline", dir=str(to), project=item.experiment, group=item.variant, job_type="train",
                     name=run_name(item), id=identity, config={**item.configuration, "variant": item.variant},
                     tags=[item.job], settings=settings)
    try:
        for line in item.epochs:
            run.log(epoch_metrics(line), step=int(line["epoch"]))
        run.summary.update(final_metrics(item))
    finally:
        run.finish()
