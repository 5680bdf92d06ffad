"""The seed-level paired test, and the label a claim "B differs from A" earns.

A per-seed bootstrap measures how much a score would move on another test set drawn like this
one; it says nothing about another training run. Across n seeds (the same seeds for A and B,
so the runs pair up), the differences d_1..d_n (B - A) are tested by the exact paired
permutation test: under H0 "A and B are exchangeable" each d_i is as likely to have either
sign, so the p-value is the share of the 2^n sign flips whose |mean| is at least the observed
|mean| (two-sided, the identity included). With every d_i non-zero the smallest possible
p-value is 2 / 2^n: 1 for one seed, 0.5 for two, 0.125 for four, 0.03125 for six, so p <= 0.05
needs at least 6 seeds, all with the same sign. Reported next to it: the mean difference with a
percentile bootstrap interval over seeds (resampling seeds; too narrow for a handful of seeds,
it is a description, not a test) and the paired t-test's p (assumes normal differences).

Labels (``claim_label``, alpha = 0.05), the rule used in bench/ tables and in the README:

- "significant at the seed level": the seed-level p <= alpha;
- "suggestive": otherwise, if every seed's difference has the sign of the mean difference and
  the per-seed cluster bootstrap has p <= alpha in at least half of the seeds;
- "no difference found": anything else (signs disagree across seeds, or the per-seed tests
  mostly find nothing).
"""

import itertools
import math
from typing import Optional, Sequence

import numpy as np

ALPHA = 0.05
MAX_EXACT_SEEDS = 20  # 2^20 sign patterns
SIGNIFICANT, SUGGESTIVE, NO_DIFFERENCE = "significant at the seed level", "suggestive", "no difference found"


def sign_flip_p_value(diffs: Sequence[float]) -> float:
    """Exact two-sided paired permutation p-value of ``diffs`` (B - A per seed): the share of
    the 2^n sign patterns with |mean| >= the observed |mean|."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"the seed-level test needs at least one paired difference, got {list(diffs)!r}")
    if len(d) > MAX_EXACT_SEEDS:
        raise ValueError(f"{len(d)} seeds: the exact test enumerates 2^n sign flips; at most {MAX_EXACT_SEEDS}")
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))  # (2^n, n)
    flipped = np.abs(signs @ d)
    observed = abs(d.sum())
    # a relative tolerance: the identity pattern must count itself despite float rounding
    return float(np.mean(flipped >= observed - 1e-9 * max(1.0, observed)))


def min_p_value(n_seeds: int) -> float:
    """The smallest p-value the exact test can give with ``n_seeds`` non-zero differences."""
    return min(1.0, 2.0 / 2 ** n_seeds)


def seed_level_test(diffs: Sequence[float], n_boot: int = 10000, seed: int = 0) -> dict:
    """The seed-level test of ``diffs`` (B - A, one per seed); see the module docstring."""
    d = np.asarray(diffs, dtype=np.float64)
    p = sign_flip_p_value(d)
    n = len(d)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    return {"seeds": n, "diffs": [round(float(x), 4) for x in d], "mean_diff": round(float(d.mean()), 4),
            "sd": round(sd, 4), "p_value": p, "min_p_value": min_p_value(n),
            "ci95_over_seeds": [round(float(lo), 4), round(float(hi), 4)], "t_test_p": _t_test_p(d),
            "test": "exact paired sign-flip permutation over seeds, two-sided"}


def _t_test_p(d) -> Optional[float]:
    if len(d) < 2 or float(np.std(d)) == 0.0:
        return None
    from scipy import stats

    p = float(stats.ttest_1samp(d, 0.0).pvalue)
    return None if math.isnan(p) else round(p, 6)


def claim_label(seed_test: dict, per_seed_p: Sequence[float], alpha: float = ALPHA) -> str:
    """The label of a claim from its seed-level test and the per-seed cluster bootstrap p-values."""
    diffs = seed_test["diffs"]
    if seed_test["p_value"] <= alpha:
        return SIGNIFICANT
    mean = seed_test["mean_diff"]
    same_sign = mean != 0 and all(x * mean > 0 for x in diffs)
    if same_sign and per_seed_p and sum(p <= alpha for p in per_seed_p) * 2 >= len(per_seed_p):
        return SUGGESTIVE
    return NO_DIFFERENCE
