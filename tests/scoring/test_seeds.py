"""The seed-level test on inputs whose exact p-values are counted by hand, and the claim labels."""

import pytest

from fairseq_taskmoe.scoring.seeds import (NO_DIFFERENCE, SIGNIFICANT, SUGGESTIVE, claim_label, min_p_value,
                                           seed_level_test, sign_flip_p_value)


def test_exact_p_values_counted_by_hand():
    # all four differences positive: only the identity and the all-flipped pattern reach |sum| 10
    assert sign_flip_p_value([1, 2, 3, 4]) == 2 / 16 == min_p_value(4)
    # [1, -2, 3, 4]: |sum| = 6; flipping a subset T of (1, 2, 3, 4) gives |10 - 2 sum(T)| >= 6 for
    # T in {}, {1}, {2} and their complements: 6 of 16 patterns
    assert sign_flip_p_value([1, -2, 3, 4]) == 6 / 16
    # the README's two seeds (+1.90, +0.78): the smallest p two seeds can give
    assert sign_flip_p_value([1.90, 0.78]) == 0.5 == min_p_value(2)
    assert sign_flip_p_value([0.5]) == 1.0 == min_p_value(1)
    # six seeds of one sign reach 2/64; one seed of the other sign, small, does not
    assert sign_flip_p_value([1, 1.2, 0.8, 1.1, 0.9, 1.3]) == 2 / 64
    assert sign_flip_p_value([1, 1.2, 0.8, 1.1, 0.9, -0.1]) == 4 / 64  # T = {} or {-0.1}, and complements
    assert sign_flip_p_value([0, 0, 0]) == 1.0


def test_seed_level_test_reports_mean_interval_and_t_test():
    out = seed_level_test([1.90, 0.78])
    assert out["seeds"] == 2 and out["mean_diff"] == pytest.approx(1.34) and out["p_value"] == 0.5
    assert out["min_p_value"] == 0.5
    lo, hi = out["ci95_over_seeds"]
    assert 0.78 <= lo <= 1.34 <= hi <= 1.90
    # the hand calculation: t = 2.39 with 1 degree of freedom, p ~ 0.25
    assert out["t_test_p"] == pytest.approx(0.252, abs=0.005)
    assert seed_level_test([1.0])["t_test_p"] is None
    with pytest.raises(ValueError, match="at least one paired difference"):
        seed_level_test([])


@pytest.mark.parametrize("diffs,per_seed_p,label", [
    ([1, 1.2, 0.8, 1.1, 0.9, 1.3], [0.2] * 6, SIGNIFICANT),   # p = 2/64 over seeds
    ([1.9, 0.78, 1.2, 0.5], [0.001, 0.01, 0.2, 0.3], SUGGESTIVE),  # one sign, half the seeds significant
    ([1.9, 0.78, 1.2, 0.5], [0.001, 0.2, 0.2, 0.3], NO_DIFFERENCE),  # one sign, one seed significant
    ([1.9, -0.78, 1.2, 0.5], [0.001, 0.001, 0.001, 0.001], NO_DIFFERENCE),  # signs disagree
    ([0.4], [0.01], SUGGESTIVE),  # one seed: at best suggestive
])
def test_claim_labels(diffs, per_seed_p, label):
    assert claim_label(seed_level_test(diffs), per_seed_p) == label
