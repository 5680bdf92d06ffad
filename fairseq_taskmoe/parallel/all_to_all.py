"""Expert-parallel dispatch: tokens reach the rank that owns their expert.

Legend: W ranks in the expert group, E global experts, El = E / W local
experts, A this rank's kept assignments, R rows this rank receives, D model dim.

Rank w owns the contiguous global experts ``w*El .. (w+1)*El - 1``, so rows
sorted by global expert are already grouped by destination rank. One
``all_gather`` of the (E,) count vector per layer call tells every rank how
many rows it sends to and receives from each rank, and ``all_to_all_single``
with those split sizes moves exactly the routed rows: no padding to the busiest
expert (the old (E, C, D) buffer was up to E/K times the real data under task
routing). Dropless stays dropless: every kept assignment travels.

Dtype: both exchanges (rows out, expert outputs back) and their backward move
the compute dtype ``expert_compute_dtype(x_sorted)`` on every rank, empty
chunks and ranks with no rows included (the contract in ``moe.experts``). It
depends only on the autocast state and the residual stream's dtype, which every
rank shares, so no rank sizes a buffer from a dtype another rank does not use
and no collective is needed to agree on it.
"""

from typing import List, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from fairseq_taskmoe.moe.experts import expert_compute_dtype


def gather_counts(counts: Tensor, group=None) -> Tensor:
    """(E,) long counts of this rank -> (W, E) counts of every rank."""
    out = [torch.empty_like(counts) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, counts.contiguous(), group=group)
    return torch.stack(out)


class AllToAllSplit(torch.autograd.Function):
    """``all_to_all_single`` with split sizes, differentiable.

    Forward sends ``send_splits[w]`` rows of ``x`` to rank w and receives
    ``recv_splits[w]`` rows from it; backward is the same exchange with the
    splits swapped (the gradient of a row returns to the rank that sent it).
    """

    @staticmethod
    def forward(ctx, x: Tensor, send_splits: List[int], recv_splits: List[int], group=None):
        ctx.splits, ctx.group = (send_splits, recv_splits), group
        out = x.new_empty((sum(recv_splits),) + tuple(x.shape[1:]))  # (R, D)
        dist.all_to_all_single(out, x.contiguous(), recv_splits, send_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        send_splits, recv_splits = ctx.splits
        out = grad.new_empty((sum(send_splits),) + tuple(grad.shape[1:]))  # (A, D)
        dist.all_to_all_single(out, grad.contiguous(), send_splits, recv_splits, group=ctx.group)
        return out, None, None, None


def source_to_expert_order(mine: Tensor) -> Tensor:
    """Permutation that regroups received rows by local expert.

    mine: (W, El) rows that source rank w sent for local expert e; received
    rows arrive source-major (w, then e). Returns ``perm`` (R,) such that
    ``recv[perm]`` is expert-major (e, then w, rows in order).
    """
    lengths = mine.reshape(-1)  # (W*El,) source-major
    starts = torch.cumsum(lengths, 0) - lengths  # (W*El,)
    lengths_em = mine.t().reshape(-1)  # (El*W,) expert-major
    starts_em = starts.view(mine.shape).t().reshape(-1)
    out_starts = torch.cumsum(lengths_em, 0) - lengths_em
    total = int(lengths.sum())
    offset = torch.repeat_interleave(starts_em - out_starts, lengths_em, output_size=total)
    return torch.arange(total, device=mine.device) + offset


def expert_parallel_run(x_sorted: Tensor, counts_list: List[int], experts,
                        group=None) -> Tuple[Tensor, int]:
    """Run global experts on rows sorted by global expert id, across ranks.

    Args:
        x_sorted: (A, D) this rank's assignments grouped by global expert.
        counts_list: E ints, rows per global expert on this rank.
        experts: this rank's ``StackedExperts`` (El experts).
    Returns:
        (A, D) expert outputs in the order of ``x_sorted``, in the compute dtype
        (the agreed dtype of both exchanges), and the number of rows this rank
        handed to the all-to-all (== A: no padding).
    """
    x_sorted = x_sorted.to(expert_compute_dtype(x_sorted))  # (A, D) the agreed dtype, even if A == 0
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    num_experts = len(counts_list)
    n_local = num_experts // world
    assert n_local * world == num_experts and experts.num_experts == n_local
    counts = torch.tensor(counts_list, dtype=torch.long)  # (E,) on CPU: gloo and splits need host ints
    all_counts = gather_counts(counts.to(x_sorted.device), group).cpu()  # (W, E)
    if int(all_counts.sum()) == 0:  # every rank sees the same counts, so every rank skips together
        return x_sorted, 0
    send_splits = counts.view(world, n_local).sum(1).tolist()  # (W,) rows to each owner
    mine = all_counts[:, rank * n_local:(rank + 1) * n_local]  # (W, El) rows from each source
    recv_splits = mine.sum(1).tolist()  # (W,)

    recv = AllToAllSplit.apply(x_sorted, send_splits, recv_splits, group)  # (R, D) source-major
    perm = source_to_expert_order(mine).to(x_sorted.device)  # (R,)
    y_local = experts.forward_sorted(recv.index_select(0, perm), mine.sum(0).tolist())  # (R, D)
    assert y_local.dtype == x_sorted.dtype, (y_local.dtype, x_sorted.dtype)  # forward_sorted's contract
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    back = AllToAllSplit.apply(y_local.index_select(0, inverse), recv_splits, send_splits, group)
    return back, x_sorted.size(0)  # (A, D)


class ExpertParallelRun:
    """``MoELayer.expert_fn`` for a sharded layer (a plain callable, not a
    module, so the experts are not registered twice in the state dict).

    Returns ``(y_sorted, rows_sent)``; the layer turns ``rows_sent`` into the
    logged all-to-all ratio (rows sent / rows routed)."""

    def __init__(self, experts, group=None):
        self.experts = experts
        self.group = group

    def __call__(self, x_sorted: Tensor, counts_list: List[int]) -> Tuple[Tensor, int]:
        return expert_parallel_run(x_sorted, counts_list, self.experts, self.group)
