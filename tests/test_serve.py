"""serve and predict: the dashboard and prediction web app and the predict command, on trees written
by the real launcher; in-process through the ASGI app, against a real uvicorn server, and in Chromium."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from conftest import REPO, TINY
from moelab.data import DataSettings, load_dataset
from moelab.data.preprocessing import PreprocessingMismatch, input_preprocessing
from moelab.report.write import write_report
from moelab.results import ExperimentTree, collect
from moelab.results.io import read_json
from moelab.serve import predict_cli
from moelab.serve.app import create_app
from moelab.serve.catalog import Catalog
from moelab.serve.inputs import MAX_INPUTS

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# two seeds, so each variant has two runs to choose the best from
SERVED = {**TINY, "train": {**TINY["train"], "epochs": 2}, "grid": {"seed": [0, 1]}}
# regression, and a variant that fails when it is built (class 12 of a 3-output task): a failed job
FIT = {
    "name": "fit",
    "data": {"name": "image_fit", "resolution": 12, "fourier_features": 2},
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.01},
    "variants": [{"name": "mlp", "model": "mlp", "hidden": 16},
                 {"name": "guided_bad", "model": "moe_guided", "hidden": 8, "num_experts": 2,
                  "expert_classes": [[0, 1], [12]]}],
}
# long enough to be watched (its time is mostly optimizer steps, whatever the machine), short enough
# for a loaded one
SLOW = {
    "name": "slow",
    "data": {"name": "digits", "max_train_samples": 200},
    "train": {"epochs": 40, "batch_size": 8, "lr": 0.003, "early_stopping": {"patience": 100}},
    "variants": [{"name": "mlp", "model": "mlp", "hidden": 16}, {"name": "moe", "model": "moe", "hidden": 8}],
}
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic"]


def start_launch(experiments_dir: Path, doc: dict) -> subprocess.Popen:
    """The launcher in the background, as a user runs it (conftest.launch, without waiting)."""
    config = experiments_dir.parent / "configs" / f"{doc['name']}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    log = open(experiments_dir.parent / f"{doc['name']}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "moelab.launch", "run_here", str(config), "--experiments-dir",
                             str(experiments_dir), "--no-report"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> Path:
    """tiny (4 variants, 2 seeds, with its report) and fit (regression, one failed variant)."""
    root = tmp_path_factory.mktemp("serve") / "experiments"
    root.mkdir()
    runs = [start_launch(root, SERVED), start_launch(root, FIT)]
    codes = [run.wait(timeout=900) for run in runs]
    assert codes[0] == 0, (root.parent / "tiny.log").read_text()
    assert codes[1] == 1 and "guided_bad" in (root.parent / "fit.log").read_text()  # the failure is recorded
    write_report([root / "tiny"])
    return root


@pytest.fixture(scope="module")
def client(experiments) -> TestClient:
    return TestClient(create_app(Catalog(root=experiments)), raise_server_exceptions=False)


def copied(experiments: Path, tmp_path: Path, *names: str) -> Path:
    """A copy of served experiments, for tests that damage them."""
    root = tmp_path / "experiments"
    for name in names:
        shutil.copytree(experiments / name, root / name, symlinks=True)
    return root


def digits_raw() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data.astype(np.float32)


def raw_rows(standardised: torch.Tensor, prep) -> np.ndarray:
    """For each standardised row, the raw digit it came from: found by distance, not by replaying the split."""
    raw = digits_raw()
    distances = torch.cdist(standardised, prep(raw), compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distances.min(dim=1)
    assert nearest.values.max() < 1e-3, "a standardised row matches no raw digit"
    return raw[nearest.indices.numpy()]


def job_keys(experiments: Path, name: str) -> list[str]:
    return [job.key for job in ExperimentTree(experiments / name).jobs()]


def drawing(colour="black", background="white", mode="RGB", size=(280, 280)) -> Image.Image:
    """A hand-drawn-like 7: a top bar and a diagonal, thick strokes."""
    image = Image.new(mode, size, background)
    pen = ImageDraw.Draw(image)
    w, h = size
    pen.line([(0.2 * w, 0.18 * h), (0.8 * w, 0.18 * h), (0.42 * w, 0.85 * h)], fill=colour, width=w // 12)
    return image


def png(image: Image.Image, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


def error_of(response: httpx.Response) -> str:
    """The JSON error of a refused request; never a traceback."""
    body = response.json()
    assert set(body) == {"error"} and "Traceback" not in body["error"], body
    return body["error"]


# --- preprocessing --------------------------------------------------------------------------------

def test_preprocessing_maps_raw_digits_onto_the_loaders_inputs():
    settings = DataSettings(name="digits", max_train_samples=300)
    for seed in (0, 1):
        prep = input_preprocessing(settings, seed)
        data = load_dataset(settings, seed)
        assert (prep.d_in, prep.d_out, prep.input_shape, prep.raw.shape) == (64, 10, (8, 8), (8, 8))
        # every test row is the preprocessed form of some raw digit (the split is not replayed here)
        test_raw = raw_rows(data.x_test, prep)
        assert torch.allclose(prep(test_raw), data.x_test, atol=1e-4)
    other_seed = input_preprocessing(settings, 0)
    assert not torch.allclose(other_seed.offset, prep.offset)  # the statistics are the seed's training split's


def test_preprocessing_refuses_to_drift_from_the_loader(monkeypatch):
    import moelab.data.preprocessing as preprocessing

    real = preprocessing.subsample
    monkeypatch.setattr(preprocessing, "subsample", lambda labels, n, seed: real(labels, n, seed + 1))
    with pytest.raises(PreprocessingMismatch, match="does not reproduce the loader's training inputs"):
        input_preprocessing(DataSettings(name="digits", max_train_samples=300), 0)


def test_preprocessing_of_torchvision_data_and_image_fit(tmp_path):
    from test_data import write_mnist_like

    write_mnist_like(tmp_path, "MNIST")
    prep = input_preprocessing(DataSettings(name="mnist", root=str(tmp_path)), 0)  # checks itself on the split
    assert prep.raw.shape == (28, 28) and (prep.raw.low, prep.raw.high) == (0.0, 1.0) and prep.d_in == 784
    fit = input_preprocessing(DataSettings(name="image_fit", resolution=12, fourier_features=2), 0)
    assert fit.raw.shape == (2,) and fit.d_in == 2 + 2 * 2 * 2
    assert torch.allclose(fit(np.array([[0.0, 0.0]])), torch.tensor([[0.0, 0.0, 0, 0, 1, 1, 0, 0, 1, 1]]))


# --- the dashboard's API --------------------------------------------------------------------------

def test_experiments_and_jobs_show_states_variants_curves_and_errors(client, experiments):
    listing = {e["name"]: e for e in client.get("/api/experiments").json()["experiments"]}
    assert set(listing) == {"tiny", "fit"}
    tiny, fit = listing["tiny"], listing["fit"]
    assert (tiny["jobs"], tiny["states"], tiny["runs_done"], tiny["runs_total"]) == (2, {"done": 2}, 8, 8)
    assert tiny["report"].startswith("/files/tiny/report/index.html") and tiny["plots"] and tiny["tables"]
    assert (fit["states"], fit["failed"], fit["runs_done"], fit["report"]) == ({"failed": 1}, 1, 1, None)

    jobs = client.get("/api/experiments/tiny/jobs").json()["jobs"]
    assert sorted(j["seed"] for j in jobs) == [0, 1]
    for job in jobs:
        assert job["state"] == "done" and job["variants_done"] == 4 and job["problems"] == []
        for variant in job["variants"]:
            metrics = [json.loads(line) for line in
                       (experiments / "tiny" / "jobs" / job["key"] / variant["name"] / "metrics.jsonl").read_text().splitlines()]
            assert variant["curve"]["epoch"] == [m["epoch"] for m in metrics]
            assert variant["curve"]["val_metric"] == [m["val_acc"] for m in metrics]
            results = read_json(experiments / "tiny" / "jobs" / job["key"] / variant["name"] / "results.json")
            assert variant["test"] == results["test_acc"] and variant["state"] == "done"
    failed = client.get("/api/experiments/fit/jobs").json()["jobs"][0]
    assert failed["state"] == "failed" and failed["shown"] == "FAILED"
    assert failed["error"] == "ValueError: expert_classes names class 12, but the data has classes 0-2"
    bad = next(v for v in failed["variants"] if v["name"] == "guided_bad")
    assert bad["state"] == "failed" and "Traceback" in bad["traceback"] and bad["error"] == failed["error"]
    assert client.get("/api/experiments/fit/jobs?curves=false").json()["jobs"][0]["variants"][0].get("curve") is None


def test_a_submitted_job_takes_its_state_from_the_queue(experiments, tmp_path, monkeypatch):
    """What the queue knows and the disk cannot (queued, cancelled) is merged in; the disk wins for done."""
    from moelab.launch.base import QueueView
    from moelab.launch.slurm.backend import SlurmBackend
    from moelab.results.status import JobState

    root = copied(experiments, tmp_path, "tiny")
    done, waiting = job_keys(root, "tiny")
    for path in (root / "tiny" / "jobs" / waiting).iterdir():  # submitted: only its config.json is written
        if path.name != "config.json":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    view = QueueView(states={done: JobState.RUNNING, waiting: JobState.CANCELLED},
                     notes={waiting: "SLURM says CANCELLED (exit code 0:15)"}, nodes={waiting: "node7"})
    monkeypatch.setattr(SlurmBackend, "queue_view", classmethod(lambda cls, tree: view))
    monkeypatch.setattr(SlurmBackend, "failure_details", classmethod(lambda cls, tree, key: [f"log: slurm/{key}.err"]))
    jobs = {j["key"]: j for j in TestClient(create_app(Catalog(root=root))).get("/api/experiments/tiny/jobs").json()["jobs"]}
    assert jobs[done]["state"] == "done" and jobs[done]["queue_state"] == "running"
    cancelled = jobs[waiting]
    assert (cancelled["state"], cancelled["disk_state"], cancelled["node"]) == ("cancelled", "pending", "node7")
    assert cancelled["error"] == "SLURM says CANCELLED (exit code 0:15)"
    assert cancelled["details"] == [f"log: slurm/{waiting}.err"]


def test_partial_and_damaged_files_never_break_a_page(experiments, tmp_path):
    root = copied(experiments, tmp_path, "tiny")
    first, second = (ExperimentTree(root / "tiny").job(k) for k in job_keys(root, "tiny"))
    with open(first.variant("mlp").metrics_file, "a") as f:
        f.write('{"epoch": 2, "train_loss": NaN, "val_acc": Infinity}\n{"epoch": 3, "train_lo')  # diverged, then torn
    first.variant("moe").results_file.unlink()  # a variant still finishing
    second.status_file.write_text('{"key": "x", "state": "runn')  # half-written
    second.variant("moe_topk").results_file.write_text("{not json")
    (root / "tiny" / "jobs" / "0badc0ffee00").mkdir()
    (root / "tiny" / "jobs" / "0badc0ffee00" / "config.json").write_text("[1, 2")
    app = TestClient(create_app(Catalog(root=root)))

    listing = app.get("/api/experiments")
    assert listing.status_code == 200
    problems = "\n".join(listing.json()["experiments"][0]["problems"])
    assert "mlp/metrics.jsonl: skipped unreadable line(s) [4]" in problems
    assert "config.json: unreadable" in problems and "status.json: unreadable" in problems
    assert "moe_topk/results.json: unreadable" in problems
    jobs = {j["key"]: j for j in app.get("/api/experiments/tiny/jobs").json()["jobs"]}
    mlp = next(v for v in jobs[first.key]["variants"] if v["name"] == "mlp")
    assert mlp["curve"]["train_loss"][-1] is None and mlp["curve"]["val_metric"][-1] is None  # NaN as null
    assert next(v for v in jobs[first.key]["variants"] if v["name"] == "moe")["done"] is False
    assert jobs["0badc0ffee00"]["variants"] == [] and jobs["0badc0ffee00"]["problems"]
    assert app.get("/").status_code == 200
    # the runs that are whole still answer
    answer = app.post("/api/predict", json={"experiment": "tiny", "inputs": digits_raw()[0].tolist()})
    assert answer.status_code == 200
    assert {r["variant"] for r in answer.json()["runs"]} == {"mlp", "moe", "moe_topk", "moe_hard"}


def test_report_and_summary_files_are_served_and_names_cannot_escape(client, experiments, tmp_path):
    report = client.get("/files/tiny/report/index.html")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "../summary/learning_curves.png" in report.text  # the page's plots resolve under /files/tiny/summary/
    plot = client.get("/files/tiny/summary/learning_curves.png")
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
    summary = client.get("/api/experiments/tiny/summary").json()
    assert "variant" in summary["columns"] and len(summary["rows"]) == 4
    for url in ["/files/tiny/summary/..%2F..%2Ffit%2Fexperiment.yaml", "/files/tiny/summary/.cache.pkl",
                "/files/..%2Ftiny/summary/runs.csv", "/files/fit/report/index.html",
                "/api/experiments/..%2F..%2Fetc/jobs", "/api/experiments/%2Fetc/jobs", "/api/experiments/../jobs",
                "/files/tiny/summary/%2Fetc%2Fpasswd", "/api/experiments/nope/jobs"]:
        response = client.get(url)
        assert response.status_code == 404, url
        error_of(response)
    assert client.post("/files/tiny/summary/runs.csv").status_code == 405

    root = copied(experiments, tmp_path, "tiny")
    outside = tmp_path / "outside"
    (outside / "jobs").mkdir(parents=True)
    (outside / "secret.png").write_bytes(b"\x89PNG secret")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "tiny" / "summary" / "leak.png").symlink_to(outside / "secret.png")
    app = TestClient(create_app(Catalog(root=root)))
    assert [e["name"] for e in app.get("/api/experiments").json()["experiments"]] == ["tiny"]
    assert app.get("/api/experiments/linked/jobs").status_code == 404
    assert app.get("/files/tiny/summary/leak.png").status_code == 404
    assert "leak.png" not in json.dumps(app.get("/api/experiments").json())


# --- predictions ----------------------------------------------------------------------------------

def test_predictions_on_raw_test_digits_reproduce_each_runs_test_accuracy(client, experiments):
    """Raw digits through the API give the accuracy training measured on the standardised test split:
    preprocessing, weights, model parameters and routing all match what training used."""
    for key in job_keys(experiments, "tiny"):
        job = ExperimentTree(experiments / "tiny").job(key)
        config = read_json(job.config_file)["config"]
        settings = DataSettings(**config["data"])
        data = load_dataset(settings, config["seed"])
        raw = raw_rows(data.x_test, input_preprocessing(settings, config["seed"]))
        answer = client.post("/api/predict", json={"experiment": "tiny", "job": key, "inputs": raw.reshape(-1, 8, 8).tolist()})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["runs"]) == 4
        for run in answer.json()["runs"]:
            results = read_json(job.variant(run["variant"]).results_file)
            predicted = torch.tensor([p["predicted"] for p in run["predictions"]])
            accuracy = (predicted == data.y_test).float().mean().item()
            assert abs(accuracy - results["test_acc"]) <= 1 / len(raw) + 1e-9, run["variant"]
            first = run["predictions"][0]
            assert abs(sum(first["probabilities"]) - 1) < 1e-4 and len(first["probabilities"]) == 10
            params = next(v for v in config["variants"] if v["name"] == run["variant"])
            if run["model"] == "mlp":
                assert "experts" not in first
            else:
                k = 4 if run["model"] == "moe" else params.get("k", 1)  # soft routing: every expert, by weight
                assert len(first["experts"]) == len(first["expert_weights"]) == k
                assert len(set(first["experts"])) == k and first["expert_weights"] == sorted(first["expert_weights"], reverse=True)


def test_by_default_each_variant_answers_through_its_best_run_by_validation(client, experiments):
    runs = collect(experiments / "tiny", curves=False).runs
    best = runs.loc[runs.groupby("variant")["best_val_acc"].idxmax(), ["variant", "job"]]
    answer = client.post("/api/predict", json={"experiment": "tiny", "inputs": digits_raw()[:3].tolist()}).json()
    assert {(r["variant"], r["job"]) for r in answer["runs"]} == set(map(tuple, best.values))
    assert all(r["selected"].startswith("best validation acc of 2 finished run(s)") for r in answer["runs"])
    one = client.post("/api/predict", json={"experiment": "tiny", "variant": "moe", "inputs": digits_raw()[0].tolist()})
    assert [(r["variant"], r["job"]) for r in one.json()["runs"]] == [tuple(best[best.variant == "moe"].values[0])]
    key = job_keys(experiments, "tiny")[0]
    asked = client.post("/api/predict", json={"experiment": "tiny", "inputs": digits_raw()[0].tolist(),
                                             "runs": [{"job": key, "variant": "mlp"}, {"variant": "moe_hard"}]}).json()
    assert [(r["variant"], r["selected"]) for r in asked["runs"]][0] == ("mlp", "asked for")
    assert [r["variant"] for r in asked["runs"]] == ["mlp", "moe_hard"]
    listing = client.get("/api/experiments/tiny/runs").json()
    assert len(listing["runs"]) == 8 and len(listing["default"]) == 4
    assert listing["input_format"] == {"shape": [8, 8], "low": 0.0, "high": 16.0, "image": True, "channels": 1, "text": False,
                                       "description": "8x8 grey image, pixel values 0 (background) to 16 (ink)"}


def test_inputs_may_be_shaped_or_flat_one_or_many(client):
    raw = digits_raw()[:5]
    for inputs, count in [(raw[0].reshape(8, 8), 1), (raw[0], 1), (raw.reshape(5, 8, 8), 5), (raw, 5)]:
        answer = client.post("/api/predict", json={"experiment": "tiny", "variant": "mlp", "inputs": inputs.tolist()})
        assert answer.status_code == 200 and answer.json()["count"] == count
    shaped = client.post("/api/predict", json={"experiment": "tiny", "variant": "mlp", "inputs": raw.reshape(5, 8, 8).tolist()})
    assert shaped.json()["runs"][0]["predictions"] == answer.json()["runs"][0]["predictions"]


def test_regression_answers_with_outputs(client):
    answer = client.post("/api/predict", json={"experiment": "fit", "inputs": [[0.0, 0.0], [-1, 1]]})
    assert answer.status_code == 200, answer.text
    runs = answer.json()["runs"]
    assert [r["variant"] for r in runs] == ["mlp"]  # the failed variant has nothing to answer with
    assert [len(p["outputs"]) for p in runs[0]["predictions"]] == [3, 3] and "predicted" not in runs[0]["predictions"][0]
    assert runs[0]["task"] == "regression"


def test_pictures_are_converted_to_the_datasets_raw_input(client):
    def seen(data: bytes, name="drawing.png", **fields) -> np.ndarray:
        answer = client.post("/api/predict", data={"experiment": "tiny", **fields}, files={"image": (name, data)})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["runs"]) == 4
        return np.array(answer.json()["inputs"][0])

    drawn = seen(png(drawing()))
    assert drawn.shape == (8, 8) and drawn.min() == 0 and 10 < drawn.max() <= 16
    assert drawn[0].sum() > 3 * 16 and drawn[1:, 0].sum() < 16  # the bar is on top, the left edge is dark
    # ink on paper, light on dark, a transparent canvas and a JPEG all give the same input
    assert np.allclose(seen(png(drawing("white", "black"))), drawn, atol=0.5)
    transparent = drawing("black", (0, 0, 0, 0), mode="RGBA")
    assert np.allclose(seen(png(transparent)), drawn, atol=0.5)
    assert np.allclose(seen(png(drawing(), "JPEG"), "drawing.jpg"), drawn, atol=1.5)
    assert not np.allclose(seen(png(drawing()), invert="no"), drawn, atol=0.5)
    several = client.post("/api/predict", data={"experiment": "tiny", "variant": "moe_topk"},
                          files=[("image", ("a.png", png(drawing()))), ("image", ("b.png", png(drawing("white", "black"))))])
    assert [p["input"] for p in several.json()["runs"][0]["predictions"]] == ["a.png", "b.png"]


def malformed_requests(experiments: Path) -> list[tuple[str, dict, int, str]]:
    key = job_keys(experiments, "tiny")[0]
    digit = digits_raw()[0].tolist()
    json_body = lambda doc: {"json": doc}
    raw_body = lambda text, kind="application/json": {"content": text, "headers": {"content-type": kind}}
    return [
        ("wrong shape", json_body({"experiment": "tiny", "inputs": [[1.0, 2.0, 3.0]]}), 422, "shape [1, 3]"),
        ("NaN", raw_body('{"experiment": "tiny", "inputs": [%s]}' % ", ".join(["NaN"] + ["0"] * 63)), 422, "finite"),
        ("infinity", raw_body('{"experiment": "tiny", "inputs": [%s]}' % ", ".join(["0"] * 63 + ["1e400"])), 422, "finite"),
        ("ragged", json_body({"experiment": "tiny", "inputs": [[1.0] * 64, [1.0] * 3]}), 422, "not a regular array"),
        ("strings", json_body({"experiment": "tiny", "inputs": ["a"] * 64}), 422, "numbers only"),
        ("nulls", json_body({"experiment": "tiny", "inputs": [None] * 64}), 422, "numbers only"),
        ("0-255 scale", json_body({"experiment": "tiny", "inputs": [255.0] * 64}), 422, "in [0, 16]"),
        ("empty", json_body({"experiment": "tiny", "inputs": []}), 422, "no inputs"),
        ("no inputs", json_body({"experiment": "tiny"}), 422, "no inputs"),
        ("too many", json_body({"experiment": "tiny", "inputs": [[0] * 64] * (MAX_INPUTS + 1)}), 413, "at most"),
        ("not JSON", raw_body('{"experiment": "tiny", "inputs": [1, 2'), 400, "not valid JSON"),
        ("deep nesting", raw_body("[" * 100_000 + "]" * 100_000), 400, "not valid JSON"),
        ("JSON list", json_body([digit]), 422, "JSON object"),
        ("misspelt key", json_body({"experiment": "tiny", "input": digit}), 422, "unknown key(s) 'input'"),
        ("no experiment", json_body({"inputs": digit}), 422, "name the experiment"),
        ("unknown experiment", json_body({"experiment": "nope", "inputs": digit}), 404, "no experiment 'nope'"),
        ("parent folder", json_body({"experiment": "../tiny", "inputs": digit}), 404, "no experiment '../tiny'"),
        ("absolute path", json_body({"experiment": str(experiments / "tiny"), "inputs": digit}), 404, "no experiment"),
        ("dot dot", json_body({"experiment": "..", "inputs": digit}), 404, "no experiment"),
        ("unknown job", json_body({"experiment": "tiny", "job": "0123456789ab", "inputs": digit}), 404, "no job"),
        ("job escaping", json_body({"experiment": "tiny", "job": "../../fit/jobs", "inputs": digit}), 404, "no job"),
        ("unknown variant", json_body({"experiment": "tiny", "job": key, "variant": "nope", "inputs": digit}), 404,
         "has no variant 'nope'"),
        ("unknown variant, any job", json_body({"experiment": "tiny", "variant": "nope", "inputs": digit}), 404,
         "no finished run of variant 'nope'"),
        ("failed variant", json_body({"experiment": "fit", "variant": "guided_bad", "inputs": [0, 0]}), 404, "guided_bad"),
        ("number as job", json_body({"experiment": "tiny", "job": 7, "inputs": digit}), 422, "'job' must be a string"),
        ("runs not a list", json_body({"experiment": "tiny", "runs": "mlp", "inputs": digit}), 422, "'runs' must be"),
        ("bad invert", json_body({"experiment": "tiny", "invert": "maybe", "inputs": digit}), 422, "invert must be"),
        ("plain text", raw_body("0,0,0", "text/plain"), 415, "application/json"),
        ("not a picture", {"data": {"experiment": "tiny"}, "files": {"image": ("notes.png", b"these are words")}}, 422,
         "notes.png is not a picture"),
        ("huge picture", {"data": {"experiment": "tiny"}, "files": {"image": ("big.png", png(Image.new("1", (8000, 8000))))}},
         413, "at most 40,000,000 are read"),
        ("picture for coordinates", {"data": {"experiment": "fit"}, "files": {"image": ("d.png", png(drawing()))}}, 422,
         "not images"),
        ("picture and array", {"data": {"experiment": "tiny", "inputs": json.dumps(digit)},
                               "files": {"image": ("d.png", png(drawing()))}}, 422, "not both"),
        ("multipart without boundary", raw_body("garbage", "multipart/form-data"), 400,
         "the multipart body cannot be read: Missing boundary"),
        ("multipart without fields", raw_body("--x\r\nnonsense", "multipart/form-data; boundary=x"), 422,
         "name the experiment"),
    ]


def test_malformed_predict_requests_get_a_4xx_json_error_naming_the_problem(client, experiments):
    for name, request, status, words in malformed_requests(experiments):
        response = client.post("/api/predict", **request)
        assert response.status_code == status, (name, response.text)
        assert words in error_of(response), (name, response.text)
    assert client.post("/api/predict", json={"experiment": "tiny", "inputs": digits_raw()[0].tolist()}).status_code == 200


def test_bodies_over_the_limit_are_refused_before_they_are_read(experiments):
    small = TestClient(create_app(Catalog(root=experiments), max_body_bytes=64 * 1024))
    big = {"experiment": "tiny", "inputs": [[1.0] * 64] * 2000}
    declared = small.post("/api/predict", json=big)
    assert declared.status_code == 413 and "at most 65,536" in error_of(declared)

    def chunks():  # no Content-Length: counted while read
        body = json.dumps(big).encode()
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]

    streamed = small.post("/api/predict", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "at most 65,536" in error_of(streamed)
    upload = small.post("/api/predict", data={"experiment": "tiny"}, files={"image": ("big.png", b"\0" * 100_000)})
    assert upload.status_code == 413
    assert small.post("/api/predict", json={"experiment": "tiny", "inputs": digits_raw()[0].tolist()}).status_code == 200


def test_damaged_weights_and_unexpected_errors_answer_in_json(experiments, tmp_path, monkeypatch):
    root = copied(experiments, tmp_path, "tiny")
    key = job_keys(root, "tiny")[0]
    (root / "tiny" / "jobs" / key / "moe" / "weights" / "best.pt").write_bytes(b"not a state dict")
    app = create_app(Catalog(root=root))
    client = TestClient(app, raise_server_exceptions=False)
    digit = digits_raw()[0].tolist()
    damaged = client.post("/api/predict", json={"experiment": "tiny", "job": key, "variant": "moe", "inputs": digit})
    assert damaged.status_code == 409 and "the model cannot be loaded" in error_of(damaged)

    def broken(*args, **kwargs):
        raise RuntimeError("a secret detail from deep inside")

    monkeypatch.setattr(app.state.predictor, "answer", broken)
    crashed = client.post("/api/predict", json={"experiment": "tiny", "inputs": digit})
    assert crashed.status_code == 500
    assert error_of(crashed) == "internal error (RuntimeError); the server's log has the details"
    assert client.get("/api/experiments").status_code == 200


# --- the predict command ---------------------------------------------------------------------------

def test_predict_command_writes_predictions_and_routings_for_csv_npy_and_pictures(client, experiments, tmp_path, capsys):
    raw = digits_raw()[:4]
    np.savetxt(tmp_path / "digits.csv", raw, delimiter=",", header=",".join(f"pixel_{i}" for i in range(64)), comments="")
    np.save(tmp_path / "digits.npy", raw.reshape(4, 8, 8))
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    (pictures / "a.png").write_bytes(png(drawing()))
    (pictures / "b.jpg").write_bytes(png(drawing("white", "black"), "JPEG"))
    expected = client.post("/api/predict", json={"experiment": "tiny", "inputs": raw.tolist()}).json()["runs"]
    for source in ("digits.csv", "digits.npy"):
        out = tmp_path / f"{source}.predictions.csv"
        assert predict_cli.main([str(tmp_path / source), "--experiment", str(experiments / "tiny"), "--out", str(out)]) == 0
        table = pd.read_csv(out, dtype={"job": str})
        assert len(table) == 4 * 4 and list(table["input"][:4]) == [0, 0, 0, 0]
        for run in expected:
            rows = table[table.variant == run["variant"]]
            assert list(rows["job"]) == [run["job"]] * 4
            assert list(rows["predicted"]) == [p["predicted"] for p in run["predictions"]]
            assert np.allclose(rows[[f"p_{c}" for c in range(10)]].to_numpy(),
                               [p["probabilities"] for p in run["predictions"]], atol=1e-5)
            if run["model"] == "mlp":
                assert rows["experts"].isna().all()
            else:
                assert list(rows["experts"].astype(str)) == [" ".join(map(str, p["experts"])) for p in run["predictions"]]
    out = tmp_path / "pictures.csv"
    key = job_keys(experiments, "tiny")[1]
    code = predict_cli.main([str(pictures), "--experiment", str(experiments / "tiny"), "--job", key, "--variant",
                             "moe_topk", "--out", str(out)])
    assert code == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [(r["input"], r["job"], r["variant"]) for r in rows] == [("a.png", key, "moe_topk"), ("b.jpg", key, "moe_topk")]
    assert all(len(r["experts"].split()) == 2 and len(r["expert_weights"].split()) == 2 for r in rows)
    (pictures / "notes.txt").write_text("not a picture")
    assert predict_cli.main([str(pictures), "--experiment", str(experiments / "tiny"), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "not pictures" in error and "notes.txt" in error


def test_predict_entry_script_runs_as_a_user_would(experiments, tmp_path):
    np.save(tmp_path / "one.npy", digits_raw()[0])
    out = tmp_path / "out.csv"
    done = subprocess.run([sys.executable, str(REPO / "run" / "predict.py"), str(tmp_path / "one.npy"), "--experiment",
                           str(experiments / "tiny"), "--variant", "moe", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "1 input(s) x 1 run(s)" in done.stdout and len(out.read_text().splitlines()) == 2
    wrong = subprocess.run([sys.executable, str(REPO / "run" / "predict.py"), str(tmp_path / "one.npy"), "--experiment",
                            str(experiments / "nope")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert wrong.returncode == 2 and "not an experiment folder" in wrong.stderr


# --- a real server --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(log: Path, *args: str, deadline_s: float = 180):
    """`python -m moelab.serve ARGS` on a free port; yields its address once it answers."""
    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "moelab.serve", *args, "--port", str(port)], stdout=out,
                                   stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + deadline_s
        while True:
            assert process.poll() is None, f"the server exited: {log.read_text()}"
            try:
                if httpx.get(f"{base}/api/experiments", timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the server did not answer within {deadline_s} s: {log.read_text()}"
            time.sleep(0.2)  # polling interval while it starts
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def live(experiments, tmp_path_factory):
    with server(tmp_path_factory.mktemp("logs") / "serve.log", "--experiments-dir", str(experiments),
                "--max-body-mb", "0.5") as base:
        yield base


def test_a_real_server_answers_over_http_and_survives_bad_requests(live, experiments):
    digit = digits_raw()[0].tolist()
    with httpx.Client(base_url=live, timeout=120) as http:
        assert "moelab dashboard" in http.get("/").text and "drawing pad" in http.get("/predict").text
        assert http.get("/static/dashboard.js").status_code == 200
        assert http.post("/api/predict", json={"experiment": "tiny", "inputs": digit}).status_code == 200
        for name, request, status, words in malformed_requests(experiments):
            response = http.post("/api/predict", **request)
            assert response.status_code == status and words in error_of(response), (name, response.text)
        huge = http.post("/api/predict", content=b"[" + b"0," * 400_000 + b"0]", headers={"content-type": "application/json"})
        assert huge.status_code == 413 and "at most 524,288" in error_of(huge)
        answer = http.post("/api/predict", json={"experiment": "tiny", "inputs": digit})
        assert answer.status_code == 200 and len(answer.json()["runs"]) == 4


def listening_addresses(port: int) -> set[str] | None:
    """The IPv4 and IPv6 addresses a port listens on, from the kernel's socket tables (Linux)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            return None
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # little-endian words
                found.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words))
    return found


def test_serve_mode_of_the_launch_script_binds_to_this_machine(experiments, tmp_path):
    """`launch_experiment.sh serve` reaches the app (the environment bootstrap of the script is the
    launcher's; here the script runs with the interpreter the tests run in)."""
    here = subprocess.run([sys.executable, "-c", "import moelab, os; print(os.path.realpath(moelab.__file__))"],
                          capture_output=True, text=True).stdout.strip()
    if here != str((REPO / "src" / "moelab" / "__init__.py").resolve()):
        pytest.skip("moelab does not import from this checkout here: the script would build its own .venv first")
    port = free_port()
    log = tmp_path / "script.log"
    with open(log, "w") as out:
        process = subprocess.Popen(["bash", str(REPO / "run" / "launch_experiment.sh"), "serve", str(experiments / "tiny"),
                                    "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()
            try:
                listing = httpx.get(f"http://127.0.0.1:{port}/api/experiments", timeout=10)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)  # polling interval while it starts
        assert [e["name"] for e in listing.json()["experiments"]] == ["tiny"]
        assert f"http://127.0.0.1:{port}/" in log.read_text()
        assert listening_addresses(port) in ({"127.0.0.1"}, None)  # None: no /proc to read it from
    finally:
        process.terminate()
        process.wait(timeout=30)


# --- in a browser ---------------------------------------------------------------------------------

def chromium_path() -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        message = "Debian's chromium is not installed (run/test.sh installs it when run as root)"
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests are required in CI: {message}")
        pytest.skip(message)
    return chromium


@contextlib.contextmanager
def browser_page():
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 950})
        page.set_default_timeout(300_000)  # conditions are awaited; a loaded machine needs a generous deadline
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"failed to load {r.url}"))
        try:
            yield page, errors
        finally:
            browser.close()


@pytest.mark.browser
def test_dashboard_lists_jobs_failures_and_the_report_in_chromium(live, tmp_path):
    with browser_page() as (page, errors):
        page.goto(f"{live}/?refresh=1")
        page.wait_for_selector("#jobs-fit tr.job")
        page.wait_for_selector("#jobs-tiny tr.job")
        assert page.locator("#jobs-tiny .job-state[data-state=done]").count() == 2
        assert page.locator("#jobs-tiny svg.curve polyline.val-metric").count() == 8
        fit = page.inner_text("#exp-fit")
        assert "FAILED" in fit and "ValueError: expert_classes names class 12, but the data has classes 0-2" in fit
        page.click("#jobs-fit summary:has-text('traceback of guided_bad')")
        assert "Traceback (most recent call last)" in page.inner_text("#jobs-fit pre")
        page.click("#report-tiny summary")
        page.wait_for_function("[...document.querySelectorAll('#report-tiny img')].every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("#report-tiny img").count() >= 5
        page.click("#summary-tiny summary")
        assert page.locator("#summary-tiny tbody tr").count() == 4
        page.wait_for_function("document.getElementById('connection').textContent.includes('updated')")
        with page.expect_popup() as report_page:
            page.click("#head-tiny a:has-text('report')")
        report = report_page.value
        report.wait_for_load_state("load")
        images = report.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
        assert len(images) >= 5 and all(images)
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        assert errors == []


@pytest.mark.browser
def test_drawing_a_digit_shows_every_variants_answer_and_its_experts(live, tmp_path):
    with browser_page() as (page, errors):
        page.goto(f"{live}/predict?experiment=tiny")
        page.wait_for_function("document.getElementById('message').textContent.includes('Draw')")
        box = page.locator("#pad").bounding_box()
        stroke = [(60, 50), (220, 50), (120, 250)]  # a 7, drawn with the mouse
        with page.expect_response(lambda r: r.url.endswith("/api/predict")) as answered:
            page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
            page.mouse.down()
            for (x0, y0), (x1, y1) in zip(stroke, stroke[1:]):
                for step in range(1, 13):
                    page.mouse.move(box["x"] + x0 + (x1 - x0) * step / 12, box["y"] + y0 + (y1 - y0) * step / 12)
            page.mouse.up()
        answer = answered.value.json()
        page.wait_for_selector(".answer")
        shown = {card.get_attribute("data-variant"): card for card in page.locator(".answer").all()}
        assert set(shown) == {"mlp", "moe", "moe_topk", "moe_hard"}
        for run in answer["runs"]:
            card = shown[run["variant"]]
            prediction = run["predictions"][0]
            assert card.locator(".predicted").get_attribute("data-predicted") == str(prediction["predicted"])
            experts = [int(e.get_attribute("data-expert")) for e in card.locator(".expert").all()]
            assert experts == prediction.get("experts", [])
            if run["model"] == "mlp":
                assert "dense model: no experts" in card.inner_text()
            else:
                assert experts and ("top-" in card.inner_text() or "all 4 experts" in card.inner_text())
        seen = np.array(answer["inputs"][0])
        assert seen.shape == (8, 8) and seen[0].sum() > 3 * 16  # the bar of the 7 is at the top
        assert page.locator("#seen canvas").count() == 1
        page.screenshot(path=str(tmp_path / "predict.png"), full_page=True)
        assert errors == []


@pytest.mark.browser
def test_dashboard_shows_a_job_go_from_running_to_done_while_it_trains(tmp_path):
    chromium_path()
    root = tmp_path / "experiments"
    root.mkdir()
    with server(tmp_path / "serve.log", "--experiments-dir", str(root)) as base, browser_page() as (page, errors):
        page.goto(f"{base}/?refresh=0.5")
        page.wait_for_selector("text=No experiments yet")
        training = start_launch(root, SLOW)
        try:
            page.wait_for_selector("#jobs-slow .job-state[data-state=running]")
            # a running variant's curve grows on screen while the job still runs
            page.wait_for_function("""() => {
                const running = document.querySelector('#jobs-slow .job-state[data-state=running]');
                const card = document.querySelector('#jobs-slow .variant.running');
                return running && card && card.querySelector('polyline.val-metric') &&
                       card.querySelector('polyline.val-metric').getAttribute('points').split(' ').length >= 2;
            }""")
            page.wait_for_selector("#jobs-slow .job-state[data-state=done]")
            assert training.wait(timeout=600) == 0
        finally:
            if training.poll() is None:
                training.terminate()
                training.wait(timeout=60)
        cards = page.locator("#jobs-slow .variant.done")
        assert cards.count() == 2 and "40 ep" in cards.first.inner_text()
        # the experiment's head reads the jobs through a pass shared for a few seconds: it catches up
        page.wait_for_function("() => document.querySelector('#head-slow').innerText.includes('runs done 2/2')")
        assert errors == []
