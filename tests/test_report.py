"""create-plots: tables and plots from a tree, partial trees included, and the statistics behind
the verdicts (paired differences, intervals, Holm's adjustment, too few seeds)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import matplotlib.colors
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import moelab.report
from moelab.report.write import write_report
from moelab.report.cli import main
from moelab.report.data import report_data_from_runs
from moelab.report.html import headline
from moelab.report.stats import sign_flip_p_value
from moelab.report import html
from moelab.report.tables import (BETTER, NOT_DISTINGUISHABLE, WORSE, add_baseline_differences, ci95, collapse_warning,
                                  comparisons_note, holm, small_sample_warning, summarise, to_markdown, verdict)
from moelab.results import ExperimentTree, JobTree
from conftest import TINY, copy_job, launch


def test_report_on_a_partial_tree_lists_what_is_missing(finished_job, tmp_path, capsys):  # noqa: F811
    job = copy_job(finished_job, tmp_path)
    shutil.rmtree(job.variant("moe_topk").path)
    (job.variant("moe").results_file).unlink()
    write_report([tmp_path / "experiment"])
    summary = pd.read_csv(tmp_path / "experiment" / "summary" / "summary.csv")
    assert set(summary["variant"]) == {"mlp", "moe_hard"}
    markdown = (tmp_path / "experiment" / "summary" / "summary.md").read_text()
    assert f"job {job.key} variant moe_topk" in markdown and f"job {job.key} variant moe:" in markdown
    assert "1 of 1 comparison(s) with mlp cannot support a verdict (1 with fewer than 3 paired seeds)" in markdown
    assert "2 of 4 runs finished" in capsys.readouterr().out


def test_report_with_nothing_finished_skips_plots_with_a_reason(tmp_path, capsys):
    (tmp_path / "empty" / "jobs").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    assert "skipped learning_curves: no per-epoch metrics yet" in out
    assert "No finished runs yet" in (tmp_path / "empty" / "report" / "index.html").read_text()
    assert not list((tmp_path / "empty" / "summary").glob("*.png"))
    markdown = (tmp_path / "empty" / "summary" / "summary.md").read_text()
    assert markdown.count("## Plots not drawn") == 1 and "- learning_curves: no per-epoch metrics yet" in markdown


def test_create_plots_rejects_a_folder_that_is_not_an_experiment(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no jobs/ inside" in capsys.readouterr().err
    assert main([str(tmp_path / "typo")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_create_plots_over_experiments_star_skips_what_is_not_an_experiment(finished_job, tmp_path, capsys):  # noqa: F811
    job = copy_job(finished_job, tmp_path)
    experiment = job.path.parent.parent
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "x.yaml").write_text("name: x\n")
    assert main([str(tmp_path / "configs"), str(experiment)]) == 0
    assert f"skipped {tmp_path / 'configs'}: not an experiment folder" in capsys.readouterr().out
    assert ExperimentTree(experiment).report_file.is_file()
    assert not (tmp_path / "configs" / "report").exists() and not (tmp_path / "configs" / "summary").exists()


def test_markdown_table_escapes_and_formats():
    table = pd.DataFrame({"variant": ["a|b"], "x": [0.123456], "big": [123456.0], "gap": [float("nan")]})
    assert to_markdown(table).splitlines()[2] == "| a\\|b | 0.1235 | 1.235e+05 |  |"


@pytest.mark.browser
def test_the_html_report_loads_in_chromium_without_errors(finished_job, tmp_path):  # noqa: F811
    import os

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
        screenshot = tmp_path / "report.png"
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert errors == []
    assert len(images) >= 5 and all(ok for _, ok in images), images
    assert "unfinished, failed or unreadable" in first_screen and "has the best test acc" in first_screen
    assert "No verdict for some comparisons" in first_screen  # one job: a single seed per comparison
    assert "paired bootstrap over seeds and test examples" in first_screen  # the method, up front
    assert screenshot.stat().st_size > 50_000


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


def test_one_collect_feeds_tables_plots_and_page_and_summary_md_is_written_once(finished_job, tmp_path, monkeypatch):  # noqa: F811
    copy_job(finished_job, tmp_path)
    collects, writes = [], []
    real_collect, real_write_text = moelab.report.data.collect, moelab.report.write.write_text
    monkeypatch.setattr(moelab.report.data, "collect", lambda *a, **k: collects.append(k) or real_collect(*a, **k))
    monkeypatch.setattr(moelab.report.write, "write_text", lambda path, text: writes.append((path, text)) or real_write_text(path, text))
    write_report([tmp_path / "experiment"])
    assert len(collects) == 1 and collects[0].get("curves", True) and collects[0].get("cache")
    summary = ExperimentTree(tmp_path / "experiment").summary
    markdown = [text for path, text in writes if path == summary.markdown]
    assert len(markdown) == 1 and markdown[0] == summary.markdown.read_text()  # one atomic write, nothing appended
    assert "## Plots not drawn\n- reconstructions: not an image_fit experiment" in markdown[0]
    assert summary.plot("learning_curves").is_file()  # the curves came from that one read


def test_report_code_takes_every_file_name_from_the_tree():
    """File names live in moelab.results.tree only, so that renaming one there renames it everywhere."""
    names = re.compile(r"[\w*}]\.(csv|md|tex|jsonl?|yaml|png|svg|html|pkl)\b|[\"'/]analysis[\"'/]")
    for source in Path(moelab.report.__file__).parent.glob("*.py"):
        found = [m.group(0) for m in names.finditer(source.read_text())]
        assert not found, f"{source.name} names files itself: {found}"


# statistics: hand-made runs with known numbers; each job (one seed at one grid point) runs every variant

BASELINE_ACC = (0.80, 0.82, 0.78, 0.81, 0.79)


def hand_made_runs(differences: dict[str, list[float]], baseline_acc=BASELINE_ACC, grid_point=None) -> pd.DataFrame:
    """Runs of 'mlp' (the dense baseline) and of each variant, whose test_acc is the baseline's plus its difference."""
    rows = []
    for seed, acc in enumerate(baseline_acc):
        point = {} if grid_point is None else {"variants.*.num_experts": grid_point}
        job = {"job": f"seed{seed}-{grid_point}", "seed": seed, "state": "done", "metric": "acc", **point}
        rows.append({**job, "variant": "mlp", "model": "mlp", "test_acc": acc})
        rows += [{**job, "variant": name, "model": "moe", "test_acc": acc + diff[seed]} for name, diff in differences.items()]
    return pd.DataFrame(rows)


def report_of(runs: pd.DataFrame, tmp_path, grid_axes=()):
    return report_data_from_runs(ExperimentTree(tmp_path / "e"), runs, pd.DataFrame(), ["seed", *grid_axes], [])


def test_differences_are_paired_within_the_job_and_a_missing_baseline_drops_its_pair():
    runs = hand_made_runs({"moe": [0.02, 0.04, 0.03, 0.05, 0.01]})
    runs.loc[(runs["seed"] == 4) & (runs["variant"] == "mlp"), "state"] = "failed"
    runs, baseline = add_baseline_differences(runs, "acc")
    assert baseline == "mlp"
    moe = runs[runs["variant"] == "moe"].set_index("seed")["diff_test_acc"]
    assert moe.iloc[:4].tolist() == pytest.approx([0.02, 0.04, 0.03, 0.05]) and math.isnan(moe[4])
    table = summarise(runs, ["seed"]).set_index("variant")
    assert table.loc["moe", "n"] == 5 and table.loc["moe", "diff_test_acc_n"] == 4  # 5 runs, 4 pairs
    assert table.loc["moe", "diff_test_acc_mean"] == pytest.approx(0.035)
    assert table.loc["moe", "test_acc_mean"] == pytest.approx(np.mean(BASELINE_ACC) + 0.03)


def test_interval_is_student_t_and_p_value_is_the_sign_flip_test_on_the_paired_differences():
    diffs = [0.02, 0.04, 0.03, 0.05, 0.01]
    runs, _ = add_baseline_differences(hand_made_runs({"moe": diffs}), "acc")
    moe = summarise(runs, ["seed"]).set_index("variant").loc["moe"]
    sd = np.std(diffs, ddof=1)
    assert moe["diff_test_acc_std"] == pytest.approx(sd)
    low, high = stats.t.interval(0.95, len(diffs) - 1, loc=np.mean(diffs), scale=sd / math.sqrt(len(diffs)))
    assert moe["diff_test_acc_ci95"] == pytest.approx((high - low) / 2)
    assert moe["diff_test_acc_p"] == pytest.approx(2 / 2 ** 5)  # five differences of one sign: the two extremes of 32


def test_ci95_is_the_t_half_width_and_undefined_below_two_values():
    assert ci95(0.1, 4) == pytest.approx(stats.t.ppf(0.975, 3) * 0.1 / 2)
    assert ci95(0.1, 2) == pytest.approx(12.7062 * 0.1 / math.sqrt(2), rel=1e-5)
    assert math.isnan(ci95(0.1, 1)) and math.isnan(ci95(float("nan"), 3))


def test_holm_multiplies_the_i_th_smallest_by_k_minus_i_plus_1_and_keeps_the_order():
    adjusted = holm([0.01, 0.04, 0.03, float("nan")])  # no test: not counted in k = 3
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(adjusted[3])  # 0.04 * 1 < 0.03 * 2: raised
    assert holm([0.5, 0.6]).tolist() == [1.0, 1.0]  # capped at 1
    assert holm([0.02]).tolist() == [0.02]


def test_verdict_words():
    assert verdict(0.03, 0.01, 8, 0.01) == BETTER == "better"
    assert verdict(-0.03, 0.01, 8, 0.01) == WORSE == "worse"
    assert verdict(0.03, 0.05, 8, 0.01) == BETTER  # Holm rejects at adjusted p <= alpha
    assert verdict(0.03, 0.06, 8, 0.01) == verdict(0.03, float("nan"), 8, 0.01) == NOT_DISTINGUISHABLE
    assert NOT_DISTINGUISHABLE == "not distinguishable"
    # degenerate comparisons get no verdict whatever their p-value
    assert verdict(0.03, 0.0, 2, 0.01) == verdict(0.03, 0.0, 8, 0.0) == NOT_DISTINGUISHABLE


EIGHT_SEEDS = (0.80, 0.82, 0.78, 0.81, 0.79, 0.80, 0.83, 0.77)


def test_holm_makes_two_nominally_significant_variants_not_distinguishable(tmp_path):
    differences = {"strong": [0.10, 0.11, 0.09, 0.10, 0.12, 0.11, 0.10, 0.09],
                   "weaker": [-0.10, -0.11, -0.09, -0.12, -0.10, -0.11, -0.09, -0.10],
                   "weak_a": [0.02, 0.035, 0.01, 0.015, 0.03, 0.02, 0.025, -0.015],  # p = 8/256
                   "weak_b": [0.02, 0.035, 0.01, 0.015, 0.03, 0.02, 0.025, -0.02]}  # p = 12/256
    data = report_of(hand_made_runs(differences, EIGHT_SEEDS), tmp_path)
    table = data.table.set_index("variant")
    raw = {name: sign_flip_p_value(diff) for name, diff in differences.items()}
    assert raw["strong"] == raw["weaker"] == pytest.approx(2 / 256)  # every seed of one sign
    assert 0.025 < raw["weak_a"] < raw["weak_b"] < 0.05  # each alone would be called better
    assert table.loc[list(raw), "diff_test_acc_p"].tolist() == pytest.approx(list(raw.values()), rel=1e-6)
    # Holm over k = 4: weak_a is 3rd smallest (x 2), weak_b 4th (x 1, raised to weak_a's)
    assert table.loc["weak_a", "diff_test_acc_p_holm"] == pytest.approx(2 * raw["weak_a"], rel=1e-6)
    assert table.loc["weak_b", "diff_test_acc_p_holm"] == pytest.approx(2 * raw["weak_a"], rel=1e-6)
    assert table["diff_test_acc_verdict"].to_dict() == {"mlp": "baseline", "strong": "better", "weaker": "worse",
                                                        "weak_a": "not distinguishable", "weak_b": "not distinguishable"}
    assert data.readable.set_index("variant").loc["weak_a", "p (Holm)"] == f"{2 * raw['weak_a']:.2g}"
    box = headline(data)
    assert "<b>strong</b> has the best test acc" in box and ": <b>better</b>" in box
    assert "Holm-adjusted over 4 comparison(s) at family-wise 5 %" in box
    assert small_sample_warning(data.table, "acc", "mlp") is None  # 8 seeds, all with spread


def test_two_seeds_with_identical_differences_never_give_a_verdict(tmp_path):
    """Accuracy on 270 test images moves in steps of 1/270: two seeds often give the same difference."""
    step = 1 / 270
    for differences in ([step, step], [-step, -step], [3 * step, 3 * step, 3 * step, 3 * step, 3 * step]):
        data = report_of(hand_made_runs({"moe": differences}, BASELINE_ACC[:len(differences)]), tmp_path)
        moe = data.table.set_index("variant").loc["moe"]
        assert moe["diff_test_acc_std"] == 0 and moe["diff_test_acc_verdict"] == NOT_DISTINGUISHABLE
        warning = small_sample_warning(data.table, "acc", "mlp")
        reason = "fewer than 3 paired seeds" if len(differences) < 3 else "every seed gives the same difference"
        page = html.render(data, [], {})
        assert reason in warning and reason in page[:page.index("<h2>")]  # on the first screen
        verdicts = re.findall(r"<b>(better|worse)</b>", page)
        assert not verdicts and "better" not in data.readable.to_string() and "worse" not in data.readable.to_string()


def test_a_real_difference_over_ten_seeds_is_still_declared(tmp_path):
    noise = [0.004, -0.003, 0.002, 0.0, -0.004, 0.003, -0.002, 0.001, 0.0, -0.001]
    baseline = [0.80 + n for n in noise]
    up = report_of(hand_made_runs({"moe": [0.03 + n / 2 for n in noise]}, baseline), tmp_path)
    down = report_of(hand_made_runs({"moe": [-0.03 + n / 2 for n in noise]}, baseline), tmp_path)
    assert up.table.set_index("variant").loc["moe", "diff_test_acc_p"] == pytest.approx(2 / 1024)
    assert up.table.set_index("variant").loc["moe", "diff_test_acc_verdict"] == BETTER
    assert down.table.set_index("variant").loc["moe", "diff_test_acc_verdict"] == WORSE
    assert ": <b>better</b> (sign-flip test over seeds" in headline(up)


def test_the_holm_family_spans_every_variant_at_every_grid_point(tmp_path):
    runs = pd.concat([hand_made_runs({"moe": [0.02, 0.035, 0.0, 0.015, 0.03], "moe_hard": [0.1] * 5}, grid_point=2),
                      hand_made_runs({"moe": [0.01, 0.04, 0.0, 0.02, 0.03], "moe_hard": [0.2] * 5}, grid_point=4)])
    data = report_of(runs, tmp_path, grid_axes=["variants.*.num_experts"])
    compared = data.table[data.table["variant"] != "mlp"]
    assert len(compared) == 4 and compared["diff_test_acc_p_holm"].notna().all()
    assert (compared["diff_test_acc_p_holm"].to_numpy() == holm(compared["diff_test_acc_p"])).all()
    assert "(num_experts=4)" in headline(data)  # the best row, with its grid point


def test_too_few_seeds_warns_and_gets_no_verdict(tmp_path):
    one_seed = report_of(hand_made_runs({"moe": [0.1]}, baseline_acc=(0.8,)), tmp_path)
    assert "1 of 1 comparison(s) with mlp cannot support a verdict (1 with fewer than 3 paired seeds)" in (
        small_sample_warning(one_seed.table, "acc", "mlp"))
    assert one_seed.table.set_index("variant").loc["moe", "diff_test_acc_verdict"] == NOT_DISTINGUISHABLE
    assert "no verdict: fewer than 3 paired seeds" in headline(one_seed)

    # two seeds, however consistent, get no verdict (the exact test cannot go below p = 1/2 with them)
    two_seeds = report_of(hand_made_runs({"moe": [0.1, 0.11], "moe_b": [0.2, 0.2]}, (0.5, 0.6)), tmp_path)
    table = two_seeds.table.set_index("variant")
    assert table.loc["moe", "diff_test_acc_p"] == pytest.approx(0.5)
    assert (table.loc[["moe", "moe_b"], "diff_test_acc_verdict"] == NOT_DISTINGUISHABLE).all()
    assert "2 of 2 comparison(s) with mlp cannot support a verdict (2 with fewer than 3 paired seeds)" in (
        small_sample_warning(two_seeds.table, "acc", "mlp"))

    # three seeds of one sign happen one time in four by chance: named, with the seeds a verdict needs
    three_seeds = report_of(hand_made_runs({"moe": [0.1, 0.2, 0.3]}, (0.5, 0.6, 0.7)), tmp_path)
    warning = small_sample_warning(three_seeds.table, "acc", "mlp")
    assert "(1 with 3 paired seeds, whose smallest possible p is 0.25)" in warning and "about 6 seeds" in warning
    six_seeds = report_of(hand_made_runs({"moe": [0.1, 0.2, 0.3, 0.1, 0.2, 0.3]}, (0.5, 0.6, 0.7, 0.5, 0.6, 0.7)), tmp_path)
    assert small_sample_warning(six_seeds.table, "acc", "mlp") is None


def test_the_report_states_holm_and_shows_adjusted_p_values(finished_job, tmp_path):  # noqa: F811
    """A tree of seven seeds made by copying the finished job and setting known test accuracies (seven:
    the fewest with which the exact test can pass Holm's first level 0.05/3). The per-sample scores
    are removed, as older runs lack them: the report falls back to the sign-flip test over seeds."""
    accuracy = {"mlp": [0.80, 0.82, 0.78, 0.81, 0.79, 0.80, 0.83], "moe": [0.90, 0.93, 0.87, 0.91, 0.88, 0.92, 0.90],
                "moe_topk": [0.79, 0.81, 0.78, 0.82, 0.80, 0.79, 0.83], "moe_hard": [0.60, 0.63, 0.57, 0.62, 0.61, 0.58, 0.60]}
    for seed in range(7):
        job = JobTree(copy_job(finished_job, tmp_path).path.rename(tmp_path / "experiment" / "jobs" / f"seed{seed}"))
        spec = json.loads(job.config_file.read_text())
        spec["config"]["seed"] = seed
        job.config_file.write_text(json.dumps(spec))
        for variant, values in accuracy.items():
            job.variant(variant).analysis.test_routing.unlink()
            results = json.loads(job.variant(variant).results_file.read_text())
            job.variant(variant).results_file.write_text(json.dumps({**results, "test_acc": values[seed]}))
    write_report([tmp_path / "experiment"])
    tree = ExperimentTree(tmp_path / "experiment")
    summary = pd.read_csv(tree.summary.summary_csv).set_index("variant")
    raw = {v: sign_flip_p_value(np.subtract(accuracy[v], accuracy["mlp"])) for v in ("moe", "moe_topk", "moe_hard")}
    assert raw["moe"] == raw["moe_hard"] == pytest.approx(2 / 128)
    assert summary.loc[list(raw), "diff_test_acc_p"].tolist() == pytest.approx(list(raw.values()), rel=1e-6)
    assert summary.loc[list(raw), "diff_test_acc_p_holm"].tolist() == pytest.approx(list(holm(list(raw.values()))))
    assert summary["diff_test_acc_verdict"].to_dict() == {"mlp": "baseline", "moe": "better", "moe_topk": "not distinguishable",
                                                          "moe_hard": "worse"}
    markdown = tree.summary.markdown.read_text()
    for note in ("exact sign-flip permutation test over seeds", "Family: all k = 3 comparison(s)",
                 "adjustment: Holm's method", "5 % (family-wise)"):
        assert note in markdown
    assert "| p (Holm) | verdict |" in markdown and "No verdict for some comparisons" not in markdown
    page = tree.report_file.read_text()
    assert "adjustment: Holm&#x27;s method" in page and "<b>better</b> (sign-flip test over seeds, Holm-adjusted over 3" in page
    assert "p (Holm)" in tree.summary.latex.read_text()


def test_the_collapse_warning_names_the_variant_and_grid_point_of_runs_with_dead_experts(tmp_path):
    runs = pd.concat([hand_made_runs({"moe": [0.0] * 5}, grid_point=2), hand_made_runs({"moe": [0.0] * 5}, grid_point=4)])
    moe = runs["variant"] == "moe"
    runs.loc[moe, "dead_expert_fraction"] = 0.0
    healthy = report_of(runs, tmp_path, grid_axes=["variants.*.num_experts"])
    assert collapse_warning(healthy.runs, healthy.group_keys) is None
    assert "Expert collapse" not in html.render(healthy, [], {})
    runs.loc[moe & (runs["variants.*.num_experts"] == 4) & runs["seed"].isin([1, 3]), "dead_expert_fraction"] = [0.25, 0.5]
    runs.loc[moe & (runs["variants.*.num_experts"] == 4) & (runs["seed"] == 0), "state"] = "failed"  # unfinished: not counted
    data = report_of(runs, tmp_path, grid_axes=["variants.*.num_experts"])
    warning = collapse_warning(data.runs, data.group_keys)
    assert warning.startswith("2 of 9 finished MoE run(s) end with dead experts")
    assert warning.endswith(": moe (num_experts=4): 2 of 4 run(s), up to 50 % of its experts dead.")
    page = html.render(data, [], {})
    assert page.index("Expert collapse.") < page.index("class='box headline'")  # on the first screen


def test_router_health_roc_and_auc_reach_the_tables_and_the_report(finished_job, tmp_path):  # noqa: F811
    copy_job(finished_job, tmp_path)
    write_report([tmp_path / "experiment"])
    tree = ExperimentTree(tmp_path / "experiment")
    summary = pd.read_csv(tree.summary.summary_csv).set_index("variant")
    for column in ("dead_expert_fraction", "effective_experts", "routing_flip_rate"):
        assert summary.loc[["moe", "moe_topk", "moe_hard"], f"{column}_mean"].notna().all(), column
        assert math.isnan(summary.loc["mlp", f"{column}_mean"])
    assert summary["test_auc_macro_mean"].between(0.5, 1).all() and "test_auc_class_9_mean" in summary
    runs = pd.read_csv(tree.summary.runs_csv)  # one number per cell: per-sample scores stay in analysis/
    assert not [c for c in runs.columns if "samples" in c] and "diff_test_acc_method" in summary
    assert tree.summary.plot("router_health").is_file() and tree.summary.plot("roc").is_file()
    page = tree.report_file.read_text()
    assert "effective experts" in page and "routing flips (last epoch)" in page and "test_auc_macro" in page


def test_matched_comparisons_are_paired_within_the_job_and_join_the_holm_family(tmp_path):
    differences = {"moe": [0.05, 0.06, 0.04, 0.05, 0.07], "mlp_active_moe": [0.01, 0.0, 0.02, -0.01, 0.0],
                   "mlp_total_moe": [0.08, 0.1, 0.07, 0.09, 0.1], "moe_soft": [0.02, 0.03, 0.0, 0.01, 0.02]}
    runs = hand_made_runs(differences)
    runs.loc[runs["variant"].str.startswith("mlp_"), "model"] = "mlp"
    runs.loc[runs["variant"] == "moe", ["matched_active", "matched_total"]] = ["mlp_active_moe", "mlp_total_moe"]
    # one dense model of both sizes, as for soft routing
    runs.loc[runs["variant"] == "moe_soft", ["matched_active", "matched_total"]] = ["mlp_active_moe", "mlp_active_moe"]
    runs[["num_parameters", "active_parameters"]] = 1000.0
    runs = pd.concat([runs[runs["variant"] != "mlp"], runs[runs["variant"] == "mlp"]])  # a matched mlp comes first
    data = report_of(runs, tmp_path)
    assert data.baseline == "mlp"  # the first dense variant that is not a matched one
    table = data.table.set_index("variant")
    moe = np.array(differences["moe"])
    assert table.loc["moe", "diff_active_test_acc_mean"] == pytest.approx(np.mean(moe - differences["mlp_active_moe"]))
    assert table.loc["moe", "diff_total_test_acc_mean"] == pytest.approx(np.mean(moe - differences["mlp_total_moe"]))
    assert math.isnan(table.loc["moe_soft", "diff_total_test_acc_mean"])  # the same comparison is tested once
    p_values = [table.loc[v, "diff_test_acc_p"] for v in ("moe", "mlp_active_moe", "mlp_total_moe", "moe_soft")]
    p_values += [table.loc["moe", "diff_active_test_acc_p"], table.loc["moe", "diff_total_test_acc_p"],
                 table.loc["moe_soft", "diff_active_test_acc_p"]]
    adjusted = holm(p_values)
    assert table.loc["moe", "diff_total_test_acc_p_holm"] == pytest.approx(adjusted[5])
    assert table.loc["moe_soft", "diff_active_test_acc_p_holm"] == pytest.approx(adjusted[6])
    assert table.loc["mlp_total_moe", "diff_active_test_acc_verdict"] == ""  # dense rows have no matched comparison
    (soft,) = [entry for entry in data.matched if entry["variant"] == "moe_soft"]
    assert [(m["variant"], m["kind"]) for m in soft["matches"]] == [("mlp_active_moe", "active and total")]
    assert "Family: all k = 7 comparison(s)" in comparisons_note(data.table, "acc", "mlp")
    named = report_data_from_runs(ExperimentTree(tmp_path / "e"), runs, pd.DataFrame(), ["seed"], [],
                                  experiment_yaml="baseline: {variant: mlp_total_moe, match: [active, total]}\n")
    assert named.baseline == "mlp_total_moe"



@pytest.mark.slow
def test_matched_baselines_through_the_launcher(write_experiment, tmp_path):
    doc = {**TINY, "train": {**TINY["train"], "epochs": 2}, "variants": [TINY["variants"][0], TINY["variants"][2]],
           "grid": {"seed": [0, 1]}, "baseline": {"variant": "mlp", "match": ["active", "total"]}}
    experiment = write_experiment(doc)
    done = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out")
    assert done.returncode == 0, done.stderr
    assert "2 job(s) x 4 variant(s), 2 to run" in done.stdout  # mlp, moe_topk and its two matched MLPs
    tree = ExperimentTree(tmp_path / "out" / "tiny")
    acc = lambda job, variant: json.loads(job.variant(variant).results_file.read_text())["test_acc"]
    summary = pd.read_csv(tree.summary.summary_csv).set_index("variant")
    for kind in ("active", "total"):
        paired = [acc(job, "moe_topk") - acc(job, f"mlp_{kind}_moe_topk") for job in tree.jobs()]
        assert summary.loc["moe_topk", f"diff_{kind}_test_acc_mean"] == pytest.approx(np.mean(paired))
    page = tree.report_file.read_text()
    assert page.index("Against dense models of equal size") < page.index("<h2>Summary</h2>")  # the first screen
    assert "vs mlp_active_moe_topk (" in page and tree.summary.plot("matched_sizes").is_file()
    # a job is finished when its matched models are: one stopped while training them resumes
    job = tree.jobs()[0]
    job.variant("mlp_total_moe_topk").results_file.unlink()
    job.status_file.write_text(json.dumps({**json.loads(job.status_file.read_text()), "state": "interrupted"}))
    again = launch(tmp_path, "run_here", str(experiment), "--experiments-dir", "out", "--no-report")
    assert again.returncode == 0 and "2 job(s) x 4 variant(s), 1 to run" in again.stdout, again.stdout


def test_a_search_headline_names_the_trial_selected_on_validation_not_the_best_test_score(tmp_path):
    from moelab.report.study import StudyData
    # trial 0 (num_experts=2) has the higher test accuracy; trial 1 (num_experts=4) won on validation
    runs = pd.concat([hand_made_runs({"moe": [0.10] * 5}, grid_point=2), hand_made_runs({"moe": [0.02] * 5}, grid_point=4)])
    trials = pd.DataFrame({"number": [0, 1], "state": ["complete", "complete"], "value": [0.90, 0.95],
                           "jobs": [" ".join(f"seed{s}-2" for s in range(5)), " ".join(f"seed{s}-4" for s in range(5))]})
    summary = {"objective": {"metric": "val_acc", "variant": "moe", "direction": "maximize"},
               "best": {"number": 1, "value": 0.95, "params": {"variants.*.num_experts": 4}, "jobs": ["seed0-4"]},
               "n_trials": 2, "finished": 2, "sampler": "tpe", "pruner": "none", "space": {"variants.*.num_experts": {}}}
    data = report_data_from_runs(ExperimentTree(tmp_path / "e"), runs, pd.DataFrame(), ["seed", "variants.*.num_experts"],
                                 [], study=StudyData(trials, summary, None))
    box = headline(data)
    assert "<b>moe</b> (num_experts=4) in trial 1, selected on validation (val_acc of moe), has test acc" in box
    assert f"<b>{np.mean(BASELINE_ACC) + 0.02:.4f}</b>" in box and "best test" not in box
    page = html.render(data, [], {})
    assert "Selected on validation: trial 1" in page and "best test" not in page


def test_with_per_sample_scores_the_report_tests_over_seeds_and_examples_and_says_so(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(8):  # with Holm over 2 comparisons the sign-flip bound needs 7 seeds of one sign
        baseline = (rng.random(270) < 0.8).astype(float)
        wrong, right = np.flatnonzero(baseline == 0), np.flatnonzero(baseline == 1)
        strong, noise = baseline.copy(), baseline.copy()
        strong[wrong[:25 + seed]] = 1  # 25-32 images won, 2 lost: a real difference
        strong[right[:2]] = 0
        noise[wrong[:3]] = 1  # 3 won, 2 lost: one image net in every seed
        noise[right[:2]] = 0
        job = {"job": f"seed{seed}", "seed": seed, "state": "done", "metric": "acc"}
        rows += [{**job, "variant": name, "model": model, "test_acc": scores.mean(), "test_samples": scores}
                 for name, model, scores in (("mlp", "mlp", baseline), ("strong", "moe", strong), ("noise", "moe", noise))]
    data = report_of(pd.DataFrame(rows), tmp_path)
    table = data.table.set_index("variant")
    assert (table.loc[["strong", "noise"], "diff_test_acc_method"] == "bootstrap").all()
    assert table.loc["strong", "diff_test_acc_verdict"] == BETTER
    assert table.loc["noise", "diff_test_acc_verdict"] == NOT_DISTINGUISHABLE  # identical 1/270 steps: no spread either
    assert table.loc["noise", "diff_test_acc_p"] > 0.3  # and five flips per seed are no evidence
    note = comparisons_note(data.table, "acc", "mlp")
    assert "paired bootstrap over seeds and test examples" in note and "exact sign-flip" in note
    assert ": <b>better</b> (paired bootstrap over seeds and test examples, Holm-adjusted over 2" in headline(data)


def test_per_sample_scores_that_disagree_with_the_metric_on_the_direction_give_no_verdict(tmp_path):
    rows = []
    for seed in range(6):
        job = {"job": f"seed{seed}", "seed": seed, "state": "done", "metric": "psnr"}
        rows += [{**job, "variant": "mlp", "model": "mlp", "test_psnr": 20.0, "test_samples": -np.full(50, 0.1)},
                 {**job, "variant": "moe", "model": "moe", "test_psnr": 21.0 + seed / 10, "test_samples": -np.full(50, 0.2)}]
    moe = report_of(pd.DataFrame(rows), tmp_path).table.set_index("variant").loc["moe"]
    assert moe["diff_test_psnr_p"] == 1.0 and moe["diff_test_psnr_verdict"] == NOT_DISTINGUISHABLE


# plots that scale: the zoo's 11 variants at 6 grid points, a hand-made tree (nothing trained)

def zoo_report(tmp_path, points=(2, 3, 4, 6, 8)):
    import yaml
    zoo = yaml.safe_load((Path(__file__).parents[1] / "experiments/configs/zoo.yaml").read_text())
    names = [v["name"] for v in zoo["variants"]]
    runs, curves = [], []
    for point in points:
        for seed in (0, 1):
            job = {"job": f"seed{seed}-{point}", "seed": seed, "state": "done", "metric": "acc",
                   "variants.*.num_experts": point}
            for i, name in enumerate(names):
                runs.append({**job, "variant": name, "model": "mlp" if i < 2 else "moe", "test_acc": 0.8 + 0.01 * i,
                             "num_parameters": 1000 * (i + 1), "train_seconds": 1.0 + i})
                curves += [{**job, "variant": name, "epoch": epoch, "val_acc": 0.5 + 0.04 * epoch + 0.01 * i,
                            "train_loss": 1.0 / (epoch + i), "train_effective_experts": 1.0 + epoch / 4,
                            "train_dead_expert_fraction": 0.1, "test_routing_flip_rate": 0.2 / epoch}
                           for epoch in range(1, 6)]
    data = report_data_from_runs(ExperimentTree(tmp_path / "zoo"), pd.DataFrame(runs), pd.DataFrame(),
                                 ["seed", "variants.*.num_experts"], [])
    return dataclasses.replace(data, curves=pd.DataFrame(curves)), names


@pytest.mark.parametrize("draw", ["learning_curves", "test_metric_bars", "router_health", "params_vs_metric",
                                  "metric_vs_axis"])
def test_with_the_zoos_eleven_variants_no_legend_covers_data_and_no_colour_repeats(draw, tmp_path, monkeypatch):
    from functools import partial
    from moelab.report import plots
    data, names = zoo_report(tmp_path)
    data.tree.summary.path.mkdir(parents=True)
    figures = []
    saved = plots.save
    # PNG only: the layout is the same, the SVG would only cost time
    monkeypatch.setattr(plots, "save", lambda fig, path, **kw: (figures.append(fig), saved(fig, path, **{**kw, "formats": ("png",)})))
    function = getattr(plots, draw)
    if draw == "metric_vs_axis":
        function = partial(function, axis="variants.*.num_experts")
    assert function(data, data.tree.summary.plot(draw)) is None
    (fig,) = figures
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(fig).get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1
    legend_box = legends[0].get_window_extent(renderer)
    data_axes = [ax for ax in fig.axes if ax.axison]
    assert len(data_axes) >= 1
    for ax in data_axes:
        assert not legend_box.overlaps(ax.get_window_extent(renderer)), f"the legend covers {ax.get_title()!r}"
    handles, labels = legends[0].axes.get_legend_handles_labels()
    entries = dict(zip(labels, handles))
    assert list(entries) == names
    colours = [tuple(np.round(matplotlib.colors.to_rgba(_face(h)), 4)) for h in entries.values()]
    assert len(set(colours)) == len(names)
    if draw == "learning_curves":  # 5 grid points wrap into rows of four panels, two axes each, none empty
        assert len(data_axes) == 2 * 5
        assert [ax.get_title() for ax in data_axes if ax.get_title()] == [f"num_experts={p}" for p in (2, 3, 4, 6, 8)]
        assert len({round(ax.get_position().x0, 3) for ax in data_axes}) == plots.PANELS_PER_ROW


@pytest.mark.parametrize("draw", ["history", "objective_vs_parameters"])
def test_a_studys_plots_keep_their_legend_beside_the_axes(draw, tmp_path, monkeypatch):
    from types import SimpleNamespace
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from moelab.report import study
    from moelab.report.study import StudyData
    rng = np.random.default_rng(0)
    trials = pd.DataFrame({"number": range(30), "state": ["complete", "pruned", "complete"] * 10,
                           "value": rng.random(30), "train.lr": 10 ** rng.uniform(-3, -1, 30),
                           "variants.*.num_experts": rng.choice([2, 4, 8], 30)})
    summary = {"objective": {"metric": "val_acc", "variant": "moe", "direction": "maximize"}, "sampler": "tpe",
               "pruner": "median", "space": {"train.lr": {"loguniform": [1e-3, 1e-1]},
                                             "variants.*.num_experts": {"choice": [2, 4, 8]}}}
    figures = []
    monkeypatch.setattr(study, "save", lambda fig, path: figures.append(fig))
    assert getattr(study, draw)(SimpleNamespace(study=StudyData(trials, summary, None)), tmp_path / "p.png") is None
    (fig,) = figures
    fig.tight_layout()
    renderer = FigureCanvasAgg(fig).get_renderer()
    (legend,) = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    box = legend.get_window_extent(renderer)
    assert all(not box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    assert box.x1 <= fig.bbox.x1  # inside the figure: saved, not cut off


def _face(handle):
    """The colour of what a legend entry stands for: a line, points, bars or error bars."""
    import matplotlib.collections, matplotlib.container, matplotlib.lines
    if isinstance(handle, matplotlib.container.ErrorbarContainer):
        return handle.lines[0].get_color()
    if isinstance(handle, matplotlib.container.BarContainer):
        return handle.patches[0].get_facecolor()
    if isinstance(handle, matplotlib.lines.Line2D):
        return handle.get_color()
    if isinstance(handle, matplotlib.collections.Collection):
        return handle.get_facecolor()[0]
    return handle.get_facecolor()


def test_the_palette_never_repeats_a_colour_and_keeps_the_first_ten():
    from moelab.report.plots import palette
    for count in (1, 10, 11, 20, 21, 45):
        colours = palette(count)
        assert len(colours) == count and len({tuple(np.round(c, 4)) for c in colours}) == count
    assert palette(20)[:10] == palette(10)[:10] or np.allclose(palette(20)[:10], palette(10), atol=0.02)


def test_the_first_table_and_the_latex_table_are_short_and_the_long_one_keeps_every_column(tmp_path):
    from moelab.report.tables import short_table, to_latex
    data, names = zoo_report(tmp_path)
    short = short_table(data.readable, "acc")
    assert list(short.columns) == ["variant", "variants.*.num_experts", "n", "test_acc", "vs baseline (95% CI)", "p (Holm)",
                                   "verdict", "num_parameters"]
    assert {"train_seconds"} <= set(data.readable.columns) - set(short.columns)
    latex = to_latex(short, "zoo")
    assert "\\begin{tabular}{" + "l" * len(short.columns) + "}" in latex and "train\\_seconds" not in latex
    page = html.render(data, [], {})
    first, rest = page.split("id='all-columns'")
    assert "train_seconds" not in first and "train_seconds" in rest and "<th>verdict</th>" in first


def test_compare_pairs_runs_that_match_by_configuration_and_says_so(finished_job, tmp_path, capsys):  # noqa: F811
    first, second = copy_job(finished_job, tmp_path / "a"), copy_job(finished_job, tmp_path / "b")
    assert main([str(first.path.parents[1]), str(second.path.parents[1]), "--compare"]) == 0
    out = capsys.readouterr().out
    for variant in ("mlp", "moe", "moe_topk", "moe_hard"):
        assert re.search(rf"\| {variant} \|.*\| \+0\.0000 \|.*paired over 1 seed\(s\); no verdict", out), out
    assert "not distinguishable" in out and "better" in out.splitlines()[0]
    summary = ExperimentTree(second.path.parents[1]).summary  # saved beside B's plots, named after A
    name = first.path.parents[1].name
    saved = pd.read_csv(summary.comparison(name, "csv"))
    assert list(saved["variant"]) == ["mlp", "moe", "moe_topk", "moe_hard"] and (saved["B - A"] == 0).all()
    assert (saved["A test_acc"] == saved["B test_acc"]).all() and saved["A test_acc"].between(0, 1).all()
    assert {"95% CI", "p", "p (Holm)", "verdict", "test"} <= set(saved.columns)
    table = summary.comparison(name, "md").read_text()
    assert "| moe_topk |" in table and "paired over 1 seed(s)" in table
    assert all(summary.comparison(name, ext).stat().st_size > 0 for ext in ("png", "svg"))
    assert "saved:" in out


def test_the_unpaired_test_is_the_exact_permutation_test():
    from moelab.report.compare import permutation_p_value
    # 3 vs 3 fully separated: 2 of the C(6,3) = 20 relabellings are as extreme
    assert permutation_p_value(np.array([0.0, 0.1, 0.2]), np.array([1.0, 1.1, 1.2])) == pytest.approx(2 / 20)
    assert permutation_p_value(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 1.0


@pytest.mark.parametrize("argv, named", [(["only_one"], "exactly two"), (["a", "b"], "not an experiment folder")])
def test_compare_bad_input_exits_2(argv, named, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--compare"]) == 2
    assert named in capsys.readouterr().err
