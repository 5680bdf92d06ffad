"""Pure tensor functions behind extraction: pick, fuse, slice and pad FFNs.

Legend: E experts, F expert FFN dim, D model dim, K experts per token,
N tasks, W padded FFN width.

Expert tensors use the ``StackedExperts`` layout (``nn.Linear`` per expert):
fc1_weight (E, F, D), fc1_bias (E, F), fc2_weight (E, D, F), fc2_bias (E, D).
A dense fairseq FFN is fc1.weight (F, D), fc1.bias (F,), fc2.weight (D, F),
fc2.bias (D,).
"""

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from fairseq_taskmoe.moe.routing import top_k_experts

EXPERT_KEYS = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")


def task_choice(task_gate: Tensor, task: int, k: int) -> Tuple[List[int], List[float]]:
    """The experts and combine weights the task router gives task ``task``.

    Uses the model's own (eval-mode) top-k so the weights match inference:
    renormalised over the chosen experts for k=2, the gate probability for k=1.

    Args:
        task_gate: (N, E) logits, ``router.task_gate.weight``.
    Returns:
        K expert indices (best first) and their K weights.
    """
    _, idx, weights = top_k_experts(task_gate[task:task + 1].float(), k, training=False)
    return idx[0].tolist(), weights[0].tolist()


def fuse_experts(experts: Dict[str, Tensor], idx: Sequence[int], weights: Sequence[float]):
    """One dense FFN of width K*F equal to ``sum_k w_k * expert_{idx_k}(x)``.

    Exact because the activation is elementwise: concatenating the experts'
    hidden units and scaling each expert's fc2 by its weight is the same sum.

    Returns:
        fairseq dense FFN dict: fc1.weight (K*F, D), fc1.bias (K*F,),
        fc2.weight (D, K*F), fc2.bias (D,).
    """
    sel = torch.tensor(list(idx), dtype=torch.long)
    w = torch.tensor(list(weights), dtype=torch.float64)  # (K,)
    fc1_w = experts["fc1_weight"][sel]  # (K, F, D)
    fc1_b = experts["fc1_bias"][sel]  # (K, F)
    fc2_w = experts["fc2_weight"][sel]  # (K, D, F)
    fc2_b = experts["fc2_bias"][sel]  # (K, D)
    dtype = fc2_w.dtype
    # Scale in float64 then cast back: the fused weights stay as close as
    # possible to what the MoE layer computes in its own dtype.
    fc2_scaled = (fc2_w.double() * w.view(-1, 1, 1)).to(dtype)  # (K, D, F)
    return {
        "fc1.weight": fc1_w.reshape(-1, fc1_w.size(-1)).clone(),  # (K*F, D)
        "fc1.bias": fc1_b.reshape(-1).clone(),  # (K*F,)
        "fc2.weight": fc2_scaled.permute(1, 0, 2).reshape(fc2_w.size(1), -1).contiguous(),  # (D, K*F)
        "fc2.bias": (fc2_b.double() * w.view(-1, 1)).sum(0).to(dtype),  # (D,)
    }


def slice_experts(experts: Dict[str, Tensor], keep: Sequence[int]) -> Dict[str, Tensor]:
    """The stacked expert tensors of the experts ``keep`` (in that order)."""
    sel = torch.tensor(list(keep), dtype=torch.long)
    return {name: experts[name][sel].clone() for name in EXPERT_KEYS}


def restrict_task_gate(task_gate: Tensor, tasks: Sequence[int], keep: Sequence[int]) -> Tensor:
    """(N, E) task logits -> (len(tasks), len(keep)): kept tasks' rows, kept experts' columns.

    For k=2, top-k over a column subset that contains a task's top-2 picks the
    same two experts, and their renormalised weights are softmax ratios
    ``exp(l_i) / (exp(l_i) + exp(l_j))``, unchanged by dropping columns.
    """
    rows = torch.tensor(list(tasks), dtype=torch.long)
    cols = torch.tensor(list(keep), dtype=torch.long)
    return task_gate[rows][:, cols].clone()


def restrict_token_gate(wg: Tensor, keep: Sequence[int]) -> Tensor:
    """(E, D) token gate -> (len(keep), D): the kept experts' rows."""
    return wg[torch.tensor(list(keep), dtype=torch.long)].clone()


def pad_dense_ffn(ffn: Dict[str, Tensor], width: int) -> Dict[str, Tensor]:
    """Zero-pad a dense FFN of width F to ``width`` W >= F hidden units.

    The extra units have zero fc1 rows and bias, so they are act(0) = 0 for
    relu/gelu/tanh, and zero fc2 columns, so they add nothing either way: exact.
    """
    fc1_w, fc1_b, fc2_w = ffn["fc1.weight"], ffn["fc1.bias"], ffn["fc2.weight"]  # (F, D) (F,) (D, F)
    extra = width - fc1_w.size(0)
    if extra < 0:
        raise ValueError(f"cannot pad an FFN of width {fc1_w.size(0)} down to {width}")
    return {
        "fc1.weight": torch.cat([fc1_w, fc1_w.new_zeros(extra, fc1_w.size(1))], 0),  # (W, D)
        "fc1.bias": torch.cat([fc1_b, fc1_b.new_zeros(extra)], 0),  # (W,)
        "fc2.weight": torch.cat([fc2_w, fc2_w.new_zeros(fc2_w.size(0), extra)], 1),  # (D, W)
        "fc2.bias": ffn["fc2.bias"].clone(),  # (D,)
    }


def expert_union(choices: Sequence[Sequence[int]]) -> List[int]:
    """Sorted union of the experts in ``choices`` (one list per task)."""
    return sorted({e for chosen in choices for e in chosen})


def top_used(counts: Tensor, n: int) -> List[int]:
    """Indices of the n largest ``counts`` (E,), ties to the lower index, sorted."""
    order = sorted(range(counts.numel()), key=lambda e: (-float(counts[e]), e))
    return sorted(order[:n])
