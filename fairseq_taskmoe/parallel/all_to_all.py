"""Expert-parallel dispatch: tokens reach the rank that owns their expert.

Legend: W ranks in the expert group, E global experts, El = E / W local
experts, C slots per (rank, expert), A this rank's kept assignments, D model dim.

Rank w owns the contiguous global experts ``w*El .. (w+1)*El - 1``. fairscale's
``_AllToAll`` (``dist.all_to_all_single`` with autograd) only does equal
splits, so every rank packs its assignments into a fixed (E, C, D) buffer with
C = the largest count of any expert on any rank. The counts come from one
``all_gather`` of the (E,) count vector, which also tells each owner how many
rows of every slot are real, so nothing is dropped (dropless stays dropless);
the price is padding up to C (see docs/PARALLEL.md).
"""

from typing import List

import torch
import torch.distributed as dist
from fairscale.nn.moe.moe_layer import _AllToAll
from torch import Tensor


def gather_counts(counts: Tensor, group=None) -> Tensor:
    """(E,) long counts of this rank -> (W, E) counts of every rank."""
    out = [torch.empty_like(counts) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, counts.contiguous(), group=group)
    return torch.stack(out)


def slot_index(counts: Tensor, capacity: int) -> Tensor:
    """Flat positions of the real rows in an (N, C) slot grid.

    counts: (N,) rows used in each of N slots. Returns (sum(counts),) indices
    into the flattened (N*C) grid, slot 0's rows first, in row order.
    """
    pos = torch.arange(capacity, device=counts.device)  # (C,)
    used = pos.unsqueeze(0) < counts.unsqueeze(1)  # (N, C)
    return used.reshape(-1).nonzero().squeeze(1)


def expert_parallel_run(x_sorted: Tensor, counts_list: List[int], experts, group=None) -> Tensor:
    """Run global experts on rows sorted by global expert id, across ranks.

    Args:
        x_sorted: (A, D) this rank's assignments grouped by global expert.
        counts_list: E ints, rows per global expert on this rank.
        experts: this rank's ``StackedExperts`` (El experts).
    Returns:
        (A, D) expert outputs in the order of ``x_sorted``.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    num_experts = len(counts_list)
    n_local = num_experts // world
    assert n_local * world == num_experts and experts.num_experts == n_local
    dim = x_sorted.size(1)
    counts = torch.tensor(counts_list, dtype=torch.long, device=x_sorted.device)  # (E,)
    all_counts = gather_counts(counts, group)  # (W, E)
    cap = int(all_counts.max())
    if cap == 0:  # every rank sees the same counts, so every rank skips together
        return x_sorted

    send_idx = slot_index(counts, cap)  # (A,)
    send = x_sorted.new_zeros(num_experts * cap, dim).index_copy(0, send_idx, x_sorted)  # (E*C, D)
    # Chunk w of dim 0 (experts w*El..) goes to rank w; we get our El experts' slots from every rank.
    recv = _AllToAll.apply(group, send).view(world, n_local, cap, dim)  # (W, El, C, D)

    mine = all_counts[:, rank * n_local:(rank + 1) * n_local].t()  # (El, W) rows from each source
    recv_idx = slot_index(mine.reshape(-1), cap)  # into the (El*W*C) grid, grouped by local expert
    x_local = recv.transpose(0, 1).reshape(-1, dim).index_select(0, recv_idx)  # (sum, D)
    y_local = experts.forward_sorted(x_local, mine.sum(1).tolist())  # (sum, D)
    out = y_local.new_zeros(n_local * world * cap, dim).index_copy(0, recv_idx, y_local)
    out = out.view(n_local, world, cap, dim).transpose(0, 1).reshape(num_experts * cap, dim)

    back = _AllToAll.apply(group, out)  # (E*C, D): owner w's results for our slots of its experts
    return back.index_select(0, send_idx)  # (A, D)


class ExpertParallelRun:
    """``MoELayer.expert_fn`` for a sharded layer (a plain callable, not a
    module, so the experts are not registered twice in the state dict)."""

    def __init__(self, experts, group=None):
        self.experts = experts
        self.group = group

    def __call__(self, x_sorted: Tensor, counts_list: List[int]) -> Tensor:
        return expert_parallel_run(x_sorted, counts_list, self.experts, self.group)
