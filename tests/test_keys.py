"""Job keys are stable: a finished tree keeps its keys when a later version adds a setting or a model
parameter at its default, so an upgrade never retrains what is done."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from conftest import REPO, TINY
from moelab.config import load_experiment
from moelab.config.sections import TRAIN
from moelab.launch.plan import make_plan
from moelab.models import params as model_params_module
from moelab.models.registry import MODELS
from moelab.results.io import write_json
from moelab.results.load import load_runs
from moelab.results.status import JobState
from moelab.results.tree import ExperimentTree
from moelab.schema import Field, param

# the keys of the shipped default experiment, as computed before keys left out later settings: trees
# made by earlier versions must keep them
DEFAULT_KEYS = {
    (0, 4): "fb7f4d464e0d", (0, 8): "ca39c535acbc",
    (1, 4): "4447fc521a7f", (1, 8): "684ebc6ae00a",
    (2, 4): "5740b301b510", (2, 8): "2743116d5fbb",
}

SMALL = {**TINY, "train": {**TINY["train"], "epochs": 2}, "variants": TINY["variants"][:2], "grid": {}}


def test_the_default_experiment_keeps_its_keys():
    experiment = load_experiment(REPO / "experiments" / "configs" / "default.yaml")
    keys = {(job.grid_values["seed"], job.grid_values["variants.*.num_experts"]): job.key for job in experiment.jobs()}
    assert keys == DEFAULT_KEYS


@dataclasses.dataclass
class LaterMLPParams(model_params_module.MLPParams):
    residual: bool = param(False, "a parameter a later version adds", since="9.0")


@dataclasses.dataclass
class LaterMLPParamsUnmarked(model_params_module.MLPParams):
    residual: bool = param(False, "the same parameter, added without `since`")


def _add_mlp_parameter(monkeypatch, params: type) -> None:
    monkeypatch.setitem(MODELS, "mlp", dataclasses.replace(MODELS["mlp"], params=params))


def _add_train_setting(monkeypatch, since: str | None) -> None:
    monkeypatch.setitem(TRAIN, "label_smoothing", Field(float, default=0.0, min=0.0, since=since))


def _keys(path, overrides=()) -> list[str]:
    return [job.key for job in load_experiment(path, list(overrides)).jobs()]


@pytest.fixture(scope="module")
def finished_tree(tmp_path_factory):
    """A trained experiment, made by the code as it is."""
    from moelab.train.job import run_job

    root = tmp_path_factory.mktemp("experiments")
    path = root / "small.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "name": "small"}))
    experiment = load_experiment(path)
    tree = ExperimentTree(root / "small")
    for job in experiment.jobs():
        write_json(tree.job(job.key).config_file, experiment.job_spec(job))
        assert run_job(tree.job(job.key).path).state == "done"
    return path, tree


@pytest.mark.parametrize("add", ["model parameter", "train setting"])
def test_a_later_parameter_at_its_default_keeps_a_finished_tree(finished_tree, monkeypatch, add):
    path, tree = finished_tree
    before = _keys(path)
    runs_before = load_runs(tree.path)
    assert len(runs_before) == 2  # both variants were read
    if add == "model parameter":
        _add_mlp_parameter(monkeypatch, LaterMLPParams)
        changed = ["variants.mlp.residual=true"]
    else:
        _add_train_setting(monkeypatch, since="9.0")
        changed = ["train.label_smoothing=0.1"]
    assert _keys(path) == before
    plan = make_plan(load_experiment(path), tree.path.parent)
    assert plan.to_run == [] and set(plan.states.values()) == {JobState.DONE}
    assert load_runs(tree.path).equals(runs_before)
    # set to another value, the parameter reaches the job's config, and makes another job
    assert _keys(path, changed) != before


@pytest.mark.parametrize("add", ["model parameter", "train setting"])
def test_a_parameter_added_without_since_would_rekey(monkeypatch, tmp_path, add):
    """What `since` prevents (so the test above can fail)."""
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    before = _keys(path)
    if add == "model parameter":
        _add_mlp_parameter(monkeypatch, LaterMLPParamsUnmarked)
    else:
        _add_train_setting(monkeypatch, since=None)
    assert _keys(path) != before

