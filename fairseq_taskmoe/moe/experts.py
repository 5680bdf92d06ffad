"""Stacked expert FFNs and sort-based dispatch.

Legend: T tokens, K experts per token, A kept assignments (<= T*K), E experts
(in ``StackedExperts``: those held, all or an expert-parallel rank's share),
D model dim, F expert FFN dim.

Expert weights live in four stacked tensors in ``nn.Linear`` layout
(``fc1_weight[e]`` is expert e's ``fc1.weight``), so one expert is exactly a
dense fairseq FFN and extraction can slice experts out. Dispatch sorts the
assignments by expert and runs one matmul per *active* expert on a contiguous
slice: no (T, E, capacity) one-hot tensor and no padding to the busiest expert,
which matters for task routing where a batch of one task uses only K experts.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class StackedExperts(nn.Module):
    """E independent FFNs ``fc2(dropout(act(fc1(x))))`` with stacked weights.

    ``rows=(lo, hi)`` keeps only global experts ``lo .. hi-1`` of ``num_experts``
    (an expert-parallel rank's share, see ``fairseq_taskmoe.parallel``); the
    default keeps them all. ``self.num_experts`` is the number held.
    ``tag_expert`` sets fairseq's ``param.expert`` tag: its data-parallel
    wrappers (legacy_ddp) skip the gradient all-reduce of such params, and its
    ``clip_grad_norm_`` leaves them out of the norm.
    """

    def __init__(self, num_experts, embed_dim, ffn_dim, activation_fn, activation_dropout=0.0,
                 rows=None, tag_expert=True):
        super().__init__()
        lo, hi = rows if rows is not None else (0, num_experts)
        assert 0 <= lo < hi <= num_experts, (rows, num_experts)
        self.total_experts, self.rows = num_experts, (lo, hi)
        self.num_experts = hi - lo
        self.fc1_weight = nn.Parameter(torch.empty(hi - lo, ffn_dim, embed_dim))  # (E, F, D)
        self.fc1_bias = nn.Parameter(torch.empty(hi - lo, ffn_dim))  # (E, F)
        self.fc2_weight = nn.Parameter(torch.empty(hi - lo, embed_dim, ffn_dim))  # (E, D, F)
        self.fc2_bias = nn.Parameter(torch.empty(hi - lo, embed_dim))  # (E, D)
        self.activation_fn = activation_fn
        self.activation_dropout = activation_dropout
        if tag_expert:
            for p in self.parameters():
                p.expert = True  # fairseq tests hasattr(p, "expert")
        self.reset_parameters()

    def reset_parameters(self):
        # Same init as each expert being its own nn.Linear. Every one of the
        # total_experts draws its random numbers, in order, held here or not: a
        # rank's experts are then exactly the rows of the single-process model
        # built from the same seed, and the RNG is left where that model leaves it.
        lo, hi = self.rows
        for e in range(self.total_experts):
            for w, b in ((self.fc1_weight, self.fc1_bias), (self.fc2_weight, self.fc2_bias)):
                held = lo <= e < hi
                w_e = w.data[e - lo] if held else torch.empty_like(w.data[0])
                b_e = b.data[e - lo] if held else torch.empty_like(b.data[0])
                nn.init.kaiming_uniform_(w_e, a=math.sqrt(5))
                bound = 1 / math.sqrt(w.size(-1))
                nn.init.uniform_(b_e, -bound, bound)

    def expert_forward(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Run local expert ``e`` on x (N, D) -> (N, D)."""
        return self._ffn(x, self.fc1_weight[e], self.fc1_bias[e], self.fc2_weight[e], self.fc2_bias[e])

    def _ffn(self, x, w1, b1, w2, b2):
        h = self.activation_fn(F.linear(x, w1, b1))  # (N, F)
        h = F.dropout(h, p=self.activation_dropout, training=self.training)
        return F.linear(h, w2, b2)  # (N, D)

    def forward_sorted(self, x_sorted: torch.Tensor, counts) -> torch.Tensor:
        """Run experts on rows grouped by expert.

        Args:
            x_sorted: (A, D) rows, expert 0's first, then expert 1's, ...
            counts: list of E ints, rows per local expert.
        """
        # unbind once: indexing w[e] per expert would make autograd build a
        # full (E, ...) gradient per expert, O(E^2) memory traffic in backward.
        params = zip(self.fc1_weight.unbind(0), self.fc1_bias.unbind(0),
                     self.fc2_weight.unbind(0), self.fc2_bias.unbind(0))
        outs = []
        for chunk, (w1, b1, w2, b2) in zip(torch.split(x_sorted, counts), params):
            outs.append(self._ffn(chunk, w1, b1, w2, b2) if chunk.numel() else chunk)
        return torch.cat(outs, 0) if outs else x_sorted


def sort_by_expert(expert_idx, weights, keep, num_experts):
    """Flatten kept (token, expert) assignments and group them by expert.

    Args:
        expert_idx, weights, keep: (T, K).
    Returns:
        token_idx (A,), weight (A,), counts (E,) long, sorted by expert.
    """
    k = expert_idx.size(1)
    flat_keep = keep.reshape(-1)  # (T*K,)
    token_idx = torch.arange(expert_idx.numel(), device=expert_idx.device) // k
    token_idx = token_idx[flat_keep]  # (A,)
    experts = expert_idx.reshape(-1)[flat_keep]  # (A,)
    weight = weights.reshape(-1)[flat_keep]  # (A,)
    order = torch.argsort(experts, stable=True)
    counts = torch.bincount(experts, minlength=num_experts)  # (E,)
    return token_idx[order], weight[order], counts


def dispatch_combine(x, routing, num_experts: int, expert_fn):
    """y[t] = sum_k weights[t,k] * expert_{idx[t,k]}(x[t]) over kept assignments.

    Args:
        x: (T, D) tokens. routing: ``Routing`` with (T, K) fields.
        num_experts: E, global expert count.
        expert_fn: ``(x_sorted, counts_list) -> y_sorted``: the local experts'
            ``forward_sorted``, or the expert-parallel all-to-all path.
    Returns:
        (T, D)
    """
    token_idx, weight, counts = sort_by_expert(
        routing.expert_idx, routing.weights, routing.keep, num_experts
    )
    x_sorted = x.index_select(0, token_idx)  # (A, D)
    y_sorted = expert_fn(x_sorted, counts.tolist())  # (A, D)
    y_sorted = y_sorted * weight.unsqueeze(-1).to(y_sorted.dtype)
    return torch.zeros_like(x).index_add_(0, token_idx, y_sorted)
