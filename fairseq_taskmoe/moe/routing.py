"""Routing maths as pure functions over tensors.

Legend: T routed tokens (padding removed), S routing units (tokens, sentences
or tasks), E experts, K experts per token (top-k).

The gate's probabilities are computed per routing unit (a token for token
routing, a sentence for sentence routing, a task for task routing) and then
expanded to tokens, so every token of a unit gets the same experts and weights.
"""

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

# The one definition of each choice (config.py builds the --moe-* ChoiceEnums from them).
ROUTINGS = ("token", "sentence", "sentence-pooled", "task")  # --moe-*-routing adds "none" (dense)
SECOND_POLICIES = ("all", "sampling", "random")  # --moe-second-expert-policy


def check_top_k(top_k: int, num_experts: int):
    """The one check of ``--moe-top-k`` against ``--moe-expert-count`` (flag, model, layer)."""
    if num_experts < 1:
        raise ValueError(f"--moe-expert-count must be >= 1, got {num_experts}")
    if top_k not in (1, 2):
        raise ValueError(f"--moe-top-k must be 1 or 2, got {top_k}")
    if top_k > num_experts:
        raise ValueError(f"--moe-top-k ({top_k}) must be <= --moe-expert-count ({num_experts})")


class Routing(NamedTuple):
    """Top-k routing decision for T tokens."""

    expert_idx: torch.Tensor  # (T, K) long
    weights: torch.Tensor  # (T, K) combine weights; 0 where dropped
    keep: torch.Tensor  # (T, K) bool; False for dropped assignments


def top_k_experts(
    logits: torch.Tensor,
    k: int,
    second_policy: str = "all",
    training: bool = False,
    generator: Optional[torch.Generator] = None,
):
    """Choose the top-k experts of each routing unit.

    Args:
        logits: (S, E) gate logits.
        k: 1 or 2.
        second_policy: for k=2 in training, ``all`` always keeps the second
            expert, ``sampling`` samples it from the remaining experts by their
            gate probability (Gumbel-max), ``random`` keeps it with probability
            ``min(1, 2 * g2)`` where g2 is its renormalised weight (GShard's
            random routing). Evaluation is always deterministic (``all``).

    Returns:
        probs (S, E) fp32 softmax, expert_idx (S, K), weights (S, K): for k=2
        renormalised over the kept experts (a second expert dropped by the
        random policy gets weight 0 and the first weight 1, the same convention
        as a drop by capacity in :func:`apply_capacity`); for k=1 the gate
        probability.
    """
    probs = F.softmax(logits.float(), dim=-1)  # (S, E)
    check_top_k(k, probs.size(-1))
    first = probs.argmax(dim=-1, keepdim=True)  # (S, 1)
    if k == 1:
        # Switch-style: weight by the gate probability so the gate learns from
        # the task loss (renormalising one expert would always give 1).
        return probs, first, probs.gather(-1, first)

    masked = logits.float().scatter(-1, first, float("-inf"))  # (S, E)
    if training and second_policy == "sampling":
        u = torch.rand(masked.shape, device=masked.device, generator=generator)
        gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
        second = (masked + gumbel).argmax(dim=-1, keepdim=True)
    else:
        second = masked.argmax(dim=-1, keepdim=True)
    expert_idx = torch.cat([first, second], dim=-1)  # (S, 2)
    chosen = probs.gather(-1, expert_idx)  # (S, 2)
    weights = chosen / chosen.sum(dim=-1, keepdim=True).clamp_min(1e-9)
    if training and second_policy == "random":
        u = torch.rand(weights[:, 1].shape, device=weights.device, generator=generator)
        drop = u >= (2 * weights[:, 1]).clamp(max=1.0)
        weights = torch.where(
            drop.unsqueeze(-1), torch.stack([torch.ones_like(u), torch.zeros_like(u)], -1), weights
        )
    return probs, expert_idx, weights


def load_balancing_loss(probs: torch.Tensor, first_expert: torch.Tensor) -> torch.Tensor:
    """GShard auxiliary loss ``E^2 * mean_e(mean_prob_e * fraction_routed_e)``.

    Args:
        probs: (T, E) gate probabilities of the routed (non-pad) tokens.
        first_expert: (T,) each token's top-1 expert.

    Equals 1.0 when both the mean gate probability and the top-1 assignments are
    uniform over experts; larger when they concentrate. Zero tokens give 0.
    """
    num_tokens, num_experts = probs.shape
    if num_tokens == 0:
        return probs.new_zeros(())
    mean_prob = probs.mean(dim=0)  # (E,)
    fraction = torch.bincount(first_expert, minlength=num_experts).to(probs.dtype) / num_tokens
    return (mean_prob * fraction).mean() * num_experts * num_experts


def capacity(num_tokens: int, num_experts: int, k: int, factor: float) -> int:
    """Slots per expert: ``ceil(factor * k * tokens / E)``; factor <= 0 means no limit."""
    if factor <= 0:
        return num_tokens * k
    return max(1, int(-(-factor * k * num_tokens // num_experts)))


def positions_in_expert(expert_idx: torch.Tensor, num_experts: int,
                        valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Queue position of each assignment within its expert.

    Priority follows GShard: all first choices come before all second choices,
    in token order. Sort-based, O(TK log TK), no (T, E, C) one-hot.

    Args:
        expert_idx: (T, K) long.
        valid: (T, K) bool or None. Invalid assignments (a second choice the
            random policy dropped) take no slot, as in GShard, which masks them
            out before its cumsum; their own positions are meaningless.
    Returns:
        (T, K) long positions.
    """
    if valid is not None:
        # Invalid assignments queue for a sentinel expert E that no real one sees.
        expert_idx = torch.where(valid, expert_idx, torch.full_like(expert_idx, num_experts))
        num_experts += 1
    num_tokens, k = expert_idx.shape
    flat = expert_idx.t().reshape(-1)  # (K*T,) choice-major order
    order = torch.argsort(flat, stable=True)  # (K*T,)
    counts = torch.bincount(flat, minlength=num_experts)  # (E,)
    starts = torch.cumsum(counts, 0) - counts  # (E,)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(flat.numel(), device=flat.device)
    pos = ranks - starts[flat]  # (K*T,)
    return pos.view(k, num_tokens).t()


def apply_capacity(expert_idx, weights, num_experts: int, cap: Optional[int]) -> Routing:
    """Drop assignments beyond ``cap`` slots per expert (None: dropless).

    Assignments with weight 0 (dropped earlier by the random second-expert
    policy) are not routed and take no slot. Weight convention for K=2: a token
    that loses one of its two experts (to capacity or to the random policy)
    gives the kept expert weight 1, i.e. the weights are renormalised over the
    kept experts, as fairscale's ``top2gating`` and fairseq's MoE gate (default
    ``normalize_gate_prob_before_dropping=False``) do. K=1 weights stay the
    gate probability (renormalising one expert would always give 1).

    Args:
        expert_idx, weights: (T, K) from :func:`top_k_experts`.
    """
    valid = weights > 0  # (T, K)
    if cap is None:
        keep = valid
    else:
        keep = valid & (positions_in_expert(expert_idx, num_experts, valid) < cap)
    kept = weights * keep.to(weights.dtype)  # (T, K)
    if weights.size(1) > 1:
        # Rows that lost an assignment only, so dropless routing stays bit-identical.
        partial = (keep != valid).any(dim=-1, keepdim=True)  # (T, 1)
        total = kept.sum(dim=-1, keepdim=True).clamp_min(1e-9)  # (T, 1)
        kept = torch.where(partial, kept / total, kept)
    return Routing(expert_idx, kept, keep)


def segment_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of non-pad positions.

    Args:
        values: (B, L, D); mask: (B, L) True for real tokens.
    Returns:
        (B, D)
    """
    m = mask.unsqueeze(-1).to(values.dtype)  # (B, L, 1)
    return (values * m).sum(1) / m.sum(1).clamp_min(1.0)


def prefix_mean(values: torch.Tensor, mask: torch.Tensor, prev_sum=None, prev_count=None):
    """Causal running mean over time of non-pad positions (decoder sentence routing).

    Position t sees only positions <= t, so training and incremental decoding
    route identically and no future target token leaks into the gate.

    Args:
        values: (B, L, D); mask: (B, L); prev_sum (B, D) and prev_count (B, 1)
        carry the state of earlier decoding steps.
    Returns:
        means (B, L, D), new_sum (B, D), new_count (B, 1)
    """
    m = mask.unsqueeze(-1).to(values.dtype)  # (B, L, 1)
    csum = torch.cumsum(values * m, dim=1)  # (B, L, D)
    ccount = torch.cumsum(m, dim=1)  # (B, L, 1)
    if prev_sum is not None:
        csum = csum + prev_sum.unsqueeze(1)
        ccount = ccount + prev_count.unsqueeze(1)
    return csum / ccount.clamp_min(1.0), csum[:, -1], ccount[:, -1]
