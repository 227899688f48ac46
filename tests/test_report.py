"""create-plots: tables and plots from a tree, partial trees included."""

from __future__ import annotations

import shutil

import pandas as pd

from moelab.report import write_report
from moelab.report.cli import main
from moelab.report.tables import to_markdown
from test_results import copy_job, finished_job  # noqa: F401  (fixture)


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
    assert "skipped learning_curves.png: no per-epoch metrics yet" in out
    assert not list((tmp_path / "empty" / "summary").glob("*.png"))


def test_create_plots_rejects_a_folder_that_is_not_an_experiment(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no jobs/ inside" in capsys.readouterr().err


def test_markdown_table_escapes_and_formats():
    table = pd.DataFrame({"variant": ["a|b"], "x": [0.123456], "big": [123456.0], "gap": [float("nan")]})
    assert to_markdown(table).splitlines()[2] == "| a\\|b | 0.1235 | 1.235e+05 |  |"
