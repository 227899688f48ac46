"""Experiment files: every class of bad input is reported (exit 2, nothing written); grids expand stably."""

from __future__ import annotations

import copy
import re

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
}


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


def test_a_setting_added_later_keeps_the_keys_of_earlier_trees(write_experiment):
    """train.checkpoint came after job keys were written to trees: at its default it is not part
    of a job's config, so finished trees keep their keys; set otherwise, it makes new jobs."""
    path = write_experiment()
    plain = [job.key for job in load_experiment(path).jobs()]
    assert [job.key for job in load_experiment(path, ["train.checkpoint=best"]).jobs()] == plain
    assert "checkpoint" not in load_experiment(path).jobs()[0].config["train"]
    last = load_experiment(path, ["train.checkpoint=last"]).jobs()
    assert last[0].config["train"]["checkpoint"] == "last" and not {job.key for job in last} & set(plain)


# --- hardening: every class of hostile or broken input is a ConfigError (exit 2, file and key named) ---

HARDENING_CASES = {
    "experiment name with a trailing newline": (bad(name="tiny\n"), "name: must be a string made of letters"),
    "variant name with a trailing newline": (bad(variants__0__name="mlp\n"), "variants[0].name: is required"),
    "reserved experiment name": (bad(name="configs"), "name: 'configs' is reserved"),
    "reserved experiment name in another case": (bad(name="readme.MD"), "name: 'readme.MD' is reserved"),
    "nan learning rate": (bad(train__lr=float("nan")), "train.lr: must be a number > 0.0, got nan, which is not a finite"),
    "infinite weight decay": (bad(train__weight_decay=float("inf")), "train.weight_decay: must be a number >= 0.0, got inf"),
    "overflowing number text": (bad(train__lr="1e999"), "train.lr: must be a number > 0.0, got '1e999', which is not"),
    "integer too large for a float": (bad(train__lr=10**400), "train.lr: must be a number > 0.0, got 1000"),
    "nan in a grid axis": (bad(grid={"train.lr": [0.1, float("nan")]}), "grid.train.lr[1]: must be a number > 0.0, got nan"),
    "nan model parameter": (bad(variants__1__dropout=float("nan")), "variants.moe.dropout: must be a number >= 0.0"),
    "seed beyond 32 bits": (bad(grid={"seed": [0, 2**32]}), "grid.seed[1]: must be an integer >= 0 <= 4294967295"),
    "section that is a number": (bad(data=5), "data: must be a mapping of keys to values, got an integer"),
    "nested section that is a list": (bad(train__early_stopping=[1]), "train.early_stopping: must be a mapping"),
    "variants that are a mapping": (bad(variants={"mlp": 1}), "variants: must be a non-empty list"),
    "variant that is a number": (bad(variants=[3]), "variants[0]: must be a mapping with name and model, got 3"),
    "grid that is a number": (bad(grid=7), "grid: must be a mapping of keys to lists of values"),
}


@pytest.mark.parametrize("case", sorted(CASES) + sorted(HARDENING_CASES))
def test_bad_input_exits_2_and_writes_nothing(case, write_experiment, tmp_path, monkeypatch, capsys):
    doc, expected = {**CASES, **HARDENING_CASES}[case]
    path = write_experiment(doc)
    monkeypatch.chdir(tmp_path)
    assert main(["run_here", str(path), "--experiments-dir", "out"]) == 2
    stderr = capsys.readouterr().err
    assert str(path) in stderr and expected in stderr, stderr
    assert not (tmp_path / "out").exists()


SHAPE_OVERRIDES = {
    "data=5": "data: must be a mapping of keys to values, got an integer",
    "train=[1]": "train: must be a mapping of keys to values, got a list",
    "variants=3": "variants: must be a non-empty list of {name, model, <model parameters>}, got 3",
    "variants=[5]": "variants[0]: must be a mapping with name and model, got 5",
    "variants=[{name: a}]": "variants.a.model: unknown model None",
    "grid=7": "grid: must be a mapping of keys to lists of values, e.g. seed: [0, 1, 2], got 7",
    "grid.seed=5": "grid.seed: must be a non-empty list of values, got 5",
    "grid={seed: 5}": "grid.seed: must be a non-empty list of values, got 5",
    "local=x": "local: must be a mapping of keys to values, got a string",
    "report=[]": "report: must be a mapping of keys to values, got a list",
    "slurm=5": "slurm: must be a mapping of keys to values, got an integer",
    "slurm.additional_parameters=5": "slurm.additional_parameters: must be a mapping, got 5",
    "train.early_stopping=5": "train.early_stopping: must be a mapping of keys to values, got an integer",
    "train.early_stopping.patience.x=1": "cannot set train.early_stopping.patience.x: patience is not a section",
    "name=[1]": "name: must be a string made of letters",
    "train={lr: 1, lr: 2}": "train.lr: override value '{lr: 1, lr: 2}': duplicate key 'lr' at line 1, columns 2 and 9",
    "data.name=2020-13-45": "data.name: override value '2020-13-45': line 1: '2020-13-45' cannot be read as",
}


@pytest.mark.parametrize("override", sorted(SHAPE_OVERRIDES))
def test_sections_of_the_wrong_shape_are_reported_not_raised(override, write_experiment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # main() lets anything but a ConfigError through: a traceback fails the test
    assert main(["status", str(write_experiment()), override, "--experiments-dir", "out"]) == 2
    stderr = capsys.readouterr().err
    assert f"{SHAPE_OVERRIDES[override]}" in stderr and f"(set on the command line: {override})" in stderr, stderr


@pytest.mark.parametrize("file_text, override, expected", [
    ("data: 5\n", "data.name=mnist", "data.name: cannot set data.name: data is not a section"),
    ("variants: 3\n", "variants.mlp.hidden=3", "variants.mlp.hidden: variants is not a list in the file"),
    ("variants: [1, {name: mlp, model: mlp}]\n", "variants.mlp.hidden=0", "variants.mlp.hidden: must be an integer >= 1"),
])
def test_overrides_into_sections_of_the_wrong_shape(file_text, override, expected, write_experiment):
    with pytest.raises(ConfigError) as caught:
        load_experiment(write_experiment(f"name: shapes\n{file_text}"), [override])
    assert expected in str(caught.value)


def test_overrides_fill_sections_written_empty(write_experiment):
    path = write_experiment("name: empty\ntrain:\ngrid:\nvariants: [{name: mlp, model: mlp}]\n")
    experiment = load_experiment(path, ["train.early_stopping.patience=3", "grid.seed=[1, 2]"])
    assert experiment.doc["train"]["early_stopping"]["patience"] == 3 and len(experiment.jobs()) == 2


def test_reserved_names_cover_every_tracked_entry_of_the_experiments_folder():
    from conftest import REPO
    from moelab.config.sections import RESERVED_EXPERIMENT_NAMES

    # what .gitignore keeps tracked under experiments/ is what an experiment's output folder must not be
    tracked = [line[len("!experiments/"):].strip("/") for line in (REPO / ".gitignore").read_text().splitlines()
               if line.startswith("!experiments/")]
    assert tracked and set(tracked) <= set(RESERVED_EXPERIMENT_NAMES)


def test_a_reserved_name_taken_from_the_file_name_says_so(write_experiment):
    with pytest.raises(ConfigError) as caught:
        load_experiment(write_experiment({k: v for k, v in TINY.items() if k != "name"}, name="configs.yaml"))
    assert "name: 'configs' is reserved" in str(caught.value) and "the name is the file's name" in str(caught.value)


def test_safe_names_are_matched_whole():
    from moelab.schema import PATH_SAFE, Field

    field = Field(str, pattern=PATH_SAFE)
    assert field.check("run-1.a", "name") == ("run-1.a", [])
    for name in ("run\n", "run\r\n", "run\nx", "../x", "", "x" * 101):
        assert field.check(name, "name")[1], name


def test_float_fields_refuse_what_is_not_a_finite_number():
    from moelab.schema import Field

    number, numbers = Field(float, min=0.0), Field(list, item_kind=float)
    for value in (float("nan"), float("inf"), float("-inf"), "nan", "inf", "1e999", 10**400, True):
        assert number.check(value, "x")[1], value
        assert numbers.check([1.0, value], "x")[1], value
    assert number.check("1e-3", "x") == (0.001, []) and number.check(2, "x") == (2.0, [])


def test_duplicate_keys_name_the_key_and_both_lines(write_experiment):
    text = "name: dup\ntrain:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\nvariants: [{name: mlp, model: mlp}]\n"
    with pytest.raises(ConfigError) as caught:
        load_experiment(write_experiment(text))
    assert "train.lr: duplicate key 'lr' at lines 3 and 5" in str(caught.value)
    flow = "name: dup\nvariants: [{name: mlp, model: mlp, hidden: 4, hidden: 8}]\n"
    with pytest.raises(ConfigError, match=r"variants\[0\]\.hidden: duplicate key 'hidden' at line 2, columns 36 and 47"):
        load_experiment(write_experiment(flow))
    # what a merge key (<<) brings in is meant to be overridden: not a duplicate
    merged = "name: merged\nvariants:\n  - &v {name: mlp, model: mlp, hidden: 4}\n  - {<<: *v, name: mlp2}\n"
    assert [(v["name"], v["hidden"]) for v in load_experiment(write_experiment(merged)).doc["variants"]] == [
        ("mlp", 4), ("mlp2", 4)]


def test_the_strict_loader_is_libyaml_where_installed():
    from moelab.config.yaml_input import StrictLoader

    assert issubclass(StrictLoader, yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)


def test_a_file_that_is_not_utf8_names_the_byte_and_the_key(tmp_path, monkeypatch, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: tiny\ndescription: caf\xe9\nvariants: [{name: mlp, model: mlp}]\n".encode("latin-1"))
    monkeypatch.chdir(tmp_path)
    assert main(["run_here", str(path), "--experiments-dir", "out"]) == 2
    stderr = capsys.readouterr().err
    assert "description: the file is not UTF-8 text: byte 0xe9 at line 2, column 17" in stderr, stderr
    assert not (tmp_path / "out").exists()


def test_a_path_the_file_system_refuses_is_a_config_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["status", "x" * 300 + ".yaml"]) == 2
    assert "cannot be read: File name too long" in capsys.readouterr().err


def test_deep_nesting_is_refused_before_the_parser_recurses(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: deep\nvariants: [{name: mlp, model: mlp}]\ndescription: " + "[" * 200_000 + "]" * 200_000 + "\n")
    # libyaml builds nested documents recursively: this one crashed the interpreter (a segmentation fault).
    # Newer libyaml scanners refuse such flow nesting themselves, older ones leave it to our check: either
    # way a config error naming the file, never a crash
    done = launch(tmp_path, "status", str(path))
    assert done.returncode == 2, done.stderr
    assert str(path) in done.stderr and "nothing was run or written" in done.stderr and "Traceback" not in done.stderr
    # block nesting no YAML scanner limits: our own check names the key path and the limit
    block = "name: deep\nvariants: [{name: mlp, model: mlp}]\ndescription:\n" + "".join(
        "  " * (level + 1) + f"k{level}:\n" for level in range(40)) + "  " * 41 + "leaf\n"
    path.write_text(block)
    done = launch(tmp_path, "status", str(path))
    assert done.returncode == 2, done.stderr
    assert "description.k0.k1" in done.stderr and "nested more than 32 levels deep" in done.stderr
    assert "MOELAB_MAX_NESTING_DEPTH" in done.stderr and "Traceback" not in done.stderr


def test_aliases_count_as_copies(write_experiment):
    lines = ["name: bomb", "variants: [{name: mlp, model: mlp}]", "description: &x0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 10)}]" for i in range(1, 12)]  # 10^12 values
    with pytest.raises(ConfigError, match="holds more than 1,000,000 values once its aliases"):
        load_experiment(write_experiment("\n".join(lines) + "\n"))
    with pytest.raises(ConfigError, match=r"description\[0\]: the alias \*a .* is inside what it names"):
        load_experiment(write_experiment("name: loop\ndescription: &a [*a]\n"))
    deep = ["name: deep", "a0: &a0 [1]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 40)]
    with pytest.raises(ConfigError, match="nested more than 32 levels deep"):
        load_experiment(write_experiment("\n".join(deep) + "\n"))


def test_an_oversized_file_is_refused_unread_unless_the_limit_is_lifted(write_experiment, monkeypatch, tmp_path, capsys):
    text = yaml.safe_dump(TINY) + "# padding\n" * 110_000  # 1.1 MB, almost all comment
    path = write_experiment(text)
    monkeypatch.chdir(tmp_path)
    assert main(["status", str(path), "--experiments-dir", "out"]) == 2
    stderr = capsys.readouterr().err
    assert f"is {len(text):,} bytes, more than the limit of 1,000,000 bytes" in stderr
    assert "MOELAB_MAX_EXPERIMENT_BYTES" in stderr
    monkeypatch.setenv("MOELAB_MAX_EXPERIMENT_BYTES", "2_000_000")
    assert len(load_experiment(path).jobs()) == 4
    monkeypatch.setenv("MOELAB_MAX_EXPERIMENT_BYTES", "lots")
    with pytest.raises(ConfigError, match="(?s)environment variable MOELAB_MAX_EXPERIMENT_BYTES.*got 'lots'"):
        load_experiment(path)


def test_a_grid_too_large_is_refused_from_its_axis_lengths(write_experiment, monkeypatch):
    from moelab.config import grid

    def no_expansion(doc):
        raise AssertionError("the grid was expanded")

    monkeypatch.setattr(grid, "expand", no_expansion)
    values = list(range(1000))
    huge = bad(grid={"seed": values, "train.epochs": [v + 1 for v in values], "train.batch_size": [v + 1 for v in values]})
    with pytest.raises(ConfigError) as caught:
        load_experiment(write_experiment(huge))
    assert ("grid: makes 1,000,000,000 jobs, 1,000 (seed) x 1,000 (train.epochs) x 1,000 (train.batch_size), more than "
            "the limit of 100,000 jobs") in str(caught.value)
    assert "MOELAB_MAX_GRID_JOBS" in str(caught.value)
    monkeypatch.undo()
    monkeypatch.setenv("MOELAB_MAX_GRID_JOBS", "3")
    with pytest.raises(ConfigError, match="grid: makes 4 jobs"):
        load_experiment(write_experiment())
    monkeypatch.setenv("MOELAB_MAX_GRID_JOBS", "4")
    assert len(load_experiment(write_experiment()).jobs()) == 4


def test_a_model_too_large_is_refused_with_its_parameter_count(write_experiment, monkeypatch):
    from moelab.models.params import MLPParams

    expected = MLPParams(hidden=100_000, layers=2).parameter_counts(64, 10).total
    with pytest.raises(ConfigError) as caught:
        load_experiment(write_experiment(), ["variants.mlp.hidden=100000", "variants.mlp.layers=2"])
    text = str(caught.value)
    assert f"variants.mlp: model 'mlp' would have {expected:,} parameters on digits (64 inputs, 10 outputs)" in text
    assert "the limit is 2,000,000,000 parameters" in text and "MOELAB_MAX_MODEL_PARAMETERS" in text
    monkeypatch.setenv("MOELAB_MAX_MODEL_PARAMETERS", "2e10")
    assert load_experiment(write_experiment(), ["variants.mlp.hidden=100000", "variants.mlp.layers=2"]).jobs()


def test_every_dataset_says_the_image_shape_the_size_estimate_needs():
    from moelab.data import DataSettings, get_dataset_spec, load_dataset

    for settings in (DataSettings(name="digits"), DataSettings(name="image_fit", resolution=8, fourier_features=3)):
        data = load_dataset(settings, seed=0)
        assert get_dataset_spec(settings.name).input_shape == data.input_shape


@pytest.mark.parametrize("model", ["mlp", "cnn", "moe", "moe_topk", "moe_hard", "moe_switch", "moe_guided", "moe_routed"])
def test_the_parameter_estimate_is_the_count_of_the_built_model(model):
    from moelab.models import build_model, get_model_spec
    from moelab.models.base import count_parameters

    spec = get_model_spec(model)
    variations = [{}, {"batch_norm": False, "noisy_gating": False, "num_experts": 3, "hidden": 7},
                  {"backbone": "cnn", "backbone_width": 8, "num_experts": 2, "hidden": 5}, {"width": 8, "features": 16}]
    for params in ({k: v for k, v in variation.items() if k in spec.schema} for variation in variations):
        for d_in, d_out, shape in ((64, 10, (8, 8)), (3072, 10, (3, 32, 32)), (14, 3, None)):
            if shape is None and spec.needs_images(params):
                continue
            built = build_model(model, d_in, d_out, params, shape)
            assert spec.parameter_counts(d_in, d_out, params, shape).total == count_parameters(built), (params, d_in)


# --- model profiles: variants included from files of their own ---

def write_profile(folder, name: str, variants) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(variants if isinstance(variants, str) else yaml.safe_dump(variants, sort_keys=False))


def test_included_variants_make_the_same_jobs_as_inline_ones(write_experiment):
    inline = load_experiment(write_experiment())
    path = write_experiment(bad(variants=[{"include": "models/tiny.yaml"}, TINY["variants"][3]]), name="included.yaml")
    write_profile(path.parent, "models/tiny.yaml", TINY["variants"][:3])
    included = load_experiment(path)
    assert included.doc["variants"] == inline.doc["variants"]
    assert [job.key for job in included.jobs()] == [job.key for job in inline.jobs()]
    # overrides and grid axes reach included variants as they reach inline ones
    overrides = ["variants.moe.hidden=8", "grid.variants.moe_topk.k=[1, 2]"]
    assert ([job.key for job in load_experiment(path, overrides).jobs()]
            == [job.key for job in load_experiment(write_experiment(), overrides).jobs()])


def test_an_error_inside_an_included_file_names_that_file_and_the_key(write_experiment, tmp_path, monkeypatch, capsys):
    path = write_experiment(bad(variants=[{"include": "models/broken.yaml"}]))
    write_profile(path.parent, "models/broken.yaml", [{"name": "ok", "model": "mlp"}, {"name": "m", "model": "moe", "hidden": 0},
                                                      {"name": "t", "model": "moe_topk", "num_experts": 2, "k": 3}, 7])
    monkeypatch.chdir(tmp_path)
    assert main(["run_here", str(path), "--experiments-dir", "out"]) == 2
    stderr = capsys.readouterr().err
    profile = path.parent / "models" / "broken.yaml"
    assert f"variants.m.hidden (in {profile}): must be an integer >= 1, got 0" in stderr
    assert f"variants[3] (in {profile}): must be a mapping with name and model, got 7" in stderr
    assert not (tmp_path / "out").exists()
    # checks across parameters name the file too; a value set on the command line names the command line
    write_profile(path.parent, "models/broken.yaml", [{"name": "t", "model": "moe_topk", "num_experts": 2, "k": 3}])
    with pytest.raises(ConfigError, match=rf"variants\.t \(in {re.escape(str(profile))}\): k=3 must be <= num_experts=2"):
        load_experiment(path)
    with pytest.raises(ConfigError) as caught:
        load_experiment(path, ["variants.t.k=0"])
    assert "  - variants.t.k: must be an integer >= 1, got 0 (set on the command line: variants.t.k=0)" in str(caught.value)


def test_included_files_are_read_as_strictly_as_experiment_files(write_experiment):
    path = write_experiment(bad(variants=[{"include": "models/dup.yaml"}]))
    write_profile(path.parent, "models/dup.yaml", "- name: a\n  model: mlp\n  model: moe\n")
    with pytest.raises(ConfigError, match=r"\[0\]\.model \(in .*dup.yaml\): duplicate key 'model' at lines 2 and 3"):
        load_experiment(path)
    (path.parent / "models" / "dup.yaml").write_bytes(b"- {name: a\xff, model: mlp}\n")
    with pytest.raises(ConfigError, match=r"dup.yaml\): the file is not UTF-8 text: byte 0xff"):
        load_experiment(path)


def test_a_missing_include_names_the_path_relative_to_the_experiment_folder(write_experiment):
    path = write_experiment(bad(variants=[{"include": "models/nope.yaml"}, {"name": "mlp", "model": "mlp"}]))
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    assert (f"variants[0].include: file not found: {path.parent / 'models' / 'nope.yaml'} (include paths are relative "
            f"to the folder of the file that names them: {path.parent})") in str(caught.value)
    # the variants it leaves empty are not a second problem
    with pytest.raises(ConfigError) as caught:
        load_experiment(write_experiment(bad(variants=[{"include": "models/nope.yaml"}])))
    assert [issue.path for issue in caught.value.issues] == ["variants[0].include"]


def test_includes_nest_without_cycles_and_not_too_deep(write_experiment):
    path = write_experiment(bad(variants=[{"include": "models/all.yaml"}]))
    write_profile(path.parent, "models/all.yaml", [{"include": "dense.yaml"}, {"name": "moe", "model": "moe"}])
    write_profile(path.parent, "models/dense.yaml", {"name": "mlp", "model": "mlp"})  # a single variant
    assert [v["name"] for v in load_experiment(path, ["grid={}"]).doc["variants"]] == ["mlp", "moe"]

    write_profile(path.parent, "models/dense.yaml", [{"include": "all.yaml"}])
    with pytest.raises(ConfigError, match=r"variants\[0\]\.include \(in .*dense.yaml\): 'all.yaml' includes itself: "
                                          r".*all.yaml -> .*dense.yaml -> .*all.yaml"):
        load_experiment(path)

    for level in range(6):
        write_profile(path.parent, f"models/level{level}.yaml", [{"include": f"level{level + 1}.yaml"}])
    with pytest.raises(ConfigError, match="is included 5 files deep; at most 4 levels of included files"):
        load_experiment(write_experiment(bad(variants=[{"include": "models/level0.yaml"}])))


def test_an_include_item_holds_only_the_path(write_experiment):
    path = write_experiment(bad(variants=[{"include": "models/tiny.yaml", "hidden": 3}]))
    write_profile(path.parent, "models/tiny.yaml", TINY["variants"])
    with pytest.raises(ConfigError, match=r"variants\[0\]\.include: an include item holds only 'include', got also hidden"):
        load_experiment(path)


def test_the_shipped_profile_and_its_example_experiment():
    from conftest import REPO

    experiment = load_experiment(REPO / "experiments/configs/xs_digits.yaml")
    assert [v["name"] for v in experiment.doc["variants"]] == ["xs_mlp", "xs_moe", "xs_moe_topk", "xs_moe_hard"]
    assert {v["model"] for v in experiment.doc["variants"]} == {"mlp", "moe", "moe_topk", "moe_hard"}
    assert len(experiment.jobs()) == 3

# the keys of jobs before baseline: existed; an experiment without matched baselines must keep them
TINY_KEYS = ["163feac4935c", "1cda1ca3497d", "08bb6f444882", "18feb743e75c"]
# the keys of default.yaml's jobs (since it tests the last epoch's weights, train.checkpoint: last)
DEFAULT_KEYS = ["fb7f4d464e0d", "ca39c535acbc", "4447fc521a7f", "684ebc6ae00a", "5740b301b510", "2743116d5fbb"]


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
