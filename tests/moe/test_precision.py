"""The MoE layer's dtype contract (moe/experts.py) at W = 1: under CPU autocast (what --amp
runs) the layer returns the residual stream's dtype, runs forward and backward whether every
expert is hit or some get no rows, and stays within half-precision rounding of fp32.

Tolerances are relative L2 errors, ``|a - b| / |b|``, of 4 unit roundoffs of the compute
dtype (bf16 2^-8, fp16 2^-11): a value passes through about three roundings (input, hidden,
output), whose errors partly cancel over the D and F sums; measured: at most 2.7 u (the
task gate's gradient, an fp32 dot product over bf16 rows). GELU, not ReLU: a bf16 rounding
that moves a pre-activation across 0 flips ReLU's gradient mask, which measures the
threshold, not the dtype handling (nn.Linear alone under bf16 autocast: 3% gradient error
with ReLU, 0.4% with GELU).
"""

import pytest
import torch
import torch.nn.functional as F

from fairseq_taskmoe.moe.experts import StackedExperts, dispatch_combine, expert_compute_dtype
from fairseq_taskmoe.moe.layer import MoELayer, MoELayerConfig
from fairseq_taskmoe.moe.routing import Routing

D, FF, E = 16, 32, 4
UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
HALF = list(UNIT_ROUNDOFF)
ROUTINGS = ["token", "sentence", "task"]


def rel_err(a, b):
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())


def make_layer(routing, impl="auto", hit="all", activation=F.gelu):
    """A layer whose routing hits every expert (``hit="all"``) or experts 0 and 1 only."""
    torch.manual_seed(0)
    layer = MoELayer(MoELayerConfig(D, FF, E, routing, 2, activation, num_tasks=4, gate_fp32=True,
                                    expert_impl=impl))
    if hit == "some":
        with torch.no_grad():
            if routing == "task":
                layer.router.task_gate.weight.copy_(torch.tensor([[2.0, 1.0, -1.0, -2.0]]).expand(4, E))
            else:  # all logits 0: the first two experts win every tie
                layer.router.wg.weight.zero_()
    return layer


def batch():
    torch.manual_seed(1)
    x = torch.randn(7, 8, D)  # (L, B, D)
    pad = torch.zeros(8, 7, dtype=torch.bool)
    pad[0, -3:] = True
    pad[5, -1:] = True
    return x, pad, torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])


def forward_backward(layer, dtype=None):
    """y, stats, and the gradients of x and of every param for a fixed upstream gradient."""
    x, pad, task_ids = batch()
    x = x.requires_grad_()
    layer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        y, stats = layer(x, pad, task_ids)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    (y * g).sum().backward()
    grads = {"x": x.grad, **{n: p.grad for n, p in layer.named_parameters() if p.grad is not None}}
    return y, stats, grads


@pytest.mark.parametrize("hit", ["all", "some"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("routing", ROUTINGS)
def test_autocast_layer_returns_residual_dtype_close_to_fp32(routing, dtype, hit):
    layer = make_layer(routing, hit=hit)
    y32, stats32, g32 = forward_backward(layer)
    y, stats, grads = forward_backward(layer, dtype)
    counts = stats.expert_counts
    assert (counts > 0).all() if hit == "all" else (counts[:2] > 0).all() and (counts[2:] == 0).all(), counts
    assert torch.equal(stats.expert_counts, stats32.expert_counts)  # fp32 gate: same routing
    assert y.dtype == torch.float32 and grads["x"].dtype == torch.float32
    assert stats.aux_loss.dtype == torch.float32
    tol = 4 * UNIT_ROUNDOFF[dtype]
    assert 0 < rel_err(y, y32) <= tol  # > 0: the experts did compute in half precision
    assert set(grads) == set(g32)
    for name, g in grads.items():
        assert g.dtype == torch.float32, name
        assert rel_err(g, g32[name]) <= tol, (name, rel_err(g, g32[name]))


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("routing", ROUTINGS)
def test_autocast_with_relu_and_a_half_gate(routing, dtype):
    """fairseq's default activation and --moe-gate-fp32 off (the gate in half too): no error,
    the residual dtype, forward within rounding of fp32 (ReLU's mask flips only touch gradients)."""
    torch.manual_seed(0)
    layer = MoELayer(MoELayerConfig(D, FF, E, routing, 2, F.relu, num_tasks=4))
    y32, _, _ = forward_backward(layer)
    y, stats, grads = forward_backward(layer, dtype)
    assert y.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads.values())
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads.values())
    if routing == "task":  # the task gate is a table lookup: same routing, so comparable
        assert rel_err(y, y32) <= 4 * UNIT_ROUNDOFF[dtype]


@pytest.mark.parametrize("impl", ["loop", "grouped"])
@pytest.mark.parametrize("counts", [[3, 0, 2, 0], [0, 0, 0, 0], [2, 1, 1, 3]])
def test_forward_sorted_returns_the_compute_dtype_for_every_chunk(impl, counts):
    """Empty chunks (and no rows at all) come back in the compute dtype too: no torch.cat
    promotes to fp32 because one chunk was empty."""
    torch.manual_seed(0)
    experts = StackedExperts(E, D, FF, F.gelu, impl=impl)
    x = torch.randn(sum(counts), D)
    assert experts.forward_sorted(x, counts).dtype == torch.float32
    for dtype in HALF:
        with torch.autocast("cpu", dtype):
            assert expert_compute_dtype(x) == dtype
            y = experts.forward_sorted(x, counts)
        assert y.dtype == dtype and y.shape == x.shape
    assert experts.forward_sorted(x.bfloat16(), counts).dtype == torch.bfloat16  # autocast off: x's
    # the experts' params stay fp32 (autocast casts, the module does not)
    assert experts.fc1_weight.dtype == torch.float32


@pytest.mark.parametrize("residual", [torch.float32, torch.bfloat16, torch.float64])
def test_dispatch_combine_accumulates_in_the_residual_dtype(residual):
    """Half expert rows and fp32 combine weights add into x's dtype (the --amp crash:
    index_add_ of Half rows into a Float residual); the weight multiplies in fp32 or wider."""
    torch.manual_seed(0)
    x = torch.randn(5, D, dtype=residual)
    idx = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2]])
    w = torch.rand(5, 2)  # fp32, as routing returns them
    routing = Routing(idx, w, torch.ones(5, 2, dtype=torch.bool))
    half_fn = lambda rows, counts: (rows * 2).to(torch.float16)  # noqa: E731
    y = dispatch_combine(x, routing, E, half_fn)
    assert y.dtype == residual
    ref = torch.zeros(5, D, dtype=torch.float64)
    for t in range(5):
        for k in range(2):
            ref[t] += w[t, k].double() * (x[t] * 2).to(torch.float16).double()
    tol = {torch.bfloat16: 2 ** -7, torch.float32: 1e-6, torch.float64: 1e-12}[residual]
    torch.testing.assert_close(y.double(), ref, atol=tol * 4, rtol=tol)
