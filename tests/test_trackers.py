"""Where researchers already look: TensorBoard event files written while training, read back with
TensorBoard's own reader."""

from __future__ import annotations

import pytest

from conftest import make_job
from moelab.results.events import run_name, scalar_tag
from moelab.results.io import read_jsonl
from moelab.results.tree import VariantTree
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
    job = make_job(tmp_path / "experiment", ["train.epochs=4"])
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
