"""Pure functions of extraction: fusing, padding and restricting are exact."""

import pytest
import torch
import torch.nn.functional as F

from fairseq_taskmoe.extract import fuse
from fairseq_taskmoe.moe.layer import MoELayer

D, FF, E, N = 8, 16, 4, 3


def moe(top_k):
    torch.manual_seed(0)
    layer = MoELayer(D, FF, E, "task", top_k, F.relu, num_tasks=N).eval()
    layer.router.task_gate.weight.data.normal_(std=2.0)
    return layer


def experts_of(layer):
    return {k: getattr(layer.experts, k).detach() for k in fuse.EXPERT_KEYS}


def dense(ffn, x):
    return F.linear(F.relu(F.linear(x, ffn["fc1.weight"], ffn["fc1.bias"])), ffn["fc2.weight"], ffn["fc2.bias"])


@pytest.mark.parametrize("top_k", [1, 2])
def test_fused_ffn_equals_task_routed_moe(top_k):
    layer = moe(top_k)
    x = torch.randn(5, 2, D)  # (L, B, D)
    gate = layer.router.task_gate.weight.detach()
    for task in range(N):
        y, _ = layer(x, None, torch.full((2,), task))
        idx, w = fuse.task_choice(gate, task, top_k)
        ffn = fuse.fuse_experts(experts_of(layer), idx, w)
        assert ffn["fc1.weight"].shape == (top_k * FF, D) and ffn["fc2.weight"].shape == (D, top_k * FF)
        torch.testing.assert_close(dense(ffn, x), y, atol=1e-6, rtol=1e-5)


def test_padding_is_exact():
    ffn = {"fc1.weight": torch.randn(FF, D), "fc1.bias": torch.randn(FF),
           "fc2.weight": torch.randn(D, FF), "fc2.bias": torch.randn(D)}
    padded = fuse.pad_dense_ffn(ffn, 3 * FF)
    x = torch.randn(7, D)
    assert padded["fc1.weight"].shape == (3 * FF, D)
    # Mathematically exact; a longer inner dimension may change the float summation order.
    torch.testing.assert_close(dense(padded, x), dense(ffn, x), atol=1e-5, rtol=1e-6)
    with pytest.raises(ValueError, match="cannot pad"):
        fuse.pad_dense_ffn(ffn, FF - 1)


def test_restricted_task_gate_keeps_choice_and_weights():
    gate = moe(2).router.task_gate.weight.detach()
    tasks = [0, 2]
    choices = [fuse.task_choice(gate, t, 2) for t in tasks]
    keep = fuse.expert_union([idx for idx, _ in choices])
    small = fuse.restrict_task_gate(gate, tasks, keep)
    assert small.shape == (2, len(keep))
    for row, (idx, w) in enumerate(choices):
        new_idx, new_w = fuse.task_choice(small, row, 2)
        assert [keep[i] for i in new_idx] == idx
        assert new_w == pytest.approx(w, abs=1e-6)


def test_slice_and_top_used():
    ex = experts_of(moe(2))
    sliced = fuse.slice_experts(ex, [3, 1])
    assert torch.equal(sliced["fc2_bias"][0], ex["fc2_bias"][3])
    assert fuse.top_used(torch.tensor([5.0, 9.0, 5.0, 1.0]), 2) == [0, 1]  # tie -> lower index
    wg = torch.randn(E, D)
    assert torch.equal(fuse.restrict_token_gate(wg, [2])[0], wg[2])
