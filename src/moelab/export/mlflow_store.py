"""Export to MLflow: a local SQLite store (`<to>/mlflow.db`, artifacts in `<to>/artifacts/`).

The MLflow experiment has the experiment's name; in it a parent run stands for the experiment (the
report's plots are its artifacts) and a child run for each finished job x variant: its parameters,
per-epoch metrics (step = epoch), the numbers of results.json at the last epoch, and results.json
(with the live curves, when drawn) as artifacts. The tags `moelab.job` and `moelab.variant` are
the run's identity: a job x variant already in the store is not exported again.

MLflow's client writes a run in several transactions, each metric an ORM object: about 75 ms a run
and 0.2 ms a metric value here, an hour for a thousand default jobs. The child runs are therefore
written in bulk, RUNS_PER_TRANSACTION at a time, into the store's own tables through MLflow's own
table models (as its create_run and log_batch fill them), each transaction whole or absent: an
interrupted export leaves finished runs only. The tests read the store back with MLflow's client.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

from moelab.export.common import MissingExtra, epoch_metrics, final_metrics, run_name
from moelab.results.finished import FinishedVariant, FinishedVariants, report_plots
from moelab.results.tree import ExperimentTree

DATABASE = "mlflow.db"
ARTIFACTS = "artifacts"
ROLE, JOB, VARIANT = "moelab.role", "moelab.job", "moelab.variant"
# MLflow's limits: names of these characters only, values this long
_NAME_UNSAFE = re.compile(r"[^/\w.\- ]")
PARAM_VALUE_MAX = 6000
RUNS_PER_TRANSACTION = 200


@dataclass
class Exported:
    added: int
    already: int  # job x variants found in the store, not exported again
    store: str  # the tracking URI


def tracking_uri(to: Path) -> str:
    return f"sqlite:///{(to / DATABASE).resolve()}"


def export(tree: ExperimentTree, to: Path, problems: list[str]) -> Exported:
    try:
        from mlflow.entities.view_type import ViewType
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MissingExtra("mlflow", "mlflow", "mlflow") from None
    for noisy in ("mlflow", "alembic"):  # creating the store logs each schema migration
        logging.getLogger(noisy).setLevel(logging.WARNING)
    to.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri(to))
    experiment_id = _experiment_id(client, tree.name, to)
    store = client._tracking_client.store  # the SQLAlchemy store of the sqlite:/// URI
    done = _exported(store, experiment_id)
    parent = _parent_run(client, experiment_id, tree.name, ViewType)
    artifact_root = client.get_experiment(experiment_id).artifact_location
    variants = FinishedVariants(tree, skip=lambda job, variant: (job, variant) in done)
    added = 0
    for chunk in _chunks(variants, RUNS_PER_TRANSACTION):
        rows = _Rows()
        for item in chunk:
            rows.add(item, experiment_id, parent, artifact_root, store)
        rows.write(store)
        added += len(chunk)
    for plot in report_plots(tree):
        client.log_artifact(parent, str(plot), "report")
    client.set_terminated(parent, "FINISHED")
    problems += variants.problems
    return Exported(added, len(done), tracking_uri(to))


def _experiment_id(client, name: str, to: Path) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=(to / ARTIFACTS / name).resolve().as_uri())
    if experiment.lifecycle_stage == "deleted":  # deleted in the UI: the export brings it back
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _exported(store, experiment_id: str) -> set[tuple[str, str]]:
    """(job, variant) of every active run exported before, from the tags table (the client's search
    would load every run's parameters and metrics: 45 s for 4,000 runs)."""
    from mlflow.store.tracking.dbmodels.models import SqlRun, SqlTag

    found: dict[str, dict] = {}
    with store.ManagedSessionMaker() as session:
        rows = (session.query(SqlTag.run_uuid, SqlTag.key, SqlTag.value)
                .join(SqlRun, SqlRun.run_uuid == SqlTag.run_uuid)
                .filter(SqlRun.experiment_id == experiment_id, SqlRun.lifecycle_stage == "active",
                        SqlTag.key.in_((ROLE, JOB, VARIANT))))
        for run, key, value in rows:
            found.setdefault(run, {})[key] = value
    return {(tags.get(JOB), tags.get(VARIANT)) for tags in found.values() if tags.get(ROLE) == "variant"}


def _parent_run(client, experiment_id: str, name: str, view_type) -> str:
    found = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE}` = 'experiment'",
                               run_view_type=view_type.ACTIVE_ONLY, max_results=1)
    if found:
        return found[0].info.run_id
    return client.create_run(experiment_id, run_name=name, tags={ROLE: "experiment"}).info.run_id


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


@dataclass
class _Rows:
    """The table rows of a batch of finished runs, as MLflow's create_run and log_batch write them."""

    runs: list[dict] = field(default_factory=list)
    tags: list[dict] = field(default_factory=list)
    params: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    latest: list[dict] = field(default_factory=list)

    def add(self, item: FinishedVariant, experiment_id: str, parent: str, artifact_root: str, store) -> None:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        run_id, now, name = uuid.uuid4().hex, int(time.time() * 1000), run_name(item)
        artifact_uri = f"{artifact_root.rstrip('/')}/{run_id}/{SqlAlchemyStore.ARTIFACTS_FOLDER_NAME}"
        # user "unknown" as MlflowClient.create_run records it without an mlflow.user tag
        self.runs.append({"run_uuid": run_id, "name": name, "artifact_uri": artifact_uri, "experiment_id": experiment_id,
                          "source_type": "UNKNOWN", "source_name": "", "entry_point_name": "", "user_id": "unknown",
                          "status": "FINISHED", "start_time": now, "end_time": now, "deleted_time": None,
                          "source_version": "", "lifecycle_stage": "active"})
        tags = {"mlflow.runName": name, "mlflow.parentRunId": parent, ROLE: "variant", JOB: item.job,
                VARIANT: item.variant, "moelab.experiment": item.experiment}
        self.tags += [{"run_uuid": run_id, "key": k, "value": v} for k, v in tags.items()]
        self.params += [{"run_uuid": run_id, "key": _name(k), "value": str(v)[:PARAM_VALUE_MAX]}
                        for k, v in item.parameters.items()]
        values = {}  # (key, step) -> value: a key logged twice at a step keeps the last, as MLflow's dedup does
        for line in item.epochs:
            values.update({(_name(k), int(line["epoch"])): v for k, v in epoch_metrics(line).items()})
        last = int(item.epochs[-1]["epoch"]) if item.epochs else 0
        values.update({(_name(k), last): v for k, v in final_metrics(item).items()})
        latest = {}
        for (key, step), value in values.items():
            is_nan, stored = store.sanitize_metric_value(float(value))
            row = {"run_uuid": run_id, "key": key, "value": stored, "timestamp": now, "step": step, "is_nan": is_nan}
            self.metrics.append(row)
            if key not in latest or step >= latest[key]["step"]:
                latest[key] = row
        self.latest += latest.values()
        repository = get_artifact_repository(artifact_uri)
        for file in item.files:
            repository.log_artifact(str(file))

    def write(self, store) -> None:
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag

        with store.ManagedSessionMaker(read_only=False) as session:  # one transaction: committed whole or not at all
            for model, rows in ((SqlRun, self.runs), (SqlTag, self.tags), (SqlParam, self.params),
                                (SqlMetric, self.metrics), (SqlLatestMetric, self.latest)):
                if rows:  # the table's own insert, one executemany (the ORM's bulk path costs 10 us a row)
                    session.execute(model.__table__.insert(), rows)


@functools.lru_cache(maxsize=4096)  # a few dozen keys, each met once per epoch of every run
def _name(key: str) -> str:
    return _NAME_UNSAFE.sub("_", key)
