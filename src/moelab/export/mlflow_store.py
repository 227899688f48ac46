"""Export to MLflow: a local SQLite store (`<to>/mlflow.db`, artifacts in `<to>/artifacts/`).

The MLflow experiment has the experiment's name; in it a parent run stands for the experiment (the
report's plots are its artifacts) and a child run for each finished job x variant: its parameters,
per-epoch metrics (step = epoch), the numbers of results.json at the last epoch, and results.json
(with the live curves, when drawn) as artifacts. The tags `moelab.job` and `moelab.variant` are
the run's identity: a run already there and finished is not exported again; one an interrupted
export left unfinished is deleted and exported anew.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from moelab.export.common import MissingExtra, epoch_metrics, final_metrics, run_name
from moelab.results.finished import FinishedVariant, FinishedVariants, report_plots
from moelab.results.tree import ExperimentTree

DATABASE = "mlflow.db"
ARTIFACTS = "artifacts"
ROLE, JOB, VARIANT = "moelab.role", "moelab.job", "moelab.variant"
# MLflow's limits: names of these characters only, values this long, entities per log_batch call
_NAME_UNSAFE = re.compile(r"[^/\w.\- ]")
PARAM_VALUE_MAX = 6000
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000
SEARCH_PAGE = 50000


@dataclass
class Exported:
    added: int
    already: int  # job x variants found in the store, not exported again
    store: str  # the tracking URI


def tracking_uri(to: Path) -> str:
    return f"sqlite:///{(to / DATABASE).resolve()}"


def export(tree: ExperimentTree, to: Path, problems: list[str]) -> Exported:
    try:
        from mlflow.entities import Metric, Param, RunStatus
        from mlflow.entities.view_type import ViewType
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MissingExtra("mlflow", "mlflow", "mlflow") from None
    for noisy in ("mlflow", "alembic"):  # creating the store logs each schema migration
        logging.getLogger(noisy).setLevel(logging.WARNING)
    to.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri(to))
    experiment_id = _experiment_id(client, tree.name, to)
    runs = _variant_runs(client, experiment_id, ViewType)
    finished = RunStatus.to_string(RunStatus.FINISHED)
    done = set()
    for key, run in runs.items():
        if run.info.status == finished:
            done.add(key)
        else:  # an export interrupted half-way through this run: written again below
            client.delete_run(run.info.run_id)
    parent = _parent_run(client, experiment_id, tree.name, ViewType)
    variants = FinishedVariants(tree, skip=lambda job, variant: (job, variant) in done)
    added = 0
    for item in variants:
        _export_variant(client, experiment_id, parent, item, Metric, Param)
        added += 1
    for plot in report_plots(tree):
        client.log_artifact(parent, str(plot), "report")
    client.set_terminated(parent, finished)
    problems += variants.problems
    return Exported(added, len(done), tracking_uri(to))


def _experiment_id(client, name: str, to: Path) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=(to / ARTIFACTS / name).resolve().as_uri())
    if experiment.lifecycle_stage == "deleted":  # deleted in the UI: the export brings it back
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _variant_runs(client, experiment_id: str, view_type) -> dict:
    """(job, variant) -> the run exported for it."""
    runs, token = {}, None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE}` = 'variant'",
                                  run_view_type=view_type.ACTIVE_ONLY, max_results=SEARCH_PAGE, page_token=token)
        for run in page:
            runs[(run.data.tags.get(JOB), run.data.tags.get(VARIANT))] = run
        token = page.token
        if not token:
            return runs


def _parent_run(client, experiment_id: str, name: str, view_type) -> str:
    found = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE}` = 'experiment'",
                               run_view_type=view_type.ACTIVE_ONLY, max_results=1)
    if found:
        return found[0].info.run_id
    return client.create_run(experiment_id, run_name=name, tags={ROLE: "experiment"}).info.run_id


def _export_variant(client, experiment_id: str, parent: str, item: FinishedVariant, Metric, Param) -> None:
    run = client.create_run(experiment_id, run_name=run_name(item), tags={
        "mlflow.parentRunId": parent, ROLE: "variant", JOB: item.job, VARIANT: item.variant,
        "moelab.experiment": item.experiment})
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param(_name(k), str(v)[:PARAM_VALUE_MAX]) for k, v in item.parameters.items()]
    metrics = [Metric(_name(k), float(v), now, int(line["epoch"]))
               for line in item.epochs for k, v in epoch_metrics(line).items()]
    last = int(item.epochs[-1]["epoch"]) if item.epochs else 0
    metrics += [Metric(_name(k), float(v), now, last) for k, v in final_metrics(item).items()]
    for start in range(0, len(params), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[start:start + PARAMS_PER_BATCH])
    for start in range(0, len(metrics), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + METRICS_PER_BATCH])
    for file in item.files:
        client.log_artifact(run_id, str(file))
    client.set_terminated(run_id, "FINISHED")  # last: an unfinished run is one to export again


def _name(key: str) -> str:
    return _NAME_UNSAFE.sub("_", key)
