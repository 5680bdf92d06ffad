"""The grouped GEMM path (torch._grouped_mm) equals the per-expert loop, and the choice
between them (--moe-expert-impl) is made and reported as documented in moe/experts.py."""

import logging
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F

from fairseq_taskmoe.config import moe_config_from_args
from fairseq_taskmoe.moe import experts as experts_mod
from fairseq_taskmoe.moe.experts import StackedExperts, choose_expert_impl, grouped_unsupported
from fairseq_taskmoe.moe.layer import MoELayer, MoELayerConfig

D, FF, E = 16, 32, 4
CPU = torch.device("cpu")
COUNTS = {"all hit": [3, 1, 4, 2], "some empty": [3, 0, 5, 0], "no rows": [0, 0, 0, 0]}


def rel_err(a, b):
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm().clamp_min(1e-30))


def run(experts, impl, x, counts, grad=None, seed=None):
    """forward_sorted on ``impl``; returns y and the grads of x and of the four params."""
    experts.impl = impl
    experts.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    if seed is not None:
        torch.manual_seed(seed)
    y = experts.forward_sorted(x, counts)
    assert experts.path(x.device, y.dtype) == impl
    (y.sum() if grad is None else (y * grad.to(y.dtype)).sum()).backward()
    # With no rows at all the loop runs no expert (no grad, None); grouped gives zeros.
    return y, [x.grad] + [torch.zeros_like(p) if p.grad is None else p.grad for p in experts.parameters()]


@pytest.mark.parametrize("case", list(COUNTS))
@pytest.mark.parametrize("broadcast_grad", [False, True])
def test_grouped_equals_loop_fp32_values_and_grads(case, broadcast_grad):
    """fp32: within 1e-5. ``broadcast_grad``: y.sum() gives _grouped_mm a stride-0 gradient,
    which its backward refuses unless made dense."""
    counts = COUNTS[case]
    torch.manual_seed(0)
    experts = StackedExperts(E, D, FF, F.relu)
    x = torch.randn(sum(counts), D)
    grad = None if broadcast_grad else torch.randn(sum(counts), D)
    y_loop, g_loop = run(experts, "loop", x, counts, grad)
    y_grp, g_grp = run(experts, "grouped", x, counts, grad)
    assert y_grp.dtype == y_loop.dtype == torch.float32 and y_grp.shape == (sum(counts), D)
    torch.testing.assert_close(y_grp, y_loop, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_grp, g_loop):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if case != "all hit":  # an expert with no rows gets an exact zero gradient on both paths
        idle = [e for e, c in enumerate(counts) if c == 0]
        assert all(g[idle].abs().sum() == 0 for g in g_grp[1:])


@pytest.mark.parametrize("case", ["all hit", "some empty"])
@pytest.mark.parametrize("how", ["bf16 params", "bf16 autocast"])
def test_grouped_bf16_within_the_loops_tolerance_against_fp32(case, how):
    """bf16 (the params cast, as --memory-efficient-bf16; or fp32 params under autocast, as
    --amp): both paths against the fp32 loop, within the loop's own bound of 4 bf16 unit
    roundoffs (relative L2; tests/moe/test_precision.py says why). GELU, for the same reason."""
    counts = COUNTS[case]
    torch.manual_seed(0)
    experts = StackedExperts(E, D, FF, F.gelu)
    x, grad = torch.randn(sum(counts), D), torch.randn(sum(counts), D)
    y32, g32 = run(experts, "loop", x, counts, grad)
    if how == "bf16 params":
        experts, x = experts.to(torch.bfloat16), x.bfloat16()
    tol = 4 * 2.0 ** -8
    errors = {}
    for impl in ("loop", "grouped"):
        with torch.autocast("cpu", torch.bfloat16, enabled=how == "bf16 autocast"):
            y, g = run(experts, impl, x, counts, grad)
        assert y.dtype == torch.bfloat16
        errors[impl] = [rel_err(y, y32)] + [rel_err(a, b) for a, b in zip(g, g32)]
        assert max(errors[impl]) <= tol, (impl, errors)
    assert min(errors["grouped"]) > 0  # it did run in bf16


def test_grouped_equals_loop_with_activation_dropout():
    """Training with activation dropout: the same mask on CPU (one bernoulli draw over the
    active experts' rows, in row order, either way), so equal values and gradients."""
    counts = [5, 0, 7, 3]
    torch.manual_seed(0)
    experts = StackedExperts(E, D, FF, F.relu, activation_dropout=0.3).train()
    x, grad = torch.randn(sum(counts), D), torch.randn(sum(counts), D)
    y_loop, g_loop = run(experts, "loop", x, counts, grad, seed=11)
    y_grp, g_grp = run(experts, "grouped", x, counts, grad, seed=11)
    torch.testing.assert_close(y_grp, y_loop, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_grp, g_loop):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    _, again = run(experts, "grouped", x, counts, grad, seed=12)
    assert not torch.equal(again[1], g_grp[1])  # dropout is on: another seed, another mask


@pytest.mark.parametrize("routing", ["token", "sentence", "task"])
def test_moe_layer_grouped_equals_loop(routing):
    """The whole layer (routing, capacity, combine) on either path, task ids hitting a subset."""
    x = torch.randn(6, 5, D, generator=torch.Generator().manual_seed(1))
    pad = torch.zeros(5, 6, dtype=torch.bool)
    pad[1, 4:] = True
    task_ids = torch.tensor([0, 0, 2, 2, 0])
    out = {}
    for impl in ("loop", "grouped"):
        torch.manual_seed(0)
        layer = MoELayer(MoELayerConfig(D, FF, 8, routing, 2, F.relu, num_tasks=3, capacity_factor=0.5,
                                        expert_impl=impl)).train()
        xx = x.clone().requires_grad_()
        y, stats = layer(xx, pad, task_ids)
        (y * torch.arange(y.numel()).view_as(y).sin()).sum().backward()
        out[impl] = [y, xx.grad] + [p.grad for p in layer.experts.parameters()]
    if routing == "token":  # every expert hit, some rows dropped at capacity 0.5
        assert (stats.expert_counts > 0).all() and stats.dropped > 0
    else:  # 5 sentences or 2 tasks, top-2 of 8: some experts idle
        assert (stats.expert_counts == 0).any()
    for a, b in zip(out["grouped"], out["loop"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_auto_follows_the_measured_default_per_device(monkeypatch):
    assert choose_expert_impl("auto", CPU, torch.float32, D, FF)[0] == (
        "grouped" if experts_mod.AUTO_GROUPED["cpu"] else "loop")
    monkeypatch.setitem(experts_mod.AUTO_GROUPED, "cpu", True)
    assert choose_expert_impl("auto", CPU, torch.float32, D, FF) == ("grouped", "--moe-expert-impl auto")
    monkeypatch.setitem(experts_mod.AUTO_GROUPED, "cpu", False)
    path, why = choose_expert_impl("auto", CPU, torch.bfloat16, D, FF)
    assert path == "loop" and "measured faster" in why
    assert choose_expert_impl("grouped", CPU, torch.float32, D, FF)[0] == "grouped"
    assert choose_expert_impl("loop", CPU, torch.float32, D, FF)[0] == "loop"


@pytest.mark.parametrize("dims,dtype,match", [
    ((6, 32), torch.float32, "16-byte row strides: D 6 not a multiple of 4"),
    ((16, 20), torch.bfloat16, "F 20 not a multiple of 8"),
    ((16, 32), torch.float64, "not torch.float64"),
])
def test_fallback_to_the_loop_where_grouped_mm_does_not_take_it(monkeypatch, dims, dtype, match):
    """Unaligned dims or a dtype _grouped_mm refuses: auto runs the loop (even where grouped
    would be the default) and says why; forcing grouped is an error naming the flag."""
    monkeypatch.setitem(experts_mod.AUTO_GROUPED, "cpu", True)
    d, ff = dims
    assert match in grouped_unsupported(CPU, dtype, d, ff)
    path, why = choose_expert_impl("auto", CPU, dtype, d, ff)
    assert path == "loop" and match in why
    with pytest.raises(ValueError, match="--moe-expert-impl grouped: .*use auto or loop"):
        choose_expert_impl("grouped", CPU, dtype, d, ff)
    # the fallback runs: a D = 6 layer under auto, where bare _grouped_mm fails
    torch.manual_seed(0)
    layer = MoELayer(MoELayerConfig(d, ff, E, "token", 2, F.relu)).to(dtype)
    y, _ = layer(torch.randn(3, 2, d, dtype=dtype), None)
    assert y.dtype == dtype and layer.experts.path(CPU, dtype) == "loop"
    if d == 6:
        with pytest.raises(RuntimeError, match="16 bytes"):
            torch._grouped_mm(torch.randn(4, 6), torch.randn(2, 6, 8), offs=torch.tensor([2, 4], dtype=torch.int32))


def test_path_is_logged_once_per_process(monkeypatch, caplog):
    monkeypatch.setattr(experts_mod, "_LOGGED", set())
    monkeypatch.setitem(experts_mod.AUTO_GROUPED, "cpu", False)
    layers = [MoELayer(MoELayerConfig(D, FF, E, "token", 2, F.relu)) for _ in range(2)]
    forced = MoELayer(MoELayerConfig(D, FF, E, "token", 2, F.relu, expert_impl="grouped"))
    with caplog.at_level(logging.INFO, logger="fairseq_taskmoe.moe.experts"):
        for _ in range(2):
            for layer in layers + [forced]:
                layer(torch.randn(3, 2, D), None)
    lines = [r.getMessage() for r in caplog.records if r.name == "fairseq_taskmoe.moe.experts"]
    assert lines == [
        "MoE experts: per-expert loop on cpu float32: auto on cpu: the loop measured faster "
        "(bench/moe_layer.py)",
        "MoE experts: grouped GEMM (torch._grouped_mm) on cpu float32 (--moe-expert-impl grouped)",
    ]


def test_expert_impl_flag_is_validated_and_threaded():
    assert moe_config_from_args(Namespace()).expert_impl == "auto"
    assert moe_config_from_args(Namespace(moe_expert_impl="loop")).expert_impl == "loop"
    with pytest.raises(ValueError, match="--moe-expert-impl must be one of auto, grouped, loop; got 'fast'"):
        moe_config_from_args(Namespace(moe_expert_impl="fast"))
    with pytest.raises(ValueError, match="--moe-expert-impl must be one of auto, grouped, loop"):
        MoELayerConfig(D, FF, E, "token", 2, F.relu, expert_impl="fast")
    assert MoELayer(MoELayerConfig(D, FF, E, "token", 2, F.relu, expert_impl="loop")).experts.impl == "loop"
