"""Typed records of the experiments tree: what their one writer writes, every reader reads."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from conftest import TINY
from moelab.config import load_experiment
from moelab.launch.plan import make_plan, write_plan
from moelab.results.errors import DamagedRecord
from moelab.results.records import LaunchRecord, last_launch, read_launches
from moelab.results.tree import ExperimentTree
from moelab.serve.catalog import Catalog
from moelab.serve.dashboard import Dashboard


def git(cwd, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_the_dashboard_shows_the_launchs_git_commit_and_dirty_flag(tmp_path):
    source = tmp_path / "checkout"
    source.mkdir()
    path = source / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "grid": {}}))
    git(source, "init", "-q")
    git(source, "add", "tiny.yaml")
    git(source, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "experiment")
    path.write_text(path.read_text() + "# an uncommitted change\n")
    experiment = load_experiment(path)
    plan = make_plan(experiment, tmp_path / "experiments")
    write_plan(plan, "run_here", [str(path)])

    shown = Dashboard(Catalog(root=tmp_path / "experiments"), ask_queues=False).experiment_summary(plan.tree)
    assert shown["last_launch"]["git_commit"] == git(source, "rev-parse", "HEAD")
    assert shown["last_launch"]["git_dirty"] is True
    assert last_launch(plan.tree).jobs_run == 1


def test_a_launch_record_without_its_time_is_damaged_and_named(tmp_path):
    tree = ExperimentTree(tmp_path / "e")
    tree.path.mkdir()
    tree.launches_file.write_text('{"mode": "run_here"}\n')
    with pytest.raises(DamagedRecord) as caught:
        read_launches(tree)
    assert caught.value.path == tree.launches_file and "time" in caught.value.problem


def test_a_launch_record_that_is_not_a_file_stops_the_launch_before_it_writes(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "grid": {}}))
    tree = ExperimentTree(tmp_path / "experiments" / "tiny")
    tree.launches_file.mkdir(parents=True)
    with pytest.raises(DamagedRecord) as caught:
        make_plan(load_experiment(path), tmp_path / "experiments")
    assert caught.value.path == tree.launches_file
    assert sorted(p.name for p in tree.path.iterdir()) == ["launches.jsonl"]


def test_garbage_bytes_in_a_json_lines_record_are_bad_lines_not_a_crash(tmp_path):
    from moelab.results.io import read_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"epoch": 0}\n\x00\xffgarbage{[\n{"epoch": 1}\n')
    bad = []
    assert read_jsonl(path, on_bad_line=lambda number, line: bad.append(number)) == [{"epoch": 0}, {"epoch": 1}]
    assert bad == [2]


def test_a_launch_record_round_trips_and_ignores_keys_of_later_versions():
    record = LaunchRecord(time="t", mode="submit", experiment_file="e.yaml", git_commit="abc", git_dirty=False)
    assert LaunchRecord.from_dict({**record.to_dict(), "added_later": 1}) == record


def test_status_dashboard_and_loader_show_the_same_state_words(tmp_path, capsys):
    """One job not started, one whose variant status.json says done without its results.json: every
    reader says NOT_STARTED and DAMAGED, words of JobState."""
    from moelab.launch.status import print_status
    from moelab.results.io import write_json
    from moelab.results.load import collect
    from moelab.results.status import JobState

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "grid": {"seed": [0, 1]}, "variants": TINY["variants"][:1]}))
    experiment = load_experiment(path)
    tree = ExperimentTree(tmp_path / "experiments" / "tiny")
    untouched, damaged = experiment.jobs()
    for job in (untouched, damaged):
        write_json(tree.job(job.key).config_file, experiment.job_spec(job))
    write_json(tree.job(damaged.key).status_file, {"state": "failed", "variants": {"mlp": {"state": "done"}}})

    print_status(experiment, tmp_path / "experiments")
    lines = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines() if line[:12] in
             (untouched.key, damaged.key)}
    assert lines == {untouched.key: "NOT_STARTED", damaged.key: "FAILED"}

    dashboard = Dashboard(Catalog(root=tmp_path / "experiments"), ask_queues=False)
    jobs = {job["key"]: job for job in dashboard.jobs("tiny", curves=False)["jobs"]}
    assert jobs[untouched.key]["shown"] == "NOT_STARTED" and jobs[untouched.key]["variants"][0]["shown"] == "NOT_STARTED"
    assert jobs[damaged.key]["variants"][0]["state"] == JobState.DAMAGED
    assert dashboard.experiment_summary(tree)["shown_states"] == {"pending": "NOT_STARTED", "failed": "FAILED"}

    with pytest.warns(UserWarning):
        runs = collect(tree.path).runs.set_index("job")
    assert runs.loc[untouched.key, "state"] == JobState.PENDING and runs.loc[damaged.key, "state"] == JobState.DAMAGED
    every_word = {str(state) for state in JobState}
    assert set(runs["state"]) <= every_word and {j["state"] for j in jobs.values()} <= every_word


def _trained(root, doc: dict) -> tuple[ExperimentTree, list]:
    """Every job of `doc` trained in root/<name>."""
    from moelab.results.io import write_json
    from moelab.train.job import run_job

    path = root / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    experiment = load_experiment(path)
    tree = ExperimentTree(root / doc["name"])
    for job in experiment.jobs():
        write_json(tree.job(job.key).config_file, experiment.job_spec(job))
        assert run_job(tree.job(job.key).path).state == "done"
    return tree, experiment.jobs()


def _served_test_accuracy(tree: ExperimentTree, job, variant: str) -> tuple[float, float, int]:
    """(served accuracy on the raw test split, the accuracy training measured, test samples)."""
    import torch
    from fastapi.testclient import TestClient

    from moelab.data import DataSettings, load_dataset
    from moelab.data.preprocessing import input_preprocessing
    from moelab.results.io import read_json
    from moelab.serve.app import create_app
    from test_serve import raw_rows

    settings = DataSettings(**job.config["data"])
    data = load_dataset(settings, job.config["seed"])
    raw = raw_rows(data.x_test, input_preprocessing(settings, job.config["seed"]))
    app = TestClient(create_app(Catalog(root=tree.path.parent), ask_queues=False))
    answer = app.post("/api/predict", json={"experiment": tree.name, "job": job.key, "variant": variant,
                                            "inputs": raw.reshape(-1, 8, 8).tolist()})
    assert answer.status_code == 200, answer.text
    predicted = torch.tensor([p["predicted"] for p in answer.json()["runs"][0]["predictions"]])
    tested = read_json(tree.job(job.key).variant(variant).results_file)["test_acc"]
    return (predicted == data.y_test).float().mean().item(), tested, len(raw)


def test_an_init_from_run_is_served_as_it_was_tested(tmp_path):
    small = {**TINY, "train": {**TINY["train"], "epochs": 2}, "variants": TINY["variants"][:1], "grid": {}}
    source, (source_job,) = _trained(tmp_path, {**small, "name": "source"})
    started = {**small, "name": "started",
               "variants": [{**TINY["variants"][0], "init_from": str(source.job(source_job.key).variant("mlp").path)}]}
    tree, (job,) = _trained(tmp_path, started)
    served, tested, samples = _served_test_accuracy(tree, job, "mlp")
    assert abs(served - tested) <= 1 / samples + 1e-9  # the raw inputs round once more than the split


def test_a_last_checkpoint_run_with_an_annealed_gate_is_served_as_it_was_tested(tmp_path):
    """Only the first epoch counts as an improvement (min_delta 1), so the best epoch is 0 and the last 5:
    a gate annealed from temperature 20 to 0.05 is far apart at the two."""
    from moelab.results.io import read_json
    from moelab.serve.predictor import Predictor

    doc = {**TINY, "name": "annealed", "grid": {},
           "train": {**TINY["train"], "epochs": 6, "checkpoint": "last", "early_stopping": {"patience": 10, "min_delta": 1.0}},
           "variants": [{"name": "moe", "model": "moe", "hidden": 16, "num_experts": 4, "anneal_temperature": True,
                         "temperature_start": 20.0, "temperature_end": 0.05}]}
    tree, (job,) = _trained(tmp_path, doc)
    results = read_json(tree.job(job.key).variant("moe").results_file)
    assert results["best_epoch"] == 0 and results["tested"]["epoch"] == 5 and results["tested"]["checkpoint"] == "last"
    served, tested, samples = _served_test_accuracy(tree, job, "moe")
    assert abs(served - tested) <= 1 / samples + 1e-9
    # the best run by validation is judged by the weights that answer, not by the best epoch's score
    run, = Predictor(Catalog(root=tmp_path)).select("annealed", variant="moe")
    assert run.tested.val == results["tested"]["val"] != results["best_val_acc"]


@pytest.mark.parametrize("text, problem", [("{not json", "unreadable (JSONDecodeError)"),
                                           ('{"experiment": "e"}', "lacks what a job needs"),
                                           ('{"config": {"seed": 0, "data": {}, "variants": [{"name": "x"}]}}',
                                            "without a name or a model")])
def test_a_damaged_job_spec_names_its_file_and_what_is_wrong(tmp_path, text, problem):
    from moelab.results.records import read_job_spec
    from moelab.results.tree import JobTree

    job = JobTree(tmp_path / "jobs" / "0123456789ab")
    job.path.mkdir(parents=True)
    job.config_file.write_text(text)
    with pytest.raises(DamagedRecord) as caught:
        read_job_spec(job)
    assert caught.value.path == job.config_file and problem in caught.value.problem and "--force" in caught.value.remedy


def test_variant_results_are_read_once_and_a_damaged_file_is_named(tmp_path):
    from moelab.results.records import TestedWeights, read_variant_results
    from moelab.results.tree import VariantTree

    variant = VariantTree(tmp_path / "moe")
    variant.results_file.parent.mkdir(parents=True)
    variant.results_file.write_text('{"metric": "acc", "best_val_acc": 0.9, "best_epoch": 3, "epochs_trained": 9, '
                                    '"confusion": [[1]], "test_acc": 0.8}')
    results = read_variant_results(variant)
    assert results.best_val == 0.9 and results.scalars() == {"metric": "acc", "best_val_acc": 0.9, "best_epoch": 3,
                                                             "epochs_trained": 9, "test_acc": 0.8}
    # written before `tested` was: the job's train.checkpoint says which epoch was tested
    assert results.tested({"epochs": 10}) == TestedWeights("best", 3, 0.3, 0.9)
    assert results.tested({"epochs": 10, "checkpoint": "last"}) == TestedWeights("last", 8, 0.8, None)
    variant.results_file.write_text('{"metric": "acc", "best_val')
    with pytest.raises(DamagedRecord) as caught:
        read_variant_results(variant)
    assert caught.value.path == variant.results_file and "unreadable" in caught.value.problem


def test_a_job_config_whose_continued_from_is_not_a_job_and_epochs_is_damaged_and_named():
    from moelab.results.records import JobSpec

    doc = {"config": {"seed": 0, "data": {}, "variants": [{"name": "moe", "model": "moe"}]}}
    assert JobSpec.from_dict({**doc, "continued_from": {"job": "abc", "epochs": 2}}, "k").continued_from["epochs"] == 2
    for damaged in ("abc", {"job": "abc"}, {"job": 3, "epochs": 2}):
        with pytest.raises(DamagedRecord) as caught:
            JobSpec.from_dict({**doc, "continued_from": damaged}, "k")
        assert "continued_from" in caught.value.problem
