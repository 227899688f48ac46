"""Experiment files: every class of bad input is reported (exit 2, nothing written); grids expand stably."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import TINY, launch
from moelab.config import ConfigError, load_experiment
from moelab.launch.cli import main


def bad(**changes):
    doc = copy.deepcopy(TINY)
    for path, value in changes.items():
        node = doc
        *parents, last = path.split("__")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    return doc


CASES = {
    "unknown key": (bad(train__lrr=0.1), "train.lrr: unknown key (did you mean 'lr'?)"),
    "wrong type": (bad(train__epochs="many"), "train.epochs: must be an integer >= 1, got 'many'"),
    "out of range": (bad(data__val_fraction=0.9), "data.val_fraction: must be a number > 0.0 <= 0.5, got 0.9"),
    "unknown dataset": (bad(data__name="mnistt"), "data.name: unknown dataset 'mnistt' (did you mean 'mnist'?)"),
    "unknown model": (bad(variants__1__model="moe_top"), "variants.moe.model: unknown model 'moe_top' (did you mean 'moe_topk'?)"),
    "empty grid axis": (bad(grid__seed=[]), "grid.seed: must be a non-empty list of values"),
    "duplicate variant": (bad(variants__1__name="mlp"), "variants.mlp: duplicate variant name 'mlp'"),
    "unsafe name": (bad(name="../escape"), "name: must be a string made of letters"),
    "missing dataset files": (bad(data={"name": "mnist", "root": "nowhere"}), "see data/README.md"),
    "bad model parameter": (bad(variants__2__k=9), "variants.moe_topk: k=9 must be <= num_experts=2"),
    "guided mapping": (bad(variants=[{"name": "g", "model": "moe_guided", "num_experts": 2, "expert_classes": [[0], [0]]}], grid={}),
                       "variants.g: expert_classes assigns a class to more than one expert"),
    "cnn on non-images": (bad(data={"name": "image_fit"}, variants=[{"name": "c", "model": "cnn"}], grid={}),
                          "variants.c: model 'cnn' reads images, but dataset 'image_fit' does not give images"),
    "unknown grid axis": (bad(grid={"train.lrate": [1]}), "grid.train.lrate: unknown key 'lrate' in train; keys there: epochs, batch_size"),
    "unknown baseline": (bad(baseline={"variant": "mpl"}), "baseline.variant: no variant named 'mpl' (did you mean 'mlp'?)"),
    "baseline not a mapping": (bad(baseline="mlp"), "baseline: must be a mapping of keys to values, got a string"),
    "MoE baseline": (bad(baseline={"variant": "moe"}), "baseline.variant: variant 'moe' is an MoE model (moe); the baseline is a dense model"),
    "unknown match kind": (bad(baseline={"match": ["activ"]}), "baseline.match: must list kinds out of active, total, got 'activ' (did you mean 'active'?)"),
    "matched name taken": (bad(baseline={"match": ["total"]}, variants__0__name="mlp_total_moe"),
                           "variants.mlp_total_moe: this name is taken by the dense model matched to the total parameters of 'moe'"),
    "unsized backbone": (bad(baseline={"match": ["active"]}, variants__1__backbone="cnn"),
                         "baseline.match: cannot build dense models matched to variant 'moe': the size of its CNN backbone"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_and_writes_nothing(case, write_experiment, tmp_path, monkeypatch, capsys):
    doc, expected = CASES[case]
    path = write_experiment(doc)
    monkeypatch.chdir(tmp_path)
    assert main(["run_here", str(path), "--experiments-dir", "out"]) == 2
    stderr = capsys.readouterr().err
    assert str(path) in stderr and expected in stderr, stderr
    assert not (tmp_path / "out").exists()


def test_the_launcher_process_exits_2_on_bad_input(write_experiment, tmp_path):
    done = launch(tmp_path, "run_here", str(write_experiment(bad(train__lrr=1))), "--experiments-dir", "out")
    assert done.returncode == 2 and "train.lrr: unknown key" in done.stderr
    assert not (tmp_path / "out").exists()


def test_all_problems_are_reported_at_once(write_experiment):
    doc = bad(train__lrr=0.1, train__epochs=0, variants__1__model="nope", data__name="cifar")
    with pytest.raises(ConfigError) as caught:
        load_experiment(write_experiment(doc))
    paths = {issue.path for issue in caught.value.issues}
    assert {"train.lrr", "train.epochs", "variants.moe.model", "data.name"} <= paths


def test_yaml_syntax_error_and_missing_file_are_config_errors(write_experiment, tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(write_experiment("name: x\ntrain: [unclosed\n"))
    with pytest.raises(ConfigError, match="file not found; experiment files live in experiments/configs/"):
        load_experiment(tmp_path / "missing.yaml")


def test_override_errors_name_the_command_line(write_experiment):
    with pytest.raises(ConfigError) as caught:
        load_experiment(write_experiment(), ["train.lr=-1", "variants.nope.hidden=3", "oops"])
    text = str(caught.value)
    assert "(set on the command line: train.lr=-1)" in text
    assert "no variant named 'nope'" in text
    assert "must look like key=value" in text


def test_overrides_set_values_parsed_as_yaml(write_experiment):
    experiment = load_experiment(write_experiment(), ["train.lr=1e-2", "variants.moe.hidden=8", "grid.seed=[5]"])
    assert experiment.doc["train"]["lr"] == 0.01  # PyYAML reads 1e-2 as text; a float field accepts it
    assert next(v for v in experiment.doc["variants"] if v["name"] == "moe")["hidden"] == 8
    assert [job.config["seed"] for job in experiment.jobs()] == [5, 5]


def test_grid_is_the_cartesian_product_with_stable_keys(write_experiment):
    jobs = load_experiment(write_experiment()).jobs()
    assert len(jobs) == 4 and len({job.key for job in jobs}) == 4
    again = load_experiment(write_experiment()).jobs()
    assert [job.key for job in jobs] == [job.key for job in again]
    point = jobs[1]
    assert point.grid_values == {"seed": 0, "variants.*.num_experts": 4}
    by_name = {v["name"]: v for v in point.config["variants"]}
    assert by_name["moe"]["num_experts"] == 4 and by_name["moe_topk"]["num_experts"] == 4
    assert "num_experts" not in by_name["mlp"]  # the wildcard only touches models that have the parameter


def test_changing_a_hyperparameter_changes_job_keys_but_not_unrelated_settings(write_experiment):
    base = {job.key for job in load_experiment(write_experiment()).jobs()}
    assert base.isdisjoint(job.key for job in load_experiment(write_experiment(), ["train.lr=0.1"]).jobs())
    # resources are not part of what a job computes
    assert base == {job.key for job in load_experiment(write_experiment(), ["local.workers=2", "slurm.mem_gb=8"]).jobs()}


def test_dataset_options_that_the_dataset_does_not_read_are_rejected(write_experiment):
    with pytest.raises(ConfigError, match=r"data.image: is not read by dataset 'digits'"):
        load_experiment(write_experiment(bad(data={"name": "digits", "image": "x.png"})))


def test_default_experiments_are_valid():
    from conftest import REPO

    experiment = load_experiment(REPO / "experiments/configs/default.yaml")
    assert [v["name"] for v in experiment.doc["variants"]] == ["mlp", "moe", "moe_topk", "moe_hard"]
    assert len({job.config["seed"] for job in experiment.jobs()}) == 3
    loaded = yaml.safe_load((REPO / "experiments/configs/default.yaml").read_text())
    assert loaded["data"]["name"] == "digits"


def test_shipped_experiment_files_are_valid_once_their_data_is_present(tmp_path):
    from conftest import REPO

    configs = REPO / "experiments" / "configs"
    assert load_experiment(configs / "image_fit.yaml").doc["data"]["name"] == "image_fit"
    zoo = load_experiment(configs / "zoo.yaml")
    assert {v["model"] for v in zoo.doc["variants"]} == {"mlp", "cnn", "moe", "moe_topk", "moe_hard", "moe_switch", "moe_guided"}
    for name in ("mnist", "cifar10"):
        # the dataset files are checked for the jobs a launch is about to run, before it writes anything
        assert load_experiment(configs / f"{name}.yaml", [f"data.root={tmp_path}"]).jobs()
        done = launch(tmp_path, "run_here", str(configs / f"{name}.yaml"), f"data.root={tmp_path}",
                      "--experiments-dir", str(tmp_path / "out"))
        assert done.returncode == 2 and "  - data: " in done.stderr and "data/README.md" in done.stderr, done.stderr
        assert not (tmp_path / "out").exists()


# the keys of jobs before baseline: existed; an experiment without matched baselines must keep them
TINY_KEYS = ["163feac4935c", "1cda1ca3497d", "08bb6f444882", "18feb743e75c"]
DEFAULT_KEYS = ["ca40dcb7d30c", "03168660be36", "4f821ad9c02d", "457c8b787671", "0b91dfa5f29d", "8a58aa11203e"]


def test_job_keys_of_experiments_without_matched_baselines_do_not_change(write_experiment):
    from conftest import REPO

    assert [job.key for job in load_experiment(write_experiment()).jobs()] == TINY_KEYS
    assert [job.key for job in load_experiment(REPO / "experiments/configs/default.yaml").jobs()] == DEFAULT_KEYS
    named_only = load_experiment(write_experiment({**TINY, "baseline": {"variant": "mlp"}}))
    assert [job.key for job in named_only.jobs()] == TINY_KEYS
    assert all(job.matched == {} for job in named_only.jobs())


def test_matched_baselines_are_mlps_of_the_nearest_size_at_every_grid_point(write_experiment):
    from moelab.models import build_model, model_params
    from moelab.models.base import count_parameters

    experiment = load_experiment(write_experiment({**TINY, "baseline": {"variant": "mlp", "match": ["active", "total"]}}))
    jobs = experiment.jobs()
    assert {job.key for job in jobs}.isdisjoint(TINY_KEYS)
    for job in jobs:
        variants = {v["name"]: v for v in job.config["variants"]}
        built = {name: build_model(v["model"], 64, 10, model_params(v)).eval() for name, v in variants.items()}
        assert set(job.matched) == {"moe", "moe_topk", "moe_hard"}
        for moe, matches in job.matched.items():
            for kind, dense in matches.items():
                assert dense.startswith("mlp_") and variants[dense]["layers"] == variants["mlp"]["layers"] == 2
                target = built[moe].active_parameters() if kind == "active" else count_parameters(built[moe])
                size = lambda hidden: count_parameters(build_model("mlp", 64, 10, {**model_params(variants[dense]), "hidden": hidden}))
                hidden = variants[dense]["hidden"]
                assert size(hidden) == count_parameters(built[dense])
                assert abs(size(hidden) - target) <= min(abs(size(hidden - 1) - target), abs(size(hidden + 1) - target))
        # soft routing runs every expert: one dense model serves both sizes
        assert job.matched["moe"] == {"active": "mlp_active_moe", "total": "mlp_active_moe"}
        assert job.matched["moe_topk"] == {"active": "mlp_active_moe_topk", "total": "mlp_total_moe_topk"}
        assert experiment.job_spec(job)["matched"] == job.matched
    # sized at each grid point: num_experts 2 and 4 give two widths
    assert len({v["hidden"] for job in jobs for v in job.config["variants"] if v["name"] == "mlp_total_moe_topk"}) == 2


def with_init_from(init_from, **changes) -> dict:
    variant = {"name": "moe_topk", "model": "moe_topk", "hidden": 16, "k": 2, "init_from": str(init_from), **changes}
    return {**TINY, "variants": [TINY["variants"][0], variant], "grid": {}}


def test_init_from_is_checked_before_anything_runs(finished_job, write_experiment, tmp_path):
    source = finished_job.variant("moe_topk")
    cases = {
        "nowhere": (tmp_path / "nowhere", {}, "variants.moe_topk.init_from: " + str(tmp_path / "nowhere") + " does not exist"),
        "not a variant": (finished_job.path, {}, "has no weights/best.pt: not a finished variant's folder"),
        "loose file": (tmp_path / "loose.pt", {}, "is not in a variant folder of an experiments tree"),
        "other width": (source.path, {"hidden": 8}, f"the weights in {source.best_weights} have hidden=16, this variant has hidden=8"),
        "other model": (source.best_weights, {"model": "moe_hard", "k": 1}, "are of model 'moe_topk', this variant is 'moe_hard'"),
        "other data": (source.path, {}, "were trained on digits (64 inputs, 10 outputs); this job's data has 18 inputs, 3 outputs"),
    }
    (tmp_path / "loose.pt").write_bytes(source.best_weights.read_bytes())
    for case, (path, changes, expected) in cases.items():
        doc = with_init_from(path, **changes)
        if case == "other data":
            doc = {**doc, "data": {"name": "image_fit", "resolution": 8, "fourier_features": 4}, "variants": doc["variants"][1:]}
        with pytest.raises(ConfigError) as caught:
            load_experiment(write_experiment(doc))
        assert expected in str(caught.value), (case, str(caught.value))


def test_init_from_is_checked_at_every_grid_point(finished_job, write_experiment):
    doc = {**with_init_from(finished_job.variant("moe_topk").path), "grid": {"variants.*.num_experts": [2, 4]}}
    with pytest.raises(ConfigError) as caught:
        load_experiment(write_experiment(doc))
    assert [i.path for i in caught.value.issues] == ["variants.moe_topk.init_from"]  # 4 experts, like the weights, fits
    assert "num_experts=4, this variant has num_experts=2 (at grid point variants.*.num_experts=2)" in str(caught.value)


def test_the_job_key_hashes_the_init_from_weights_not_their_path(finished_job, write_experiment, tmp_path, monkeypatch):
    import shutil

    from moelab.results.io import file_sha256

    key = lambda doc: load_experiment(write_experiment(doc)).jobs()[0].key
    source = finished_job.variant("moe_topk")
    original = key(with_init_from(source.path))
    assert original != key({**with_init_from(source.path), "variants": [TINY["variants"][0], {
        k: v for k, v in with_init_from(source.path)["variants"][1].items() if k != "init_from"}]})
    moved = tmp_path / "moved" / "jobs" / finished_job.key
    shutil.copytree(finished_job.path, moved)
    monkeypatch.chdir(tmp_path)  # a relative path, from where the launch runs
    assert key(with_init_from(f"moved/jobs/{finished_job.key}/moe_topk")) == original
    spec = load_experiment(write_experiment(with_init_from(f"moved/jobs/{finished_job.key}/moe_topk"))).jobs()[0]
    weights = moved / "moe_topk" / "weights" / "best.pt"
    assert spec.config["variants"][1]["init_from"] == {"path": str(weights), "sha256": file_sha256(weights)}
    with open(weights, "ab") as f:
        f.write(b"\0")  # other weights at the same path: a different job
    assert key(with_init_from(f"moved/jobs/{finished_job.key}/moe_topk")) != original
