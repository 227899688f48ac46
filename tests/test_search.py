"""search: validation of the `search:` section, studies run here and on the cluster, interruption,
dead workers, pruning, the study in the report."""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY, launch, wait_until
from moelab.config import ConfigError, load_experiment
from moelab.results.io import read_json, read_jsonl
from moelab.results.tree import ExperimentTree

STUDY = {
    "name": "tuned",
    "data": {"name": "digits", "max_train_samples": 200},
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.003, "early_stopping": {"patience": 20}},
    "variants": [{"name": "moe_topk", "model": "moe_topk", "hidden": 16, "k": 2}],
    "search": {
        "sampler": "random", "n_trials": 6, "parallel": 2, "seed": 0,
        "objective": {"variant": "moe_topk", "metric": "val_acc", "direction": "maximize"},
        "space": {"train.lr": {"loguniform": [1.0e-3, 3.0e-2]}, "variants.*.num_experts": {"choice": [2, 4]},
                  "variants.*.hidden": {"int": [8, 32], "log": True}},
    },
}


def study_doc(**search) -> dict:
    doc = copy.deepcopy(STUDY)
    doc["search"].update(search)
    return doc


def trials_of(tree: Path) -> list[dict]:
    """Every trial in the study's journal: number, state (complete, pruned, failed, lost, running,
    waiting), value, params, user attributes, epochs reported."""
    from moelab.search import StudySession
    from moelab.search.export import trial_state

    experiment = load_experiment(tree / "experiment.yaml")
    session = StudySession(ExperimentTree(tree), experiment)
    return [{"number": t.number, "state": trial_state(t), "value": t.value, "params": t.params,
             "attrs": t.user_attrs, "epochs": len(t.intermediate_values)} for t in session.trials()]


def finished(tree: Path) -> list[dict]:
    try:
        return [t for t in trials_of(tree) if t["state"] in ("complete", "pruned", "failed")]
    except (OSError, KeyError, ConfigError):
        return []


def epochs_of(job: Path, variant: str = "moe_topk") -> list[int]:
    metrics = job / variant / "metrics.jsonl"
    return [row["epoch"] for row in read_jsonl(metrics)] if metrics.is_file() else []


def start(experiment: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "moelab.launch", "run_here", str(experiment), "--experiments-dir", "out", *extra]
    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


# -- validation ----------------------------------------------------------------------------------

BAD = [
    ({"space": {"train.lr": {"lognormal": [1e-4, 1e-2]}}}, "search.space.train.lr", "unknown distribution 'lognormal' (did you mean 'loguniform'?)"),
    ({"space": {"train.weight_decay": {"uniform": [0.1, 0.1]}}}, "search.space.train.weight_decay.uniform", "empty range"),
    ({"space": {"train.weight_decay": {"uniform": [0.1, 0.0]}}}, "search.space.train.weight_decay.uniform", "reversed range"),
    ({"space": {"train.lr": {"loguniform": [0.0, 1e-2]}}}, "search.space.train.lr.loguniform", "above zero"),
    ({"space": {"variants.*.hidden": {"int": [0, 64], "log": True}}}, "search.space.variants.*.hidden.int", "above zero"),
    ({"space": {"variants.*.hidden": {"int": []}}}, "search.space.variants.*.hidden.int", "must be a range [low, high]"),
    ({"space": {"train.weight_decy": {"uniform": [0.0, 0.1]}}}, "search.space.train.weight_decy", "did you mean 'weight_decay'"),
    ({"space": {"variants.moe.hidden": {"choice": [8, 16]}}}, "search.space.variants.moe.hidden", "no variant named 'moe'"),
    ({"space": {"train.lr": {"uniform": [0.0, 0.1]}}}, "search.space.train.lr", "must be a number > 0.0"),
    ({"space": {}}, "search.space", "non-empty"),
    ({"space": {"variants.*.num_experts": {"choice": [1, 4]}}}, "search.space", "k=2 must be <= num_experts=1"),
    ({"sampler": "grid"}, "search.space.train.lr", "the grid sampler tries every value"),
    ({"sampler": "bayes"}, "search.sampler", "must be one of 'grid', 'random', 'tpe'"),
    ({"objective": {"variant": "moe_top"}}, "search.objective.variant", "no variant named 'moe_top' (did you mean 'moe_topk'?)"),
    ({"objective": {"variant": "moe_topk", "metric": "val_accuracy"}}, "search.objective.metric", "unknown validation metric"),
    ({"objective": {"variant": "moe_topk", "metric": "test_acc"}}, "search.objective.metric", "is a test metric"),
    ({"n_trials": 0}, "search.n_trials", "must be an integer >= 1"),
    ({"parallel": 0}, "search.parallel", "must be an integer >= 1"),
    ({"pruner": {"name": "hyperband"}}, "search.pruner.name", "must be one of 'median', 'asha', 'none'"),
]


@pytest.mark.parametrize("change, path, words", BAD, ids=[f"{b[1]}:{b[2][:24]}" for b in BAD])
def test_a_bad_search_section_names_the_key(write_experiment, change, path, words):
    experiment = write_experiment(study_doc(**change))
    with pytest.raises(ConfigError) as error:
        load_experiment(experiment)
    found = [str(issue) for issue in error.value.issues]
    assert any(issue.startswith(path + ":") and words in issue for issue in found), found


def test_the_example_search_validates():
    experiment = load_experiment(REPO / "experiments" / "configs" / "search.yaml")
    search = experiment.doc["search"]
    assert search["sampler"] == "tpe" and search["pruner"]["name"] == "median"
    assert search["objective"] == {"variant": "moe_topk", "metric": "val_acc", "direction": "maximize"}


def test_a_key_searched_and_gridded_at_once_is_refused(write_experiment):
    experiment = write_experiment({**study_doc(), "grid": {"train.lr": [0.01, 0.02]}})
    with pytest.raises(ConfigError) as error:
        load_experiment(experiment)
    assert any("search.space.train.lr: is also a grid axis" in str(i) for i in error.value.issues)


def test_bad_input_exits_2_and_writes_nothing(write_experiment, tmp_path):
    experiment = write_experiment(study_doc(n_trials=0, space={"train.lr": {"loguniform": [0.0, 0.1]}}))
    done = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "search.n_trials" in done.stderr and "search.space.train.lr.loguniform" in done.stderr
    assert not (tmp_path / "out").exists()


def test_job_keys_without_a_search_are_unchanged_and_a_trial_uses_the_grid_keys(write_experiment):
    from moelab.config.grid import job_key
    from moelab.search.space import point_jobs

    plain = load_experiment(write_experiment(TINY))
    assert "search" not in plain.doc
    for job in plain.jobs():  # what is hashed holds nothing of a search
        assert set(job.config) == {"seed", "data", "train", "variants"} and job.key == job_key(job.config)
    search = {**STUDY["search"], "objective": {"variant": "moe"},
              "space": {"train.lr": {"loguniform": [1.0e-3, 3.0e-2]}, "variants.*.hidden": {"int": [8, 32]}}}
    searched = load_experiment(write_experiment({**TINY, "search": search}, "searched.yaml"))
    assert [j.key for j in searched.jobs()] == [j.key for j in plain.jobs()]
    # a trial's point is the jobs the grid experiment makes with those values set: trained once, reused
    point = point_jobs(searched, {"train.lr": 0.01, "variants.*.hidden": 24})
    same = load_experiment(write_experiment(TINY, "same.yaml"), ["train.lr=0.01", "variants.moe.hidden=24",
                                                                  "variants.mlp.hidden=24", "variants.moe_topk.hidden=24",
                                                                  "variants.moe_hard.hidden=24"])
    assert [j.key for j in point.jobs] == [j.key for j in same.jobs()]
    assert point.jobs[0].grid_values["train.lr"] == 0.01


# -- the study without training (asked and told directly) ----------------------------------------------


def session_for(write_experiment, tmp_path, **search):
    from moelab.search import StudySession

    session = StudySession(ExperimentTree(tmp_path / "out" / "tuned"), load_experiment(write_experiment(study_doc(**search))))
    session.create()
    return session


def test_the_grid_sampler_asks_every_point_once_then_stops(write_experiment, tmp_path):
    space = {"train.lr": {"choice": [0.001, 0.01]}, "variants.*.num_experts": {"choice": [2, 4]}}
    session = session_for(write_experiment, tmp_path, sampler="grid", n_trials=10, space=space)
    points = []
    while (run := session.next_trial()) is not None:
        points.append(tuple(sorted(run.point.params.items())))
        run.study.tell(run.trial, 0.5)
        run.release()
    assert sorted(points) == sorted((("train.lr", lr), ("variants.*.num_experts", e)) for lr in (0.001, 0.01) for e in (2, 4))
    assert session.progress().describe().startswith("4 of 4 trials finished")


@pytest.mark.parametrize("pruner", [{"name": "median", "warmup_epochs": 1, "startup_trials": 2},
                                    {"name": "asha", "warmup_epochs": 1, "reduction_factor": 2}])
def test_the_pruners_stop_a_trial_far_behind_the_others_and_leave_one_ahead(write_experiment, tmp_path, pruner):
    session = session_for(write_experiment, tmp_path, n_trials=6, parallel=1, pruner=pruner)
    for good in (0.8, 0.85, 0.9):
        run = session.next_trial()
        assert not any(run.report(0, epoch, good) for epoch in range(3))
        run.study.tell(run.trial, good)
        run.release()
    behind = session.next_trial()
    assert any(behind.report(0, epoch, 0.1) for epoch in range(3))
    behind.prune()
    behind.release()
    ahead = session.next_trial()
    assert not any(ahead.report(0, epoch, 0.95) for epoch in range(3))


def test_a_trial_nobody_holds_is_told_failed_and_its_point_retried(write_experiment, tmp_path):
    session = session_for(write_experiment, tmp_path, n_trials=2, parallel=2)
    first = session.next_trial()
    held = session.next_trial()
    assert session.next_trial() is None  # two trials running: the budget is spent
    first.release()  # its worker is gone without telling the study
    assert session.progress().lost == 1 and session.progress().to_start == 1
    retry = session.next_trial()
    assert retry.trial.user_attrs["retry_of"] == first.number and retry.point.params == first.point.params
    assert [job.key for job in retry.point.jobs] == [job.key for job in first.point.jobs]  # the same jobs, resumed
    states = {t.number: t.state.name for t in session.trials()}
    assert states == {first.number: "FAIL", held.number: "RUNNING", retry.number: "RUNNING"}
    for run in (held, retry):
        run.study.tell(run.trial, 0.5)
        run.release()
    assert session.progress().finished == 2 and session.next_trial() is None


def test_a_trial_whose_job_a_live_process_holds_is_not_lost(write_experiment, tmp_path):
    from moelab.results.claims import try_claim

    session = session_for(write_experiment, tmp_path, n_trials=1)
    run = session.next_trial()
    job_claim = try_claim(session.tree.job(run.point.jobs[0].key))
    run.release()
    try:
        assert session.progress().running == 1 and session.next_trial() is None
    finally:
        job_claim.release()
    assert session.progress().lost == 1


def test_a_study_of_another_search_in_the_folder_stops_the_launch(write_experiment, tmp_path, capsys):
    from moelab.launch import LaunchOptions, launch_experiment

    session_for(write_experiment, tmp_path)
    changed = write_experiment(study_doc(space={"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}}), "changed.yaml")
    code = launch_experiment(changed, mode="run_here", options=LaunchOptions(experiments_dir=tmp_path / "out"))
    assert code == 2 and "holds a study of another search" in capsys.readouterr().err
    assert not (tmp_path / "out" / "tuned" / "launches").exists()


# -- studies run here --------------------------------------------------------------------------------


@pytest.mark.slow
def test_random_search_gives_the_same_trials_with_the_same_seed_and_a_relaunch_continues_it(write_experiment, tmp_path):
    experiment = write_experiment(study_doc())
    first = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out", "--no-report", timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "6 of 6 trials finished (6 complete, 0 pruned, 0 failed)" in first.stdout
    second = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "again", "--no-report", timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    trials = trials_of(tmp_path / "out" / "tuned")
    again = trials_of(tmp_path / "again" / "tuned")
    assert [t["number"] for t in trials] == list(range(6)) and {t["state"] for t in trials} == {"complete"}
    assert [t["params"] for t in trials] == [t["params"] for t in again]
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 6  # parallel workers never share a stream
    jobs = sorted((tmp_path / "out" / "tuned" / "jobs").iterdir())
    assert len(jobs) == 6 and all(read_json(j / "status.json")["attempts"] == 1 for j in jobs)

    # relaunched with a larger budget, it goes on: numbering continues, nothing is trained again
    before = {j.name: (j / "moe_topk" / "results.json").read_bytes() for j in jobs}
    more = launch(tmp_path, "run_here", str(experiment), "search.n_trials=8", "--experiments-dir", "out", "--no-report",
                  timeout=900)
    assert more.returncode == 0, more.stdout + more.stderr
    assert "6 of 8 trials finished" in more.stdout and "2 to run" in more.stdout
    trials = trials_of(tmp_path / "out" / "tuned")
    assert [t["number"] for t in trials] == list(range(8)) and {t["state"] for t in trials} == {"complete"}
    assert all((tmp_path / "out" / "tuned" / "jobs" / key / "moe_topk" / "results.json").read_bytes() == data
               for key, data in before.items())
    done = launch(tmp_path, "run_here", str(experiment), "search.n_trials=8", "--experiments-dir", "out", "--no-report")
    assert done.returncode == 0 and "nothing to run" in done.stdout


@pytest.mark.slow
def test_tpe_interrupted_by_ctrl_c_and_relaunched_ends_with_exactly_n_trials_none_trained_twice(write_experiment, tmp_path):
    doc = study_doc(sampler="tpe", n_trials=12, parallel=2)
    doc["grid"] = {"seed": [0, 1]}  # a trial is two jobs: its objective is their mean
    doc["data"]["max_train_samples"] = 150
    experiment = write_experiment(doc)
    root = tmp_path / "out" / "tuned"
    process = start(experiment, tmp_path, "--no-report")
    try:
        wait_until(lambda: len(finished(root)) >= 3 and any(
            len(epochs_of(j)) >= 1 and read_json(j / "status.json")["state"] == "running"
            for j in (root / "jobs").iterdir() if (j / "status.json").is_file()), 600, "three trials and a running job")
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output
    interrupted = [t for t in trials_of(root) if t["state"] == "running"]
    assert interrupted, "Ctrl-C left no trial running"

    resumed = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out", timeout=1200)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = trials_of(root)
    assert [t["number"] for t in trials] == list(range(len(trials)))  # numbering never restarted
    ended = [t for t in trials if t["state"] in ("complete", "pruned", "failed")]
    assert len(ended) == 12 and {t["state"] for t in ended} == {"complete"}
    lost = [t for t in trials if t["state"] == "lost"]
    assert {t["number"] for t in lost} == {t["number"] for t in interrupted}  # nothing stays running
    retried = {t["attrs"]["retry_of"]: t for t in trials if "retry_of" in t["attrs"]}
    for trial in lost:  # each lost point was retried as a new trial
        assert retried[trial["number"]]["params"] == trial["params"]
    # no job trained twice: one folder per point of the finished trials, every epoch once
    keys = {key for t in ended for key in t["attrs"]["jobs"]}
    folders = {j.name for j in (root / "jobs").iterdir()}
    assert folders == keys
    for key in folders:
        epochs = epochs_of(root / "jobs" / key)
        assert epochs == list(range(3)), (key, epochs)
        assert read_json(root / "jobs" / key / "status.json")["attempts"] <= 2  # resumed at most once, from its checkpoint

    # the report: the study on the first screen, its plots, the best trial as a ready-to-run file
    study = root / "study"
    assert (study / "trials.csv").is_file() and (root / "summary" / "study_history.png").stat().st_size > 10_000
    assert (root / "summary" / "study_importances.png").is_file() and (root / "summary" / "study_parameters.png").is_file()
    page = (root / "report" / "index.html").read_text()
    assert "<b>Search</b> (tpe sampler, no pruner): 12 of 12 trials finished" in page and "best.yaml" in page
    summary = read_json(study / "study.json")
    assert summary["best"]["value"] == max(t["value"] for t in ended)
    assert set(summary["importances"]) == set(STUDY["search"]["space"])
    best_experiment = load_experiment(study / "best.yaml")
    assert "search" not in best_experiment.doc
    assert [j.key for j in best_experiment.jobs()] == summary["best"]["jobs"]  # the same jobs: already trained
    rows = list(csv.DictReader(open(study / "trials.csv")))
    assert len(rows) == len(trials) and {r["state"] for r in rows} == {"complete", "lost"}


@pytest.mark.slow
def test_hopeless_learning_rates_are_pruned_early(write_experiment, tmp_path):
    doc = study_doc(n_trials=8, parallel=1, seed=3, space={"train.lr": {"loguniform": [1.0e-7, 3.0e-2]}},
                    pruner={"name": "median", "warmup_epochs": 1, "startup_trials": 2})
    doc["train"]["epochs"] = 6
    experiment = write_experiment(doc)
    done = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out", timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    root = tmp_path / "out" / "tuned"
    trials = trials_of(root)
    pruned = [t for t in trials if t["state"] == "pruned"]
    complete = [t for t in trials if t["state"] == "complete"]
    assert len(pruned) + len(complete) == 8 and pruned and complete, [(t["state"], t["params"]) for t in trials]
    for trial in pruned:
        key = trial["attrs"]["jobs"][0]
        status = read_json(root / "jobs" / key / "status.json")
        assert status["state"] == "pruned" and status["variants"]["moe_topk"]["state"] == "pruned"
        assert len(epochs_of(root / "jobs" / key)) == trial["epochs"] < 6  # stopped early
    assert all(t["epochs"] == 6 for t in complete)
    # the pruned ones learn too slowly: the best trial has a larger learning rate than any of them
    best = max(complete, key=lambda t: t["value"])
    assert max(t["params"]["train.lr"] for t in pruned) < best["params"]["train.lr"]
    assert "pruned" in done.stdout and "0 failed" in done.stdout
    runs = list(csv.DictReader(open(root / "summary" / "runs.csv")))
    assert sum(r["state"] == "pruned" for r in runs) == len(pruned)
    page = (root / "report" / "index.html").read_text()
    assert f"{len(pruned)} pruned" in page and "failed, or unreadable" not in page
    status = launch(tmp_path, "status", str(root))
    assert status.returncode == 0 and status.stdout.count(" pruned ") == len(pruned), status.stdout


@pytest.mark.slow
def test_a_worker_killed_mid_trial_fails_the_trial_which_is_retried_and_the_study_completes(write_experiment, tmp_path):
    doc = study_doc(n_trials=4, parallel=2)
    doc["data"]["max_train_samples"] = 100
    doc["train"].update(epochs=40, early_stopping={"patience": 40})
    experiment = write_experiment(doc)
    root = tmp_path / "out" / "tuned"
    process = start(experiment, tmp_path, "--no-report")

    def running_job():
        for job in (root / "jobs").glob("*"):
            try:
                status = read_json(job / "status.json")
            except (OSError, ValueError):
                continue
            if status["state"] == "running" and len(epochs_of(job)) >= 3:
                return status
        return None

    try:
        killed = wait_until(running_job, 600, "a job a few epochs in")
        os.kill(killed["pid"], signal.SIGKILL)
        output, _ = process.communicate(timeout=1200)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output
    assert f"worker process died with exit code -9 (killed: out of memory?) while running {killed['key']}" in output
    trials = trials_of(root)
    assert sum(t["state"] == "complete" for t in trials) == 4
    lost = [t for t in trials if t["state"] == "lost"]
    assert len(lost) == 1 and killed["key"] in lost[0]["attrs"]["jobs"]
    retry = next(t for t in trials if t["attrs"].get("retry_of") == lost[0]["number"])
    assert retry["state"] == "complete" and retry["params"] == lost[0]["params"]
    status = read_json(root / "jobs" / killed["key"] / "status.json")
    assert status["state"] == "done" and status["attempts"] == 2  # taken over once, from its checkpoint
    assert epochs_of(root / "jobs" / killed["key"]) == list(range(40))
    assert not [t for t in trials if t["state"] == "running"]


# -- the dev cluster --------------------------------------------------------------------------------


@pytest.mark.slurm
def test_the_same_study_on_the_cluster_with_three_tasks(write_experiment, tmp_path):
    from test_slurm import cluster_answers

    problem = cluster_answers()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"SLURM is required in CI: {problem}. .ci/run starts slurm/dev-cluster/start.sh first.")
        pytest.skip(f"no SLURM cluster answers ({problem}); start one with: sudo bash slurm/dev-cluster/start.sh")
    profile = tmp_path / "profile.yaml"
    profile.write_text("cpus_per_task: 1\nmem_gb: 1\ntimeout_min: 10\narray_parallelism: 1\n")
    experiment = write_experiment(study_doc(parallel=3))
    started = time.monotonic()
    submitted = launch(tmp_path, "submit", str(experiment), "--profile", str(profile), "--experiments-dir", "out")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert time.monotonic() - started < 60
    assert "submitted a search of 6 trial(s) as 3 task(s)" in submitted.stdout and "at most 3 at once" in submitted.stdout
    root = tmp_path / "out" / "tuned"
    wait_until(lambda: len(finished(root)) == 6, 900, "six trials on the cluster")
    trials = trials_of(root)
    assert [t["number"] for t in trials] == list(range(6)) and {t["state"] for t in trials} == {"complete"}
    statuses = [read_json(p) for p in root.glob("jobs/*/status.json")]
    assert len(statuses) == 6 and all(s["attempts"] == 1 and s["slurm"]["array_job_id"] for s in statuses)
    # the same points as run here with the same seed
    here = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "here", "--no-report", timeout=900)
    assert here.returncode == 0, here.stdout + here.stderr
    assert [t["params"] for t in trials] == [t["params"] for t in trials_of(tmp_path / "here" / "tuned")]
    again = launch(tmp_path, "submit", str(experiment), "--profile", str(profile), "--experiments-dir", "out")
    assert again.returncode == 0 and "nothing to submit" in again.stdout


class _TrialAtItsPoint:
    """What search_worker._run_job asks of a trial: its job specs, and no epochs to replay or prune on."""

    def __init__(self, experiment):
        self.point = experiment

    def replay(self, index: int) -> bool:
        return False

    def prune_hook(self, index: int):
        return None


def test_a_job_is_finished_by_its_own_variants_a_matched_baseline_included(tmp_path):
    """A job of a search point whose experiment variants are done but whose matched dense baseline
    was interrupted mid-training is trained on, not reused as finished."""
    import yaml

    from moelab.launch.search_worker import _run_job
    from moelab.results.io import write_json
    from moelab.results.status import JobState, read_status
    from moelab.train.job import run_job

    doc = {**TINY, "grid": {}, "train": {**TINY["train"], "epochs": 2}, "variants": TINY["variants"][:2],
           "baseline": {"variant": "mlp", "match": ["active"]}}
    path = tmp_path / "matched.yaml"
    path.write_text(yaml.safe_dump(doc))
    experiment = load_experiment(path)
    job = experiment.jobs()[0]
    matched = [v["name"] for v in job.config["variants"] if v["name"] not in ("mlp", "moe")]
    assert len(matched) == 1
    job_tree = ExperimentTree(tmp_path / "out" / "matched").job(job.key)
    write_json(job_tree.config_file, experiment.job_spec(job))
    assert run_job(job_tree.path).state == "done"
    # the baseline's training cut short: no results.json, status.json says running with nobody holding it
    job_tree.variant(matched[0]).results_file.unlink()
    status = read_status(job_tree)
    status.state = JobState.RUNNING
    status.write(job_tree)

    state, _ = _run_job(_TrialAtItsPoint(experiment), 0, job, ExperimentTree(tmp_path / "out" / "matched"),
                        report=lambda event: None, stop_requested=lambda: False, runtime_info={})
    assert state is JobState.DONE
    assert job_tree.variant(matched[0]).is_done()


def test_a_damaged_journal_ends_a_search_worker_with_one_message(write_experiment, tmp_path, capsys):
    from moelab.launch.plan import PlanFile
    from moelab.launch.search_worker import run_trials
    from test_study_journal import started_study

    session, path = started_study(write_experiment, tmp_path)
    journal = session.files.journal
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:2] + [b"not a record\n"] + lines[2:]))
    events = []
    plan = PlanFile("launch", False, [], {"doc": session.experiment.doc, "source": str(path)})
    run_trials(session.tree, plan, events.append, stop_requested=lambda: False, runtime_info={}, wait_for_others=False)
    assert len(events) == 1 and events[0][0] == "note"
    assert events[0][1].startswith(f"error: {journal}: line 3 is not a study record") and "move it aside" in events[0][1]
    assert "Traceback" not in capsys.readouterr().err
