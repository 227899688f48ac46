"""Where researchers already look: TensorBoard event files written while training, read back with
TensorBoard's own reader; exports to MLflow and W&B, read back with MLflow's client and from W&B's
offline files."""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import pytest
import yaml

from conftest import TINY, make_job
from moelab.config import load_experiment
from moelab.results.events import run_name, scalar_tag
from moelab.results.io import read_json, read_jsonl, write_json
from moelab.results.tree import ExperimentTree, VariantTree
from moelab.train.job import run_job
from moelab.train.trainer import StopRequested

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_events(variant: VariantTree):
    """Every event of the variant's one run folder, duplicates kept (no purge of repeated steps)."""
    runs = list(variant.tensorboard_dir.iterdir())
    assert len(runs) == 1, runs
    events = event_accumulator.EventAccumulator(str(runs[0]), size_guidance={"scalars": 0, "histograms": 0,
                                                                               "tensors": 0},
                                                purge_orphaned_data=False)
    events.Reload()
    return events


def assert_events_match_metrics(variant: VariantTree) -> None:
    """Every scalar of metrics.jsonl at its epoch, exactly once; the per-expert loads as histograms."""
    lines = read_jsonl(variant.metrics_file)
    events = read_events(variant)
    tags = set(events.Tags()["scalars"])
    keys = {k for line in lines for k, v in line.items() if k != "epoch" and isinstance(v, (int, float))}
    assert keys and {scalar_tag(k) for k in keys} <= tags
    for key in keys:
        written = [(e.step, e.value) for e in events.Scalars(scalar_tag(key))]
        expected = [(line["epoch"], line[key]) for line in lines if key in line]
        assert [step for step, _ in written] == [step for step, _ in expected], key
        assert [value for _, value in written] == pytest.approx([value for _, value in expected], rel=1e-6), key
    if "train_expert_load" in lines[0]:
        histograms = events.Histograms("train/expert_load")
        assert [h.step for h in histograms] == [line["epoch"] for line in lines]
        for histogram, line in zip(histograms, lines):
            assert list(histogram.histogram_value.bucket) == pytest.approx(line["train_expert_load"])


def test_every_scalar_of_metrics_jsonl_is_in_the_event_files(tmp_path):
    job = make_job(tmp_path / "experiment")
    assert run_job(job.path).state == "done"
    for name in ("mlp", "moe", "moe_topk", "moe_hard"):
        assert_events_match_metrics(job.variant(name))
    events = read_events(job.variant("moe_topk"))
    # the test results at the last epoch, the hyperparameters and a finished session for the HParams tab
    assert [e.step for e in events.Scalars("test/acc")] == [1]
    plugin = events.PluginTagToContent("hparams")
    assert set(plugin) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    from tensorboard.plugins.hparams import api_pb2, metadata

    start = metadata.parse_session_start_info_plugin_data(plugin["_hparams_/session_start_info"])
    assert start.hparams["variant"].string_value == "moe_topk"
    assert start.hparams["params.k"].number_value == 2
    assert start.hparams["train.epochs"].number_value == 2
    end = metadata.parse_session_end_info_plugin_data(plugin["_hparams_/session_end_info"])
    assert end.status == api_pb2.STATUS_SUCCESS


def test_a_resumed_variant_rewrites_its_events_without_repeating_a_step(tmp_path):
    job = make_job(tmp_path / "experiment", ["train.epochs=4", "variants=[{name: mlp, model: mlp, hidden: 8}]"])
    mlp = job.variant("mlp")
    with pytest.raises(StopRequested):  # killed after its second epoch (the checkpoint holds two)
        run_job(job.path, stop_requested=lambda: mlp.metrics_file.exists() and len(read_jsonl(mlp.metrics_file)) >= 2)
    assert [e.step for e in read_events(mlp).Scalars("val/acc")] == [0, 1]
    assert run_job(job.path).state == "done"
    assert [e.step for e in read_events(mlp).Scalars("val/acc")] == [0, 1, 2, 3]
    assert_events_match_metrics(mlp)


def test_report_tensorboard_false_writes_no_event_files(tmp_path):
    job = make_job(tmp_path / "experiment", ["report.tensorboard=false", "variants=[{name: mlp, model: mlp, hidden: 8}]"])
    assert run_job(job.path).state == "done"
    assert job.variant("mlp").metrics_file.is_file() and not job.variant("mlp").tensorboard_dir.exists()


def test_runs_are_named_by_variant_and_grid_values():
    assert run_name("moe", {"seed": 1, "variants.*.num_experts": 4}) == "moe,seed=1,num_experts=4"
    # two axes that end alike keep their full names; what a path cannot hold is replaced
    assert run_name("moe", {"train.lr": 0.1, "variants.*.lr": 0.2, "data.name": "a/b c"}) == \
        "moe,train.lr=0.1,variants._.lr=0.2,name=a_b_c"


# ---------------------------------------------------------------- export to MLflow and W&B

EXPORTED = {**TINY, "name": "exported", "train": {**TINY["train"], "epochs": 2},
            "variants": [{"name": "mlp", "model": "mlp", "hidden": 8}, {"name": "moe", "model": "moe", "hidden": 8}],
            "grid": {"seed": [0, 1, 2, 3]}}


@pytest.fixture(scope="module")
def four_finished_jobs(tmp_path_factory):
    """An experiment of four jobs, trained."""
    root = tmp_path_factory.mktemp("trained")
    path = root / "exported.yaml"
    path.write_text(yaml.safe_dump(EXPORTED))
    experiment = load_experiment(path)
    tree = ExperimentTree(root / "experiments" / "exported")
    for job in experiment.jobs():
        write_json(tree.job(job.key).config_file, experiment.job_spec(job))
        assert run_job(tree.job(job.key).path).state == "done"
    return tree


@pytest.fixture
def half_finished(four_finished_jobs, tmp_path):
    """The experiment with two of its jobs finished; `finish()` brings the other two as they finish."""
    jobs = four_finished_jobs.jobs()
    tree = ExperimentTree(tmp_path / "experiments" / "exported")
    tree.jobs_dir.mkdir(parents=True)

    def finish(which):
        for job in which:  # whole finished job folders, as the training leaves them
            shutil.copytree(job.path, tree.job(job.key).path)

    finish(jobs[:2])
    return tree, lambda: finish(jobs[2:])


def export(tracker: str, tree: ExperimentTree, to: Path, capsys) -> str:
    from moelab.export.cli import main

    assert main([tracker, str(tree.path), "--to", str(to)]) == 0
    return capsys.readouterr().out


def finished_variants(tree: ExperimentTree) -> dict:
    """(job key, variant) -> (results.json, metrics.jsonl) of every finished variant, read as the trainer wrote them."""
    found = {}
    for job in tree.jobs():
        for name in ("mlp", "moe"):
            variant = job.variant(name)
            if variant.is_done():
                found[(job.key, name)] = (read_json(variant.results_file), read_jsonl(variant.metrics_file))
    return found


@pytest.mark.slow  # MLflow creates its SQLite store (schema migrations) and exports three times
def test_mlflow_export_holds_every_finished_variant_once(half_finished, tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from moelab.export import mlflow_store

    tree, finish = half_finished
    store = tmp_path / "store"
    monkeypatch.setattr(mlflow_store, "RUNS_PER_TRANSACTION", 1)
    writes = []
    write = mlflow_store._Rows.write

    def dies_on_second(rows, *args):
        writes.append(rows)
        if len(writes) == 2:
            raise KeyboardInterrupt  # killed half way: the second run's transaction never commits
        write(rows, *args)

    monkeypatch.setattr(mlflow_store._Rows, "write", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        export("mlflow", tree, store, capsys)
    monkeypatch.setattr(mlflow_store._Rows, "write", write)
    # the run committed is kept, the others are exported
    assert "exported 3 run(s) of exported to mlflow" in export("mlflow", tree, store, capsys)
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("exported")

    def runs():
        return client.search_runs([experiment.experiment_id], max_results=1000)

    def check() -> None:
        all_runs = runs()
        parents = [r for r in all_runs if r.data.tags.get("moelab.role") == "experiment"]
        children = {(r.data.tags["moelab.job"], r.data.tags["moelab.variant"]): r for r in all_runs if r not in parents}
        expected = finished_variants(tree)
        assert len(parents) == 1 and set(children) == set(expected) and len(all_runs) == 1 + len(expected)
        for (key, name), (results, lines) in expected.items():
            run = children[(key, name)]
            assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
            spec = read_json(tree.job(key).config_file)
            assert run.data.params["variant"] == name and run.data.params["seed"] == str(spec["config"]["seed"])
            assert run.data.params["train.epochs"] == "2" and run.data.params["params.hidden"] == "8"
            assert run.data.metrics["test_acc"] == pytest.approx(results["test_acc"])
            assert run.data.metrics["best_val_acc"] == pytest.approx(results["best_val_acc"])
            history = client.get_metric_history(run.info.run_id, "val_loss")
            assert [(m.step, m.value) for m in history] == [(l["epoch"], pytest.approx(l["val_loss"])) for l in lines]
            assert "results.json" in [a.path for a in client.list_artifacts(run.info.run_id)]

    check()
    assert len(runs()) == 1 + 2 * 2
    assert "exported 0 run(s)" in export("mlflow", tree, store, capsys)  # nothing new: nothing added
    assert len(runs()) == 1 + 2 * 2
    finish()
    assert "exported 4 run(s)" in export("mlflow", tree, store, capsys)  # two more jobs of two variants each
    check()
    assert len(runs()) == 1 + 4 * 2


def wandb_records(path: Path):
    """The records of a W&B offline run file: a LevelDB-style log of 32 KiB blocks after a 7-byte header,
    each chunk a 7-byte header (crc, length, type: 1 whole, 2 first, 3 middle, 4 last) and its bytes."""
    from wandb.proto import wandb_internal_pb2

    data, position, chunk = path.read_bytes(), 7, b""
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def read_wandb_run(folder: Path) -> dict:
    def key(item):
        return item.key or "/".join(item.nested_key)

    run = {"history": {}, "summary": {}}
    for record in wandb_records(next(folder.glob("*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, group=record.run.run_group, project=record.run.project,
                       config={key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "history":
            items = {key(i): json.loads(i.value_json) for i in record.history.item}
            run["history"][items["_step"]] = items
        elif kind == "summary":
            run["summary"].update({key(i): json.loads(i.value_json) for i in record.summary.update})
    return run


@pytest.mark.slow  # trains the four jobs the exports read (shared with the MLflow test)
def test_wandb_offline_export_is_read_back_from_its_files(half_finished, tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    tree, finish = half_finished
    to = tmp_path / "wandb-out"
    export("wandb", tree, to, capsys)

    def runs():
        return {run["config"]["variant"] + "/" + run["id"]: run
                for run in map(read_wandb_run, sorted((to / "wandb").glob("offline-run-*")))}

    expected = finished_variants(tree)
    exported = runs()
    assert len(exported) == len(expected) == 4
    for run in exported.values():
        assert run["project"] == "exported" and run["group"] == run["config"]["variant"]
        (job,) = [j for (j, name) in expected if name == run["group"]
                  and read_json(tree.job(j).config_file)["config"]["seed"] == run["config"]["seed"]]
        results, lines = expected[(job, run["group"])]
        assert run["config"]["train"]["epochs"] == 2
        assert sorted(run["history"]) == [line["epoch"] for line in lines]
        for line in lines:
            assert run["history"][line["epoch"]]["val_loss"] == pytest.approx(line["val_loss"])
        assert run["summary"]["test_acc"] == pytest.approx(results["test_acc"])
    assert "exported 0 run(s)" in export("wandb", tree, to, capsys)
    assert len(runs()) == 4
    finish()
    assert "exported 4 run(s)" in export("wandb", tree, to, capsys)
    assert len(runs()) == 8


@pytest.mark.parametrize("tracker, package", [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_export_without_the_extra_names_the_pip_command(tmp_path, capsys, monkeypatch, tracker, package):
    from moelab.export.cli import main

    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")] + [package]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    tree = ExperimentTree(tmp_path / "experiments" / "exported")
    tree.jobs_dir.mkdir(parents=True)
    assert main([tracker, str(tree.path), "--to", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"pip install 'moelab[{tracker}]'" in error and "Traceback" not in error


def test_export_of_a_folder_without_jobs_exits_2(tmp_path, capsys):
    from moelab.export.cli import main

    assert main(["mlflow", str(tmp_path), "--to", str(tmp_path / "out")]) == 2
    assert "not an experiment folder" in capsys.readouterr().err and not (tmp_path / "out").exists()
