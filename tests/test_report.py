"""create-plots: tables and plots from a tree, partial trees included."""

from __future__ import annotations

import shutil

import pytest

import pandas as pd

from moelab.report import write_report
from moelab.report.cli import main
from moelab.report.tables import to_markdown


def test_report_on_a_partial_tree_lists_what_is_missing(finished_job, tmp_path, capsys):  # noqa: F811
    job = copy_job(finished_job, tmp_path)
    shutil.rmtree(job.variant("moe_topk").path)
    (job.variant("moe").results_file).unlink()
    write_report([tmp_path / "experiment"])
    summary = pd.read_csv(tmp_path / "experiment" / "summary" / "summary.csv")
    assert set(summary["variant"]) == {"mlp", "moe_hard"}
    markdown = (tmp_path / "experiment" / "summary" / "summary.md").read_text()
    assert f"job {job.key} variant moe_topk" in markdown and f"job {job.key} variant moe:" in markdown
    assert "2 of 4 runs finished" in capsys.readouterr().out


def test_report_with_nothing_finished_skips_plots_with_a_reason(tmp_path, capsys):
    (tmp_path / "empty" / "jobs").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    assert "skipped learning_curves: no per-epoch metrics yet" in out
    assert "No finished runs yet" in (tmp_path / "empty" / "report" / "index.html").read_text()
    assert not list((tmp_path / "empty" / "summary").glob("*.png"))


def test_create_plots_rejects_a_folder_that_is_not_an_experiment(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no jobs/ inside" in capsys.readouterr().err


def test_markdown_table_escapes_and_formats():
    table = pd.DataFrame({"variant": ["a|b"], "x": [0.123456], "big": [123456.0], "gap": [float("nan")]})
    assert to_markdown(table).splitlines()[2] == "| a\\|b | 0.1235 | 1.235e+05 |  |"


def test_the_html_report_loads_in_chromium_without_errors(finished_job, tmp_path):  # noqa: F811
    import os

    from conftest import REPO, copy_job

    chromium = shutil.which("chromium")
    if chromium is None:
        message = "Debian's chromium is not installed (run/test.sh installs it when run as root)"
        if os.environ.get("CI"):
            pytest.fail(f"the browser test is required in CI: {message}")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    job = copy_job(finished_job, tmp_path)
    (job.variant("moe").results_file).unlink()  # a partial tree: the report must say so up front
    write_report([tmp_path / "experiment"])
    page_file = tmp_path / "experiment" / "report" / "index.html"
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"failed to load {r.url}"))
        page.goto(page_file.as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
        first_screen = page.inner_text("body")[:1500]
        artifacts = REPO / "experiments" / "test-artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(artifacts / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert len(images) >= 5 and all(ok for _, ok in images), images
    assert "unfinished, failed or unreadable" in first_screen and "has the best test acc" in first_screen
    assert (artifacts / "report.png").stat().st_size > 50_000


def test_damaged_analysis_files_cost_their_plot_not_the_report(finished_job, tmp_path, capsys):  # noqa: F811
    job = copy_job(finished_job, tmp_path)
    for variant in ("moe", "moe_topk", "moe_hard"):
        (job.variant(variant).path / "analysis" / "utilisation.csv").write_text("epoch,expert\n1,not-a-number,extra\n")
    (job.variant("mlp").path / "analysis" / "inference.json").write_text("{torn")
    write_report([tmp_path / "experiment"])
    out = capsys.readouterr().out
    assert "skipped utilisation: could not draw it" in out
    assert (tmp_path / "experiment" / "report" / "index.html").is_file()
    assert (tmp_path / "experiment" / "summary" / "latency_vs_accuracy.png").is_file()  # the other variants' figures
