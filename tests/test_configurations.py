"""One configuration per comparison: runs launched with other settings into the same experiment
folder are told apart (results/configurations.py), the report covers the last launch's and lists
the others, and n counts seeds."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from moelab.report.cli import main
from moelab.results import ExperimentTree, load_runs
from moelab.results.configurations import configuration_id, configuration_values, describe_configurations
from moelab.results.records import JobSpec
from conftest import TINY, launch


def spec(seed=0, epochs=4, experts=2, grid=("seed", "variants.*.num_experts"), round_trip=False) -> JobSpec:
    """A job's spec as read from its config.json (round_trip: through JSON text, as written to disk)."""
    variants = [{"name": "mlp", "model": "mlp", "hidden": 32},
                {"name": "moe", "model": "moe", "hidden": 16, "num_experts": experts},
                {"name": "mlp_active_moe", "model": "mlp", "hidden": 10 + experts}]  # sized from the grid point
    values = {"seed": seed, "variants.*.num_experts": experts}
    doc = {"key": "k", "experiment": "e", "config": {"seed": seed, "data": {"name": "digits"},
                                                      "train": {"epochs": epochs, "lr": 0.003}, "variants": variants},
            "grid_values": {axis: values[axis] for axis in grid}, "matched": {"moe": {"active": "mlp_active_moe"}}}
    return JobSpec.from_dict(json.loads(json.dumps(doc)) if round_trip else doc, "k")


def test_seed_grid_values_and_matched_models_are_not_part_of_a_configuration():
    assert configuration_id(spec(seed=0)) == configuration_id(spec(seed=7))
    assert configuration_id(spec(experts=2)) == configuration_id(spec(experts=4))  # one launch, two grid points
    values = configuration_values(spec())
    assert values == {"data.name": "digits", "train.epochs": 4, "train.lr": 0.003, "variants.mlp.model": "mlp",
                      "variants.mlp.hidden": 32, "variants.moe.model": "moe", "variants.moe.hidden": 16}


def test_another_setting_or_a_fixed_value_where_a_grid_axis_was_is_another_configuration():
    assert configuration_id(spec(epochs=12)) != configuration_id(spec(epochs=4))
    # num_experts fixed at 2 instead of searched over: not the same experiment
    assert configuration_id(spec(grid=("seed",))) != configuration_id(spec())
    assert len(configuration_id(spec())) == 8 and configuration_id(spec()) == configuration_id(spec(round_trip=True))


def test_what_differs_is_named_with_the_runs_and_distinct_seeds():
    rows = []
    for configuration, epochs, seeds in (("a", 4, [0, 1, 2]), ("b", 12, [0, 1])):
        rows += [{"configuration": configuration, "job": f"{configuration}{s}", "seed": s, "variant": v, "train.epochs": epochs,
                  "train.lr": 0.003, "params.num_experts": s % 2 + 2} for s in seeds for v in ("mlp", "moe")]
    runs = pd.DataFrame(rows)
    others = describe_configurations(runs, ["a"], ["seed", "variants.*.num_experts"])
    assert others.to_dict("records") == [{"configuration": "b", "differs": "train.epochs=12 (vs 4)", "runs": 4, "seeds": 2}]
    assert describe_configurations(runs, ["a", "b"]).empty


@pytest.mark.slow
def test_the_readme_sequence_reports_one_configuration_and_lists_the_other(write_experiment, tmp_path):
    """run_here; a relaunch with another train.epochs; then other seeds with the first settings."""
    doc = {**TINY, "train": {**TINY["train"], "epochs": 1}, "variants": [TINY["variants"][0], TINY["variants"][2]],
           "grid": {"seed": [0, 1]}}
    experiment = write_experiment(doc)
    for overrides in ([], ["train.epochs=2"], ["grid.seed=[1,2]"]):
        done = launch(tmp_path, "run_here", str(experiment), *overrides, "--experiments-dir", "out")
        assert done.returncode == 0, done.stdout + done.stderr
    tree = ExperimentTree(tmp_path / "out" / "tiny")
    runs = load_runs(tree.path)
    assert runs["configuration"].nunique() == 2 and len(runs) == 2 * 5  # 5 jobs: seeds 0-2 at 1 epoch, 0-1 at 2
    first = runs.loc[runs["train.epochs"] == 1, "configuration"].iloc[0]

    summary = pd.read_csv(tree.summary.summary_csv).set_index("variant")
    assert summary.loc["moe_topk", "n"] == 3 and summary.loc["moe_topk", "diff_test_acc_n"] == 3  # seeds 0, 1, 2 once
    one_epoch = runs[runs["configuration"] == first]
    assert summary.loc["mlp", "test_acc_mean"] == pytest.approx(one_epoch.loc[one_epoch["variant"] == "mlp", "test_acc"].mean())
    page = tree.report_file.read_text()
    first_screen = page[:page.index("<h2>")]
    assert f"Configuration {first} only" in first_screen and "over 3 seed(s)" in first_screen
    assert "train.epochs=2 (vs 1) (4 run(s), 2 seed(s))" in first_screen  # the other one, with what differs
    assert "1 other configuration(s) in this folder" in tree.summary.markdown.read_text()

    (other,) = set(runs["configuration"]) - {first}
    assert main([str(tree.path), "--configuration", other]) == 0
    summary = pd.read_csv(tree.summary.summary_csv).set_index("variant")
    assert summary.loc["moe_topk", "n"] == 2 and f"Configuration {other} only" in tree.report_file.read_text()
    assert main([str(tree.path), "--configuration", "nosuchid"]) == 2
