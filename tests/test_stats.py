"""The paired test behind the report's verdicts (moelab.report.stats), on hand-computed cases, and
the rule that a degenerate comparison (too few seeds, or differences without spread) gets no verdict."""

from __future__ import annotations

import math

import pytest

import numpy as np

from moelab.report.stats import (BOOTSTRAP_RESAMPLES, MIN_PAIRED_SEEDS, degenerate_reason, paired_bootstrap_p_value,
                                 sign_flip_p_value, smallest_p_value)


def test_three_differences_of_one_sign_reach_only_the_two_extreme_assignments():
    # sums of the 8 sign assignments of (0.1, 0.2, 0.3): +-0.6, +-0.4, +-0.2, +-0.0; only +-0.6 reach 0.6
    assert sign_flip_p_value([0.1, 0.2, 0.3]) == pytest.approx(2 / 8)


def test_mixed_signs_count_every_assignment_at_least_as_extreme():
    # (0.1, -0.1, 0.2) sums to 0.2; the 8 assignments give 0.2, -0.2, 0.4, 0, 0, -0.4, 0.2, -0.2: six reach 0.2
    assert sign_flip_p_value([0.1, -0.1, 0.2]) == pytest.approx(6 / 8)


def test_tied_differences_give_half_not_zero():
    # two seeds that moved by the same step: sums 0.2, 0, 0, -0.2; a t-test would divide by zero spread
    assert sign_flip_p_value([1 / 270, 1 / 270]) == pytest.approx(2 / 4)
    # ties in floating point (0.1 + 0.2 != 0.3) still count as reaching the observed sum
    assert sign_flip_p_value([0.1, 0.2, -0.3, 0.3]) == pytest.approx(sign_flip_p_value([1, 2, -3, 3]))


def test_all_zero_differences_give_one_and_no_differences_give_nan():
    assert sign_flip_p_value([0.0, 0.0, 0.0]) == 1.0
    assert math.isnan(sign_flip_p_value([])) and math.isnan(sign_flip_p_value([float("nan")]))
    assert sign_flip_p_value([0.1, float("nan"), 0.2, 0.3]) == pytest.approx(2 / 8)  # a missing pair is left out


def test_the_smallest_p_value_is_two_over_two_to_the_n():
    assert sign_flip_p_value([0.01 * (i + 1) for i in range(10)]) == pytest.approx(2 / 1024) == smallest_p_value(10)
    assert smallest_p_value(1) == 1.0 and smallest_p_value(5) == pytest.approx(0.0625)


def test_many_seeds_are_sampled_deterministically_and_never_give_zero():
    differences = [0.01 * ((-1) ** i) + 0.004 for i in range(20)]
    p = sign_flip_p_value(differences, seed=3)
    assert p == sign_flip_p_value(differences, seed=3) and 0 < p < 1
    assert sign_flip_p_value([0.01] * 20) > 0  # no assignment beats the observed one, yet the estimate is not 0


def test_degenerate_comparisons_are_named():
    assert degenerate_reason(MIN_PAIRED_SEEDS - 1, 0.02) == f"fewer than {MIN_PAIRED_SEEDS} paired seeds"
    assert degenerate_reason(5, 0.0) == "every seed gives the same difference (no spread)"
    assert degenerate_reason(5, float("nan")) is not None
    assert degenerate_reason(MIN_PAIRED_SEEDS, 0.02) is None


def test_every_variant_writes_its_per_sample_test_predictions(finished_job):
    """The paired test over test examples needs each sample's share of the metric, dense baselines included."""
    import pandas as pd

    from moelab.results.io import read_json

    for variant in ("mlp", "moe_topk"):
        samples = pd.read_csv(finished_job.variant(variant).analysis.test_routing)
        results = read_json(finished_job.variant(variant).results_file)
        assert samples["sample"].tolist() == list(range(len(samples))) and set(samples["correct"]) <= {0, 1}
        assert samples["correct"].mean() == pytest.approx(results["test_acc"])
        assert (samples["correct"] == (samples["label"] == samples["prediction"])).all()
    assert "expert_1" in pd.read_csv(finished_job.variant("moe_topk").analysis.test_routing)
    assert "expert_1" not in pd.read_csv(finished_job.variant("mlp").analysis.test_routing)


def test_the_bootstrap_of_identical_predictions_gives_one_and_of_a_sweep_its_smallest_p():
    assert paired_bootstrap_p_value([np.zeros(270)] * 3) == 1.0  # every resample is exactly 0: both sides count
    # every example of every seed better: every resample is +1, only the observed value counts below zero
    assert paired_bootstrap_p_value([np.ones(100)] * 3) == pytest.approx(2 / (BOOTSTRAP_RESAMPLES + 1))
    assert math.isnan(paired_bootstrap_p_value([]))


def test_the_bootstrap_counts_the_test_sets_noise_that_a_test_over_seeds_cannot_see():
    """Each of 6 seeds: the variant wins 3 test images and loses 2 of 270, one image net. Over seeds the
    differences all equal 1/270 (degenerate); over examples, five flips are no evidence."""
    per_seed = [np.array([1.0] * 3 + [-1.0] * 2 + [0.0] * 265)] * 6
    p = paired_bootstrap_p_value(per_seed, seed=1)
    assert p == paired_bootstrap_p_value(per_seed, seed=1) and p > 0.3  # deterministic given the seed
    # a consistent gain of 30 images out of 270 in every seed is found
    strong = [np.array([1.0] * 35 + [-1.0] * 5 + [0.0] * 230)] * 6
    assert paired_bootstrap_p_value(strong) < 0.001


def test_three_seeds_of_one_sign_are_no_verdict_however_many_test_examples_agree():
    """The bootstrap over seeds cannot reach beyond the seeds drawn: three positive seeds would give it a
    p near 0, although three seeds share a sign one time in four under "no difference"."""
    from moelab.report.stats import paired_bootstrap_p_value, paired_p_value

    rng = np.random.default_rng(0)
    samples = [rng.normal(0.05, 0.3, 500) + shift for shift in (0.0, 0.02, 0.04)]
    seeds = [float(s.mean()) for s in samples]
    assert paired_bootstrap_p_value(samples) < 0.01
    assert paired_p_value(seeds, samples) == pytest.approx(0.25)
    assert paired_p_value(seeds, None) == pytest.approx(0.25)
