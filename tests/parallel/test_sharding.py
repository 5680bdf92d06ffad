"""Expert parallelism decided at construction (single process, no process group):
a rank's experts are exactly its rows of the W = 1 layer built from the same seed,
with the RNG left where W = 1 leaves it; the plan tags, hooks and names them; a bad
expert count fails when the layer is built."""

import pytest
import torch
import torch.nn as nn

from fairseq_taskmoe.moe.experts import StackedExperts
from fairseq_taskmoe.moe.layer import MoELayer
from fairseq_taskmoe.parallel.all_to_all import ExpertParallelRun
from fairseq_taskmoe.parallel.checkpoint import EXPERT_PARAM_NAMES
from fairseq_taskmoe.parallel.sharding import ExpertParallelPlan

E, D, FFN = 4, 8, 16


def _layer(plan=None):
    return MoELayer(D, FFN, E, "token", 2, torch.relu, expert_parallel=plan)


def test_rank_experts_are_rows_of_the_single_process_layer():
    torch.manual_seed(0)
    full = _layer()
    after_full = torch.rand(3)  # where the RNG is once the layer is built
    for rank in range(2):
        torch.manual_seed(0)
        shard = _layer(ExpertParallelPlan(rank, 2))
        torch.testing.assert_close(torch.rand(3), after_full, rtol=0, atol=0)
        assert shard.experts.num_experts == E // 2 and shard.num_experts == E
        for name in EXPERT_PARAM_NAMES:
            want = getattr(full.experts, name)[rank * E // 2:(rank + 1) * E // 2]
            assert torch.equal(getattr(shard.experts, name), want), (rank, name)
        for a, b in zip(shard.router.parameters(), full.router.parameters()):
            assert torch.equal(a, b)


def test_plan_decides_tag_hook_and_expert_fn():
    one, two = _layer(ExpertParallelPlan(0, 1)), _layer(ExpertParallelPlan(1, 2))
    assert one.expert_fn is None
    assert not any(hasattr(p, "expert") for p in one.experts.parameters())  # W = 1: plain params
    assert isinstance(two.expert_fn, ExpertParallelRun) and two.expert_fn.experts is two.experts
    assert all(hasattr(p, "expert") for p in two.experts.parameters())  # legacy_ddp skips them
    assert not any(hasattr(p, "expert") for p in two.router.parameters())
    w = two.experts.fc1_weight
    w.sum().backward()  # the grad hook divides by W (see parallel/sharding.py)
    torch.testing.assert_close(w.grad, torch.full_like(w, 0.5))


def test_attach_names_experts_by_their_place_in_the_model():
    plan = ExpertParallelPlan(1, 2)
    model = nn.ModuleDict({"enc": nn.ModuleList([nn.Linear(2, 2), _layer(plan)]), "dec": _layer(plan)})
    assert plan.attach(model) is model
    assert sorted(plan.params) == sorted(f"{side}.experts.{n}" for side in ("enc.1", "dec")
                                         for n in EXPERT_PARAM_NAMES)
    p = model["dec"].experts.fc2_bias
    assert plan.name_of(p) == "dec.experts.fc2_bias" and plan.rows(p) == (2, 4)
    assert p.expert_shard is plan  # the one link, for the optimizer
    stray = ExpertParallelPlan(0, 2)
    _layer(stray)  # built with the plan but never put in the model
    with pytest.raises(RuntimeError, match="1 expert modules were built with this plan, 0 are in"):
        stray.attach(nn.Linear(2, 2))


def test_expert_count_not_divisible_by_world_fails_at_construction():
    with pytest.raises(ValueError, match=r"--moe-expert-count \(4\) must be divisible by "
                                         r"--distributed-world-size \(3\)"):
        _layer(ExpertParallelPlan(0, 3))


def test_stacked_experts_rows_validated():
    with pytest.raises(AssertionError):
        StackedExperts(4, D, FFN, torch.relu, rows=(2, 6))
