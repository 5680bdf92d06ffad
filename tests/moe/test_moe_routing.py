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
