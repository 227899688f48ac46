"""The dashboard's pages and API over synthetic experiments written with results/ writers: filtering,
sorting, paging, incremental updates, one job's progress, and the pages by URL in Chromium."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from moelab.results.claims import try_claim
from moelab.results.io import append_jsonl, write_json
from moelab.results.records import read_report_headline
from moelab.results.status import JobState, JobStatus, VariantStatus
from moelab.results.tree import ExperimentTree
from moelab.serve.app import create_app
from moelab.serve.catalog import Catalog
from moelab.serve.dashboard import Dashboard

VARIANTS = ("dense", "moe")
EPOCHS = 4


def write_synthetic_experiment(root: Path, name: str, jobs: int, epochs: int = EPOCHS) -> tuple[ExperimentTree, list]:
    """`jobs` jobs over a grid of two learning rates: every fifth running (one epoch written, claimed by
    this process: the claims are returned, release them), every seventh failed, the rest done; each
    variant's metrics hold router-health columns."""
    tree = ExperimentTree(root / name)
    claims = []
    for i in range(jobs):
        job = tree.job(f"j{i:05d}")
        lr = (0.1, 0.01)[i % 2]
        variants = [{"name": v, "model": "mlp" if v == "dense" else "moe"} for v in VARIANTS]
        write_json(job.config_file, {"experiment": name, "grid_values": {"lr": lr}, "config": {
            "seed": i % 3, "data": {"name": "digits"}, "train": {"epochs": epochs}, "variants": variants}})
        state = JobState.RUNNING if i % 5 == 0 else JobState.FAILED if i % 7 == 0 else JobState.DONE
        write_status(job, state, {v: state for v in VARIANTS})
        if state is JobState.RUNNING:
            claims.append(try_claim(job))
        for v in VARIANTS:
            for epoch in range(1 if state is JobState.RUNNING else epochs):
                add_epoch(job, v, epoch)
            if state is JobState.DONE:
                write_json(job.variant(v).results_file, {"best_val_accuracy": 0.9, "test_accuracy": 0.88,
                                                         "best_epoch": epochs - 1, "epochs_trained": epochs})
    return tree, claims


def write_status(job, state: JobState, variants: dict) -> None:
    JobStatus(job.key, state=state, attempts=1, host="here", elapsed_s=12.0,
              error="boom" if state is JobState.FAILED else None,
              variants={v: VariantStatus(state=s, error="boom" if s is JobState.FAILED else None)
                        for v, s in variants.items()}).write(job)


def add_epoch(job, variant: str, epoch: int) -> None:
    append_jsonl(job.variant(variant).metrics_file, {
        "epoch": epoch, "train_loss": 1.0 / (epoch + 1), "val_loss": 1.2 / (epoch + 1),
        "val_accuracy": 0.5 + epoch / 10, "seconds": 2.0, "train_load_cv": 0.3, "train_effective_experts": 3.5})


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash") / "experiments"
    tree, claims = write_synthetic_experiment(root, "sweep", 40)
    yield root, tree
    for claim in claims:
        claim.release()


@pytest.fixture(scope="module")
def client(synthetic) -> TestClient:
    app = create_app(Catalog(root=synthetic[0]), ask_queues=False)
    app.state.dashboard.rows_ttl_s = 0  # every request reads the tree: a change shows at once
    return TestClient(app, raise_server_exceptions=False)


def page(client, **params) -> dict:
    response = client.get("/api/experiments/sweep/job-page", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_experiment_list_counts_states_and_progress(client):
    [sweep] = client.get("/api/experiments").json()["experiments"]
    assert sweep["jobs"] == 40 and sweep["states"] == {"done": 28, "failed": 4, "running": 8}
    assert sweep["progress"] == pytest.approx(28 * 2 / 80) and sweep["headline"] is None
    assert client.get("/api/experiments/sweep").json() == sweep  # the experiment page asks for its own only
    assert client.get("/api/experiments/nope").status_code == 404


def test_filter_by_state_variant_and_grid_value_sort_and_page(client):
    failed = page(client, state="failed", limit=1000)
    assert failed["matched"] == 4 and failed["total"] == 40
    assert {row["state"] for row in failed["rows"]} == {"failed"} and len(failed["keys"]) == 4
    assert page(client, variant="nope")["matched"] == 0 and page(client, variant="moe")["matched"] == 40
    low = page(client, **{"grid.lr": "0.01"}, limit=1000)
    assert low["matched"] == 20 and all(row["grid_values"]["lr"] == 0.01 for row in low["rows"])
    first = page(client, limit=10)
    assert [row["state"] for row in first["rows"]][:8] == ["running"] * 8  # running first
    keys = page(client, sort="key", order="desc", limit=1000)["keys"]
    assert keys[8:] == sorted(keys[8:], reverse=True)
    assert page(client, offset=35, limit=10)["keys"] == page(client, limit=1000)["keys"][35:]
    for bad in ({"sort": "nope"}, {"limit": 0}, {"order": "up"}):
        response = client.get("/api/experiments/sweep/job-page", params=bad)
        assert 400 <= response.status_code < 500 and "error" in response.json()


def test_an_update_sends_only_the_rows_that_changed(client, synthetic):
    _, tree = synthetic
    before = page(client, limit=1000)
    etag = client.get("/api/experiments/sweep/job-page", params={"limit": 1000}).headers["etag"]
    again = client.get("/api/experiments/sweep/job-page", params={"limit": 1000}, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    unchanged = page(client, limit=1000, since=before["version"])
    assert unchanged["rows"] == [] and unchanged["version"] == before["version"]
    add_epoch(tree.job("j00005"), "moe", 1)
    changed = page(client, limit=1000, since=before["version"])
    assert changed["version"] != before["version"] and [row["key"] for row in changed["rows"]] == ["j00005"]
    assert changed["keys"] == before["keys"]
    assert len(page(client, limit=1000, since="unknown")["rows"]) == 40  # too far behind: everything


def test_a_pass_rereads_only_the_jobs_whose_files_or_claims_changed(tmp_path, monkeypatch):
    tree, claims = write_synthetic_experiment(tmp_path / "experiments", "small", 6)
    dashboard = Dashboard(Catalog(root=tmp_path / "experiments"), ask_queues=False, rows_ttl_s=0)
    read = []
    view = dashboard.job_view
    monkeypatch.setattr(dashboard, "job_view", lambda job, *args, **kw: read.append(job.key) or view(job, *args, **kw))
    first = dashboard.job_rows(tree)
    assert sorted(read) == [f"j{i:05d}" for i in range(6)]
    read.clear()
    assert dashboard.job_rows(tree)[0] == first[0] and read == []  # nothing changed: stats only
    add_epoch(tree.job("j00001"), "moe", EPOCHS)
    write_json(tree.job("j00002").variant("dense").results_file, {"best_val_accuracy": 0.5})
    version, rows, _ = dashboard.job_rows(tree)
    assert sorted(read) == ["j00001", "j00002"] and version != first[0]
    assert rows["j00001"]["variants"][1]["epochs"] == EPOCHS + 1
    read.clear()
    claims[0].release()  # j00000's process is gone: no file of its own changed, its state did
    assert dashboard.job_rows(tree)[1]["j00000"]["state"] == "interrupted" and read == ["j00000"]
    for claim in claims[1:]:
        claim.release()


def test_one_job_shows_epoch_n_of_n_eta_curves_and_router_health(client):
    job = client.get("/api/experiments/sweep/jobs/j00010").json()
    dense = next(v for v in job["variants"] if v["name"] == "dense")
    assert job["state"] == "running" and dense["epochs"] == 1 and dense["epochs_total"] == EPOCHS
    assert dense["elapsed_s"] == 2.0 and dense["eta_s"] == 2.0 * (EPOCHS - 1)
    assert dense["curves"]["val_accuracy"] == [0.5] and dense["load_cv"] == 0.3 and dense["effective_experts"] == 3.5
    done = client.get("/api/experiments/sweep/jobs/j00001").json()["variants"][0]
    assert done["eta_s"] is None and done["curves"]["epoch"] == list(range(EPOCHS))
    assert client.get("/api/experiments/sweep/jobs/nope").status_code == 404


def test_the_run_table_has_a_row_per_job_and_variant(client):
    table = client.get("/api/experiments/sweep/run-table").json()
    assert len(table["rows"]) == 80
    assert {"job", "variant", "state", "grid.lr", "load_cv", "effective_experts"} <= set(table["columns"])


def test_pages_have_urls_and_plotly_is_served_from_its_package(client):
    assert "experiment.js" in client.get("/experiments/sweep").text
    assert "job.js" in client.get("/experiments/sweep/jobs/j00001").text
    assert client.get("/experiments/nope").status_code == 404
    assert client.get("/experiments/sweep/jobs/nope").status_code == 404
    script = client.get("/static/plotly.min.js")
    assert script.status_code == 200 and len(script.content) > 1_000_000


def test_the_headline_is_read_from_the_report(tmp_path):
    tree = ExperimentTree(tmp_path / "x")
    assert read_report_headline(tree) is None
    tree.report_file.parent.mkdir(parents=True)
    tree.report_file.write_text("<div class='box headline'><b>moe</b> beats dense &amp; more</div>")
    assert read_report_headline(tree) == "moe beats dense & more"


# --- in a browser ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live(synthetic, tmp_path_factory):
    from test_serve import server

    with server(tmp_path_factory.mktemp("logs") / "serve.log", "--experiments-dir", str(synthetic[0])) as base:
        yield base


@pytest.mark.browser
def test_the_list_an_experiment_and_a_job_load_by_url_and_filter_by_state(live):
    from test_serve import browser_page

    with browser_page() as (page, errors):
        page.goto(f"{live}/?refresh=1")
        page.click("#head-sweep a:has-text('sweep')")
        page.wait_for_url(f"{live}/experiments/sweep")
        errors.clear()  # the list page's requests cut short by leaving it
        page.wait_for_selector("#jobs tr.job")
        assert page.locator("#jobs tr.job").count() == 40
        page.select_option("#filter-state", "failed")
        page.wait_for_function("document.querySelectorAll('#jobs tr.job').length === 4")
        assert set(page.eval_on_selector_all("#jobs .job-state", "cells => cells.map(c => c.dataset.state)")) == {"failed"}
        page.click("#jobs tr.job a")
        page.wait_for_url(f"{live}/experiments/sweep/jobs/j00007")
        page.wait_for_selector(".chart .main-svg")
        assert errors == []


@pytest.mark.browser
def test_a_running_jobs_epoch_counter_advances_and_zooming_changes_a_curves_range(live, synthetic):
    from test_serve import browser_page

    with browser_page() as (page, errors):
        page.set_default_timeout(30_000)
        page.goto(f"{live}/experiments/sweep/jobs/j00015?refresh=0.5")
        page.wait_for_selector("tr[data-variant=dense] .epochs:has-text('1 of 4')")
        add_epoch(synthetic[1].job("j00015"), "dense", 1)
        page.wait_for_selector("tr[data-variant=dense] .epochs:has-text('2 of 4')")
        chart = "#chart-val_accuracy"
        page.wait_for_function(f"document.querySelector('{chart}').data.some(t => t.y.length === 2)")
        before = page.evaluate(f"document.querySelector('{chart}').layout.xaxis.range.slice()")
        page.locator(chart).scroll_into_view_if_needed()
        box = page.locator(f"{chart} .nsewdrag").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5, steps=5)
        page.mouse.up()
        page.wait_for_function(f"document.querySelector('{chart}').layout.xaxis.range[0] !== {before[0]}")
        after = page.evaluate(f"document.querySelector('{chart}').layout.xaxis.range")
        assert before[0] < after[0] < after[1] < before[1]
        assert errors == []


# --- a search -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A tiny search's study, asked and told in this process as workers would (no training): four
    trials complete, one pruned, one still running; its files written as a trial's end writes them."""
    import yaml
    from test_search import study_doc

    from moelab.config import load_experiment
    from moelab.search import StudySession
    from moelab.search.export import write_study_files

    base = tmp_path_factory.mktemp("search")
    source = base / "tuned.yaml"
    source.write_text(yaml.safe_dump(study_doc(n_trials=6, parallel=6), sort_keys=False))
    tree = ExperimentTree(base / "experiments" / "tuned")
    tree.jobs_dir.mkdir(parents=True)
    session = StudySession(tree, load_experiment(source))
    session.create()
    for value in (0.6, 0.8, 0.7, 0.85):
        run = session.next_trial()
        run.study.tell(run.trial, value)
        run.release()
    pruned = session.next_trial()
    pruned.report(0, 0, 0.2)
    pruned.prune()
    pruned.release()
    running = session.next_trial()
    write_study_files(session)
    yield base / "experiments", tree
    running.release()


def test_a_search_has_its_history_importances_and_parallel_coordinates(searched):
    ExperimentTree(searched[0] / "plain").jobs_dir.mkdir(parents=True, exist_ok=True)
    client = TestClient(create_app(Catalog(root=searched[0]), ask_queues=False))
    listed = {e["name"]: e["search"] for e in client.get("/api/experiments").json()["experiments"]}
    assert listed == {"plain": False, "tuned": True}
    assert client.get("/api/experiments/plain/study").status_code == 404
    response = client.get("/api/experiments/tuned/study")
    study = response.json()
    history = study["history"]
    assert history["complete"] == {"trial": [0, 1, 2, 3], "value": [0.6, 0.8, 0.7, 0.85]}
    assert history["best_so_far"]["value"] == [0.6, 0.8, 0.8, 0.85]  # maximised
    assert history["pruned"]["trial"] == [4]
    assert set(study["importances"]) == {"train.lr", "variants.*.num_experts", "variants.*.hidden"}
    dimensions = {d["label"]: d for d in study["parallel"]["dimensions"]}
    assert dimensions["val_acc of moe_topk"]["values"] == [0.6, 0.8, 0.7, 0.85]
    assert dimensions["variants.*.num_experts"]["ticktext"] == ["2", "4"]
    lr = dimensions["train.lr"]  # log-scaled: log10 values, ticks labelled with rounded values
    assert lr["range"] == pytest.approx([-3, math.log10(0.03)]) and lr["ticktext"][0] == "0.001"
    assert all(lr["range"][0] <= v <= lr["range"][1] for v in lr["values"])
    assert dimensions["variants.*.hidden"]["ticktext"] == ["8", "11", "16", "23", "32"]  # an int range: whole numbers
    unchanged = client.get("/api/experiments/tuned/study", headers={"If-None-Match": response.headers["etag"]})
    assert unchanged.status_code == 304


@pytest.mark.browser
def test_a_searchs_page_draws_its_history_importances_and_parallel_coordinates(searched, tmp_path):
    from test_serve import browser_page, server

    with server(tmp_path / "serve.log", "--experiments-dir", str(searched[0])) as base, \
            browser_page() as (page, errors):
        page.goto(f"{base}/experiments/tuned")
        for chart in ("#study-history", "#study-importances", "#study-parallel"):
            page.wait_for_selector(f"{chart} .main-svg")
        traces = page.evaluate("document.querySelector('#study-history').data.map(t => [t.name, t.mode])")
        assert traces == [["complete (4)", "markers"], ["pruned (1)", "markers"], ["best so far", "lines"]]
        assert page.evaluate("document.querySelector('#study-parallel').data[0].type") == "parcoords"
        assert page.evaluate("document.querySelector('#study-parallel').data[0].dimensions.length") == 4
        assert errors == []
