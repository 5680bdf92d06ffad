"""Stacked expert FFNs and sort-based dispatch.

Legend: T tokens, K experts per token, A kept assignments (<= T*K), E experts
(in ``StackedExperts``: those held, all or an expert-parallel rank's share),
D model dim, F expert FFN dim.

Expert weights live in four stacked tensors in ``nn.Linear`` layout
(``fc1_weight[e]`` is expert e's ``fc1.weight``), so one expert is exactly a
dense fairseq FFN and extraction can slice experts out. Dispatch sorts the
assignments by expert and runs the experts on contiguous slices: no (T, E,
capacity) one-hot tensor and no padding to the busiest expert, which matters
for task routing where a batch of one task uses only K experts.

Dtype contract of the MoE layer (``MoELayer`` and ``parallel.all_to_all`` follow it):

- Routing maths is fp32: the gate softmax, top-k, combine weights and the aux
  loss (``routing.top_k_experts`` starts from ``logits.float()``). The gate
  logits themselves are fp32 with ``--moe-gate-fp32`` and in the autocast dtype
  without it.
- Experts compute in the *compute dtype*, ``expert_compute_dtype(x)``: the
  autocast dtype of x's device type when autocast is on there
  (``torch.get_autocast_dtype``), else x's own dtype. ``forward_sorted`` casts
  its rows to it and returns it on either path (loop or grouped GEMM), every
  chunk included, empty ones too.
- Outputs are combined and accumulated in the residual stream's dtype (x's in
  ``dispatch_combine``): the expert output is multiplied by its fp32 combine
  weight in fp32 (in x's dtype where that is wider, e.g. fp64), so the router's
  gradient through the weights is computed in fp32; the product is cast to x's
  dtype and summed there (``index_add_``). The layer returns x's dtype.
- An all-to-all exchanges the compute dtype, on every rank and in both
  directions, empty chunks included. The compute dtype is a function of the
  autocast state and the residual dtype, which every rank shares, so it is
  agreed without communication.

No empty tensor or ``torch.cat`` decides a dtype: rows are cast before they
are split, and every chunk is computed in (or cast to) the compute dtype.

Two paths run the experts (``--moe-expert-impl``, ``choose_expert_impl``):
``loop``, one ``F.linear`` pair per active expert, and ``grouped``,
``torch._grouped_mm`` over all rows with per-expert row offsets (two calls per
layer whatever E is). ``auto`` takes grouped where ``_grouped_mm`` takes the
device, dtype and dims and bench/moe_layer.py measured it faster
(``AUTO_GROUPED``), else the loop. Both give the same values, gradients and
dtype; activation dropout is one ``F.dropout`` per active expert's rows in the
loop and one over all rows (same order) in grouped: the same mask on CPU (one
bernoulli stream drawn row by row), the same distribution elsewhere.
"""

import functools
import logging
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)

EXPERT_IMPLS = ("auto", "grouped", "loop")  # --moe-expert-impl
GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what _grouped_mm takes
# ``auto`` where _grouped_mm runs, per device type, from bench/moe_layer.py. CPU: the loop
# (torch's CPU _grouped_mm is itself a loop of mm over groups, and our bias needs a pass of its
# own that F.linear fuses; bench/results/moe_layer_grouped*.json, 1 thread, E = 32 and 128: the
# loop as fast or faster at 16k tokens, grouped faster at 4k; docs/PARALLEL.md). CUDA: grouped,
# one op for all experts instead of two launches per expert (torch documents its grouped kernel
# for bf16 on SM >= 80 and loops over the groups in C++ otherwise; not measured here: no GPU).
AUTO_GROUPED = {"cpu": False, "cuda": True}


def expert_compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype experts compute in for rows ``x``: the autocast dtype of x's device type when
    autocast is on there, else x's dtype (module docstring). Every rank derives the same one."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


@functools.lru_cache(maxsize=None)
def _probe_grouped_mm(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Run ``_grouped_mm`` forward and backward once on tiny aligned tensors (None: it works)."""
    n = 16 // dtype.itemsize  # elements in 16 bytes: the smallest aligned dim
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            x = torch.ones(3, n, device=device, dtype=dtype, requires_grad=True)
            w = torch.ones(2, n, n, device=device, dtype=dtype, requires_grad=True)
            offs = torch.tensor([1, 3], device=device, dtype=torch.int32)
            y = torch._grouped_mm(x, w.transpose(1, 2), offs=offs)  # (3, n)
            y.backward(torch.ones_like(y))
    except RuntimeError as err:  # _grouped_mm's checks (TORCH_CHECK) raise RuntimeError
        return f"torch._grouped_mm fails on {device} {dtype}: {str(err).splitlines()[0]}"
    return None


def grouped_unsupported(device: torch.device, dtype: torch.dtype, embed_dim: int,
                        ffn_dim: int) -> Optional[str]:
    """Why ``torch._grouped_mm`` cannot run these experts (None: it can)."""
    if not hasattr(torch, "_grouped_mm"):
        return f"torch {torch.__version__} has no torch._grouped_mm"
    if dtype not in GROUPED_DTYPES:
        return f"torch._grouped_mm takes float32, bfloat16 or float16, not {dtype}"
    align = 16 // dtype.itemsize  # it needs 16-byte row strides
    bad = [f"{name} {dim}" for name, dim in (("D", embed_dim), ("F", ffn_dim)) if dim % align]
    if bad:
        return (f"torch._grouped_mm needs 16-byte row strides: {' and '.join(bad)} not a multiple "
                f"of {align} in {dtype}")
    return _probe_grouped_mm(device, dtype)


_LOGGED = set()


def choose_expert_impl(impl: str, device: torch.device, dtype: torch.dtype, embed_dim: int,
                       ffn_dim: int) -> Tuple[str, str]:
    """("grouped" or "loop", why) for experts of dims D, F on ``device`` computing in ``dtype``.

    Cheap (the one costly step, the probe of ``_grouped_mm``, is cached per device and
    dtype); each distinct choice is logged once per process. Every rank of an
    expert-parallel group (same flags, dims, dtype and kind of device) takes the same path.
    """
    if impl not in EXPERT_IMPLS:
        raise ValueError(f"--moe-expert-impl must be one of {', '.join(EXPERT_IMPLS)}; got {impl!r}")
    why_not = None if impl == "loop" else grouped_unsupported(device, dtype, embed_dim, ffn_dim)
    if impl == "grouped" and why_not:
        raise ValueError(f"--moe-expert-impl grouped: {why_not}; use auto or loop")
    if impl == "auto" and not why_not and not AUTO_GROUPED.get(device.type, False):
        why_not = f"auto on {device.type}: the loop measured faster (bench/moe_layer.py)"
    if impl == "loop":
        path, why = "loop", "--moe-expert-impl loop"
    elif why_not:
        path, why = "loop", why_not
    else:
        path, why = "grouped", f"--moe-expert-impl {impl}"
    if (path, device.type, dtype, why) not in _LOGGED:
        _LOGGED.add((path, device.type, dtype, why))
        where = f"{device.type} {str(dtype).replace('torch.', '')}"
        logger.info(f"MoE experts: grouped GEMM (torch._grouped_mm) on {where} ({why})"
                    if path == "grouped" else f"MoE experts: per-expert loop on {where}: {why}")
    return path, why


def _dense(g: torch.Tensor) -> torch.Tensor:
    # contiguous() would leave an empty broadcast gradient's (0, 0) strides as they are
    return g if 0 not in g.stride() else torch.empty_like(g, memory_format=torch.contiguous_format).copy_(g)


def _dense_grad(y: torch.Tensor) -> torch.Tensor:
    """``_grouped_mm``'s backward refuses a broadcast (stride 0) output gradient, as
    ``y.sum().backward()`` gives: make the gradient reaching it dense (a no-op when it is)."""
    if y.requires_grad:
        y.register_hook(_dense)
    return y


class StackedExperts(nn.Module):
    """E independent FFNs ``fc2(dropout(act(fc1(x))))`` with stacked weights.

    ``rows=(lo, hi)`` keeps only global experts ``lo .. hi-1`` of ``num_experts``
    (an expert-parallel rank's share, see ``fairseq_taskmoe.parallel``); the
    default keeps them all. ``self.num_experts`` is the number held.
    ``tag_expert`` sets fairseq's ``param.expert`` tag: its data-parallel
    wrappers (legacy_ddp) skip the gradient all-reduce of such params, and its
    ``clip_grad_norm_`` leaves them out of the norm. ``impl`` (one of
    ``EXPERT_IMPLS``, settable) picks the loop or the grouped GEMM path
    (``choose_expert_impl``); both follow the module's dtype contract.
    """

    def __init__(self, num_experts, embed_dim, ffn_dim, activation_fn, activation_dropout=0.0,
                 rows=None, tag_expert=True, impl="auto"):
        super().__init__()
        lo, hi = rows if rows is not None else (0, num_experts)
        assert 0 <= lo < hi <= num_experts, (rows, num_experts)
        if impl not in EXPERT_IMPLS:
            raise ValueError(f"--moe-expert-impl must be one of {', '.join(EXPERT_IMPLS)}; got {impl!r}")
        self.total_experts, self.rows = num_experts, (lo, hi)
        self.num_experts = hi - lo
        self.impl = impl
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

    def path(self, device: torch.device, dtype: torch.dtype) -> str:
        """"grouped" or "loop": the path ``forward_sorted`` takes for rows on ``device`` in ``dtype``."""
        return choose_expert_impl(self.impl, device, dtype, self.fc1_weight.size(2),
                                  self.fc1_weight.size(1))[0]

    def forward_sorted(self, x_sorted: torch.Tensor, counts) -> torch.Tensor:
        """Run experts on rows grouped by expert.

        Args:
            x_sorted: (A, D) rows, expert 0's first, then expert 1's, ...
            counts: list of E ints, rows per local expert.
        Returns:
            (A, D) in the compute dtype ``expert_compute_dtype(x_sorted)``, always.
        """
        dtype = expert_compute_dtype(x_sorted)
        x = x_sorted.to(dtype)  # before the split: no chunk keeps the input dtype
        if self.path(x.device, dtype) == "grouped":
            return self._forward_grouped(x, counts)
        return self._forward_loop(x, counts)

    def _forward_loop(self, x: torch.Tensor, counts) -> torch.Tensor:
        # unbind once: indexing w[e] per expert would make autograd build a
        # full (E, ...) gradient per expert, O(E^2) memory traffic in backward.
        params = zip(self.fc1_weight.unbind(0), self.fc1_bias.unbind(0),
                     self.fc2_weight.unbind(0), self.fc2_bias.unbind(0))
        outs = []
        for chunk, ws in zip(torch.split(x, counts), params):
            # Cast active experts only (a no-op in the params' dtype or where autocast did it).
            outs.append(self._ffn(chunk, *(w.to(x.dtype) for w in ws)) if chunk.numel() else chunk)
        # The cast pins the compute dtype should an activation run in fp32 under an autocast policy.
        return torch.cat(outs, 0).to(x.dtype)  # (A, D)

    def _forward_grouped(self, x: torch.Tensor, counts) -> torch.Tensor:
        dtype, num_rows = x.dtype, x.size(0)
        sizes = torch.tensor(counts, device=x.device)  # (E,)
        offs = torch.cumsum(sizes, 0, dtype=torch.int32)  # (E,) each expert's row end
        row_expert = torch.repeat_interleave(
            torch.arange(self.num_experts, device=x.device), sizes, output_size=num_rows)  # (A,)
        # _grouped_mm takes weights as (E, K, N): nn.Linear's (E, N, K) transposed, a view (its
        # strides are checked, not its contiguity). Autocast does not cover _grouped_mm: cast here.
        w1 = self.fc1_weight.to(dtype).transpose(1, 2)  # (E, D, F)
        w2 = self.fc2_weight.to(dtype).transpose(1, 2)  # (E, F, D)
        h = torch._grouped_mm(x, w1, offs=offs)  # (A, F)
        # _grouped_mm has no bias: add each row's expert bias in place (its backward does not
        # need its output), saving the (A, F) buffer an out-of-place add would allocate.
        h = h.add_(self.fc1_bias.to(dtype).index_select(0, row_expert))
        h = self.activation_fn(h)
        h = F.dropout(h, p=self.activation_dropout, training=self.training)
        y = torch._grouped_mm(h, w2, offs=offs)  # (A, D)
        return _dense_grad(y.add_(self.fc2_bias.to(dtype).index_select(0, row_expert)))


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
        x: (T, D) tokens, in the residual stream's dtype. routing: ``Routing``
            with (T, K) fields (weights fp32).
        num_experts: E, global expert count.
        expert_fn: ``(x_sorted, counts_list) -> y_sorted``: the local experts'
            ``forward_sorted``, or the expert-parallel all-to-all path; returns
            the compute dtype.
    Returns:
        (T, D) in x's dtype.
    """
    token_idx, weight, counts = sort_by_expert(
        routing.expert_idx, routing.weights, routing.keep, num_experts
    )
    x_sorted = x.index_select(0, token_idx)  # (A, D)
    y_sorted = expert_fn(x_sorted, counts.tolist())  # (A, D) compute dtype
    # Weight in fp32 (or x's dtype if wider): the router's gradient through the weight is then
    # an fp32 dot product over D; the weighted rows are accumulated in x's dtype.
    acc = torch.promote_types(x.dtype, torch.float32)
    y_sorted = (y_sorted.to(acc) * weight.unsqueeze(-1).to(acc)).to(x.dtype)  # (A, D)
    return torch.zeros_like(x).index_add_(0, token_idx, y_sorted)
