"""Pure routing functions: top-k, capacity, aux loss, pooling."""

import math

import pytest
import torch

from fairseq_taskmoe.moe.routing import (
    apply_capacity, capacity, load_balancing_loss, positions_in_expert, prefix_mean, segment_mean,
    top_k_experts,
)


def test_top2_picks_two_largest_and_renormalises():
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.0, 2.5]])
    probs, idx, w = top_k_experts(logits, 2)
    assert idx.tolist() == [[1, 2], [0, 3]]
    p = torch.softmax(logits, -1)
    expected = torch.stack([p[0, [1, 2]] / p[0, [1, 2]].sum(), p[1, [0, 3]] / p[1, [0, 3]].sum()])
    torch.testing.assert_close(w, expected)
    torch.testing.assert_close(w.sum(-1), torch.ones(2))
    torch.testing.assert_close(probs, p)


def test_top1_weight_is_gate_probability():
    logits = torch.tensor([[0.0, 1.0]])
    probs, idx, w = top_k_experts(logits, 1)
    assert idx.tolist() == [[1]]
    assert w.item() == pytest.approx(math.e / (1 + math.e))


def test_invalid_top_k_names_the_flag():
    with pytest.raises(ValueError, match="--moe-top-k"):
        top_k_experts(torch.zeros(2, 4), 3)


def test_second_expert_policies_only_random_in_training():
    torch.manual_seed(0)
    logits = torch.randn(500, 8)
    _, idx_all, _ = top_k_experts(logits, 2, "all", training=True)
    _, idx_eval, w_eval = top_k_experts(logits, 2, "sampling", training=False)
    assert torch.equal(idx_all, idx_eval)  # eval is deterministic
    _, idx_s, _ = top_k_experts(logits, 2, "sampling", training=True)
    assert torch.equal(idx_s[:, 0], idx_all[:, 0])
    assert (idx_s[:, 1] != idx_all[:, 1]).any() and (idx_s[:, 1] != idx_s[:, 0]).all()
    _, _, w_r = top_k_experts(logits, 2, "random", training=True)
    dropped = w_r[:, 1] == 0
    assert dropped.any() and (~dropped).any()
    assert torch.all(w_r[dropped, 0] == 1.0)
    # kept with probability min(1, 2*g2): E[kept] = mean(min(1, 2*g2))
    expected_keep = (2 * w_eval[:, 1]).clamp(max=1).mean().item()
    assert abs((~dropped).float().mean().item() - expected_keep) < 0.08


def test_aux_loss_exact_values():
    # perfectly balanced: uniform probs, equal top-1 counts -> 1.0
    probs = torch.full((4, 4), 0.25)
    assert load_balancing_loss(probs, torch.tensor([0, 1, 2, 3])).item() == pytest.approx(1.0)
    # everything on expert 0 with prob 1 -> E^2 * (1 * 1) / E = E
    probs = torch.tensor([[1.0, 0, 0, 0]] * 3)
    assert load_balancing_loss(probs, torch.zeros(3, dtype=torch.long)).item() == pytest.approx(4.0)
    # hand-computed mixed case: E=2, mean_prob=(0.7,0.3), fraction=(0.5,0.5)
    probs = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    val = load_balancing_loss(probs, torch.tensor([0, 1])).item()
    assert val == pytest.approx(4 * (0.7 * 0.5 + 0.3 * 0.5) / 2)
    assert load_balancing_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).item() == 0


def test_capacity_formula():
    assert capacity(100, 4, 2, 1.25) == math.ceil(1.25 * 2 * 100 / 4)
    assert capacity(10, 4, 2, 0) == 20  # <=0: no limit


def test_positions_first_choices_before_second():
    idx = torch.tensor([[0, 1], [0, 1], [1, 0]])
    pos = positions_in_expert(idx, 2)
    # expert 0 queue: t0(1st), t1(1st), t2(2nd); expert 1: t2(1st), t0(2nd), t1(2nd)
    assert pos.tolist() == [[0, 1], [1, 2], [0, 2]]


def test_capacity_drops_overflow_and_zeroes_weights():
    idx = torch.tensor([[0, 1]] * 5)
    w = torch.full((5, 2), 0.5)
    r = apply_capacity(idx, w, 2, cap=3)
    assert r.keep[:, 0].tolist() == [True, True, True, False, False]
    assert r.keep[:, 1].tolist() == [True, True, True, False, False]
    assert torch.all(r.weights[~r.keep] == 0)
    r = apply_capacity(idx, w, 2, cap=None)
    assert r.keep.all()


def test_segment_and_prefix_mean_ignore_padding():
    v = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert segment_mean(v, mask).squeeze(-1).tolist() == [2.0, 4.0]
    means, s, c = prefix_mean(v, mask)
    assert means[1].squeeze(-1).tolist() == [2.0, 3.0, 4.0]
    # incremental: feeding one step at a time gives the same running means
    state_s = state_c = None
    steps = []
    for t in range(3):
        m, state_s, state_c = prefix_mean(v[:, t:t + 1], mask[:, t:t + 1], state_s, state_c)
        steps.append(m)
    torch.testing.assert_close(torch.cat(steps, 1)[mask], means[mask])


def test_positions_skip_invalid_assignments():
    idx = torch.tensor([[0, 1], [0, 1], [2, 1], [2, 1]])
    valid = torch.tensor([[True, False], [True, False], [True, True], [True, True]])
    pos = positions_in_expert(idx, 3, valid)
    # expert 1 sees only the valid second choices of t2 and t3
    # row-major: t0 (e0), t1 (e0), t2 (e2, e1), t3 (e2, e1)
    assert pos[valid].tolist() == [0, 1, 0, 0, 1, 1]
    assert positions_in_expert(idx, 3)[2:, 1].tolist() == [2, 3]  # without `valid`: after t0, t1


def test_random_policy_drop_takes_no_capacity_slot():
    # t0, t1: second choice (expert 1) dropped by the random policy (weight 0).
    idx = torch.tensor([[0, 1], [0, 1], [2, 1], [2, 1]])
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.4], [0.7, 0.3]])
    r = apply_capacity(idx, w, 3, cap=2)
    assert r.keep.tolist() == [[True, False], [True, False], [True, True], [True, True]]
    torch.testing.assert_close(r.weights, w, atol=0, rtol=0)


@pytest.mark.parametrize("seed", range(3))
def test_random_policy_with_capacity_never_drops_while_slots_are_free(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(400, 8, generator=g) * 2
    _, idx, w = top_k_experts(logits, 2, "random", training=True, generator=g)
    cap = capacity(400, 8, 2, 0.6)
    r = apply_capacity(idx, w, 8, cap)
    valid = w > 0
    assert (valid & ~r.keep).any(), "capacity never bound: the test would not catch the bug"
    kept = torch.bincount(idx[r.keep], minlength=8)
    for e in range(8):
        dropped_here = (valid & ~r.keep & (idx == e)).any()
        assert kept[e] <= cap
        if dropped_here:
            assert kept[e] == cap, f"expert {e} dropped a real assignment with {cap - kept[e]} free slots"


def test_one_weight_convention_for_dropped_second_expert():
    """Second expert lost to capacity or to the random policy: the first gets weight 1."""
    # capacity: expert 1 has one slot; t0's and t1's first choices fill experts 0 and 1,
    # so t0's second choice (expert 1) is dropped, t1's second (expert 0) too (cap 1).
    idx = torch.tensor([[0, 1], [1, 0], [2, 3]])
    w = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.55, 0.45]])
    r = apply_capacity(idx, w, 4, cap=1)
    assert r.keep.tolist() == [[True, False], [True, False], [True, True]]
    assert r.weights[:2].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    torch.testing.assert_close(r.weights[2], w[2], atol=0, rtol=0)  # nothing dropped: unchanged
    # the random policy's drop gives the same weights
    torch.manual_seed(0)
    logits = torch.randn(300, 4)
    _, ridx, rw = top_k_experts(logits, 2, "random", training=True)
    dropped = rw[:, 1] == 0
    assert dropped.any() and torch.all(rw[dropped, 0] == 1.0)
    rr = apply_capacity(ridx, rw, 4, cap=None)
    assert torch.all(rr.weights[dropped, 0] == 1.0) and torch.all(rr.weights[dropped, 1] == 0)
    # first choice dropped by capacity, second kept: the second gets weight 1
    r = apply_capacity(torch.tensor([[0, 1], [0, 2]]), torch.tensor([[0.6, 0.4], [0.8, 0.2]]), 3, cap=1)
    assert r.keep.tolist() == [[True, True], [False, True]]
    assert r.weights[1].tolist() == [0.0, 1.0]
    # both dropped: no weight at all (residual only)
    r = apply_capacity(torch.tensor([[0, 1]] * 3), torch.full((3, 2), 0.5), 2, cap=1)
    assert r.weights[1:].abs().sum() == 0


def test_top1_capacity_drop_keeps_gate_probability_weights():
    idx = torch.tensor([[0], [0], [1]])
    w = torch.tensor([[0.9], [0.8], [0.4]])
    r = apply_capacity(idx, w, 2, cap=1)
    assert r.keep.squeeze(1).tolist() == [True, False, True]
    torch.testing.assert_close(r.weights.squeeze(1), torch.tensor([0.9, 0.0, 0.4]))
