"""The paired tests behind every "better" / "worse" of a report, and the rule for when there is none.

A comparison is a list of per-seed differences (a variant minus its reference in the same job, so
the same seed and grid values). The exact sign-flip permutation test over seeds (sign_flip_p_value)
always applies. When every run of the comparison also wrote its per-sample test scores, a paired
bootstrap over seeds and test examples (paired_bootstrap_p_value) adds the test set's sampling noise
(270 test images move accuracy in steps of 1/270), and the comparison's p-value is the larger of the
two (`paired_p_value`; the larger of two valid p-values is valid). The bootstrap alone is not enough:
it cannot reach beyond the seeds it resamples, so three seeds of one sign would make any difference
"significant", although under "no difference" that happens one time in four. Sign-flip test: under
"no difference" each per-seed difference is as likely to have either sign, so the p-value is the
share of the 2^n sign assignments whose sum is at least as far from zero as the observed one. It
makes no normality assumption, is exact for few seeds, and cannot be fooled by tied differences:
identical differences from two seeds give p = 1/2, never 0 (a t-test divides by their zero spread).

A comparison is degenerate, and gets no verdict whatever its p-value, when it rests on fewer than
MIN_PAIRED_SEEDS seeds or when its differences have no spread (every seed moved by the same amount:
with a test set of a few hundred examples that is one step of the metric's grid, not evidence).
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

MIN_PAIRED_SEEDS = 3  # the fewest paired seeds a verdict may rest on
EXACT_UP_TO = 16  # seeds up to which all 2^n sign assignments are enumerated (65,536 sums)
RANDOM_SIGN_FLIPS = 100_000  # sign assignments drawn beyond that (deterministic: a fixed generator seed)
BOOTSTRAP_RESAMPLES = 5_000  # resamples of the paired bootstrap (deterministic: a fixed generator seed)
METHOD = "exact sign-flip permutation test over seeds (two-sided)"
BOOTSTRAP_METHOD = (f"paired bootstrap over seeds and test examples ({BOOTSTRAP_RESAMPLES} resamples of the seeds, "
                    "then of each drawn seed's test examples; two-sided)")
# sums this close count as equal: differences of accuracies are sums of multiples of 1/n_test in floating point
_TOLERANCE = 1e-9


def sign_flip_p_value(differences: Sequence[float], seed: int = 0) -> float:
    """Two-sided p-value of a zero mean difference: the share of sign assignments s (s_i = +-1) with
    |sum s_i d_i| >= |sum d_i|. Exact up to EXACT_UP_TO differences, above that estimated from
    RANDOM_SIGN_FLIPS random assignments plus the observed one (so never 0). NaN without differences;
    NaN values are left out."""
    d = np.asarray([x for x in differences if x == x], dtype=float)
    if len(d) == 0:
        return float("nan")
    observed = abs(d.sum())
    if len(d) <= EXACT_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        return float(np.mean(np.abs(signs @ d) >= observed - _TOLERANCE))
    signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(RANDOM_SIGN_FLIPS, len(d)))
    extreme = int(np.sum(np.abs(signs @ d) >= observed - _TOLERANCE))
    return (extreme + 1) / (RANDOM_SIGN_FLIPS + 1)


def paired_bootstrap_p_value(per_seed: Sequence[np.ndarray], seed: int = 0) -> float:
    """Two-sided p-value of a zero mean difference from per-seed vectors of per-example differences
    (a variant's per-sample test score minus its reference's, same job and test set). Each resample
    draws seeds with replacement, and for each drawn seed the mean of its examples drawn with
    replacement; the statistic is the mean over the drawn seeds. p = twice the smaller share of
    resamples on either side of zero (each share counts the observed value too, so p is never 0),
    capped at 1. NaN without seeds."""
    per_seed = [np.asarray(d, dtype=float) for d in per_seed]
    if not per_seed:
        return float("nan")
    rng = np.random.default_rng(seed)
    # each seed's example-resampled means, one per resample
    means = np.stack([d[rng.integers(len(d), size=(BOOTSTRAP_RESAMPLES, len(d)))].mean(axis=1) for d in per_seed])
    drawn = rng.integers(len(per_seed), size=(BOOTSTRAP_RESAMPLES, len(per_seed)))
    statistic = means[drawn, np.arange(BOOTSTRAP_RESAMPLES)[:, None]].mean(axis=1)
    below = int(np.sum(statistic <= _TOLERANCE)) + 1
    above = int(np.sum(statistic >= -_TOLERANCE)) + 1
    return float(min(1.0, 2 * min(below, above) / (BOOTSTRAP_RESAMPLES + 1)))


def paired_p_value(per_seed_differences: Sequence[float], per_seed_samples: Sequence[np.ndarray] | None) -> float:
    """A comparison's p-value: the sign-flip test over seeds, or the larger of it and the paired bootstrap
    over seeds and test examples when every seed has per-sample differences."""
    seeds = sign_flip_p_value(per_seed_differences)
    if per_seed_samples is None:
        return seeds
    return max(seeds, paired_bootstrap_p_value(per_seed_samples))


def degenerate_reason(n: int, std: float) -> str | None:
    """Why a comparison of n paired seeds whose differences have standard deviation `std` cannot
    support a verdict, or None when it can."""
    if n < MIN_PAIRED_SEEDS:
        return f"fewer than {MIN_PAIRED_SEEDS} paired seeds"
    if not std > _TOLERANCE:  # also NaN
        return "every seed gives the same difference (no spread)"
    return None


def smallest_p_value(n: int) -> float:
    """The smallest p-value the exact test can give with n seeds (all differences of one sign): 2 / 2^n."""
    return min(1.0, 2.0 / 2 ** n) if n > 0 else float("nan")
