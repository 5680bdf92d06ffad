"""The MoE layer under CPU autocast (what --amp runs) with 2 expert-parallel gloo ranks: no
error, no hang, the residual dtype out, and the W = 1 result (the same two slices run one
after the other in one process) within half-precision rounding. Cases: every rank's experts
busy; rank 1's experts receiving no rows (every gate picks experts 0 and 1); rank 1 with no
rows at all (its sentences all padding); both at once. Each for the loop and the grouped GEMM.

Before the dtype contract, the return all-to-all paired a rank whose expert output was half
with a rank whose output was fp32 (an empty chunk decided its dtype); moe/experts.py now
makes every rank exchange the compute dtype.
"""

import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from parallel import ep_harness as H
from fairseq_taskmoe.moe.layer import MoELayer, MoELayerConfig
from fairseq_taskmoe.parallel.sharding import expert_parallel_from_args

E, D, FFN, L, B, W = 4, 8, 16, 5, 4, 2  # D = 8, F = 16: 16-byte rows in fp32, bf16 and fp16
ROUTINGS = (("token", {"capacity_factor": 1.0}), ("token", {"dropless": True}), ("sentence", {}),
            ("task", {"num_tasks": 3}))
CASES = ("busy", "rank1 experts idle", "rank1 no rows", "both")
DTYPES = (None, torch.bfloat16, torch.float16)  # None: fp32, autocast off
# Relative L2 bound against W = 1: fp32 exact up to summation order; half: 4 unit roundoffs
# (tests/moe/test_precision.py), as W = 2 runs both slices' rows in one GEMM and W = 1 in two.
TOL = {None: 1e-5, torch.bfloat16: 4 * 2.0 ** -8, torch.float16: 4 * 2.0 ** -11}
DEADLINE_S = 240


def build(impl, plan=None):
    torch.manual_seed(0)
    return nn.ModuleList(
        MoELayer(MoELayerConfig(D, FFN, E, routing, 2, F.gelu, gate_fp32=True, expert_impl=impl, **kw),
                 expert_parallel=plan) for routing, kw in ROUTINGS)


def prepare(layers, case):
    """The global batch of the case, with the gates set for it."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(L, B, D, generator=g)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, 3:] = True
    task_ids = torch.tensor([0, 1, 2, 1])
    if case in ("rank1 experts idle", "both"):
        with torch.no_grad():
            for layer in layers:
                if layer.routing == "task":  # experts 0 and 1 first for every task
                    layer.router.task_gate.weight.copy_(torch.tensor([[2.0, 1.0, -1.0, -2.0]]).expand(3, E))
                else:  # all logits 0: argmax ties go to experts 0 and 1
                    layer.router.wg.weight.zero_()
    if case in ("rank1 no rows", "both"):
        pad[B // 2:] = True
    return x, pad, task_ids


def run_slice(layers, x, pad, task_ids, dtype):
    """Forward + backward of every layer on one slice; y per layer and the grad of x."""
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        outs = [layer(x, pad, task_ids) for layer in layers]
    ys = [y for y, _ in outs]
    grad = torch.randn(ys[0].shape, generator=torch.Generator().manual_seed(int(pad.sum()) + 7))
    sum((y * grad * (i + 1)).sum() for i, y in enumerate(ys)).backward()
    return ys, x.grad, [st.expert_counts for _, st in outs]


def slices(x, pad, task_ids):
    half = B // 2
    return [(x[:, r * half:(r + 1) * half], pad[r * half:(r + 1) * half], task_ids[r * half:(r + 1) * half])
            for r in range(W)]


def single_process(impl, case, dtype):
    """W = 1: the two ranks' slices in turn, gradients summed."""
    layers = build(impl)
    parts = [run_slice(layers, *s, dtype) for s in slices(*prepare(layers, case))]
    grads = {n: p.grad.clone() for n, p in layers.named_parameters() if p.grad is not None}
    return parts, grads


def _worker(rank, world, port, out):
    H.init_gloo(rank, world, port)
    try:
        results = {}
        for impl in ("loop", "grouped"):
            for case in CASES:
                for dtype in DTYPES:
                    plan = expert_parallel_from_args()
                    layers = build(impl, plan)
                    ys, xgrad, counts = run_slice(layers, *slices(*prepare(layers, case))[rank], dtype)
                    assert all(layer.experts.path(torch.device("cpu"), dtype or torch.float32) == impl
                               for layer in layers)
                    grads = {}
                    for n, p in layers.named_parameters():
                        g = torch.zeros_like(p) if p.grad is None else p.grad
                        if "experts." in n:  # each rank holds E/W rows; the plan's hook divided by W
                            parts = [torch.empty_like(g) for _ in range(world)]
                            dist.all_gather(parts, g.contiguous())
                            grads[n] = torch.cat(parts) * world
                        else:  # each rank's grad is its slice's
                            dist.all_reduce(g)
                            grads[n] = g
                    mine = {"ys": ys, "xgrad": xgrad, "counts": counts}
                    both = [None] * world
                    dist.all_gather_object(both, mine)
                    results[(impl, case, str(dtype))] = {"ranks": both, "grads": grads}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def rel_err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("autocast") / "w2.pt"
    ctx = mp.spawn(_worker, args=(W, H.free_port(), out), nprocs=W, join=False)
    deadline = time.monotonic() + DEADLINE_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail(f"2 gloo ranks did not finish within {DEADLINE_S} s (a hang in the all-to-all?)")
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize("impl", ["loop", "grouped"])
def test_two_ranks_under_autocast_match_one(two_ranks, impl):
    for case in CASES:
        for dtype in DTYPES:
            got = two_ranks[(impl, case, str(dtype))]
            parts, grads = single_process(impl, case, dtype)
            tol, where = TOL[dtype], (impl, case, dtype)
            for rank, (ys1, xgrad1, counts1) in enumerate(parts):
                mine = got["ranks"][rank]
                assert all(y.dtype == torch.float32 for y in mine["ys"]) and mine["xgrad"].dtype == torch.float32
                for c2, c1 in zip(mine["counts"], counts1):
                    assert torch.equal(c2, c1), where  # each rank routes its slice as W = 1 does
                for y2, y1 in zip(mine["ys"], ys1):
                    assert rel_err(y2, y1) <= tol if y1.norm() > 0 else torch.equal(y2, y1), where
                assert rel_err(mine["xgrad"], xgrad1) <= tol if xgrad1.norm() > 0 else \
                    torch.equal(mine["xgrad"], xgrad1), where
            for n, g1 in grads.items():
                assert rel_err(got["grads"][n], g1) <= tol, (where, n, rel_err(got["grads"][n], g1))
            # the case is what it says
            counts = [torch.stack([c[i] for c in (got["ranks"][0]["counts"], got["ranks"][1]["counts"])]).sum(0)
                      for i in range(len(ROUTINGS))]
            if case in ("rank1 experts idle", "both"):
                assert all(c[E // 2:].sum() == 0 and c[:E // 2].sum() > 0 for c in counts), where
            else:
                assert all((c[E // 2:].sum() > 0) for c in counts), where
            if case in ("rank1 no rows", "both"):
                assert all(c.sum() == 0 for c in got["ranks"][1]["counts"]), where
