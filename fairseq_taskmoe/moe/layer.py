"""The MoE FFN block: router + top-k + capacity + experts, with its aux loss.

Legend: L length, B batch, D model dim, F expert FFN width, T routed (non-pad) tokens,
E experts, K experts per token.

Dtype contract (stated in full in ``moe.experts``): routing maths (softmax, top-k,
combine weights, aux loss) in fp32; expert matmuls in the compute dtype (autocast's
when it is on, else the input's); the output in the residual stream's dtype (x's),
also under autocast; an expert-parallel all-to-all moves the compute dtype on every rank.
"""

from dataclasses import dataclass
from functools import partial
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn as nn
from torch import Tensor

from fairseq_taskmoe.moe.experts import EXPERT_IMPLS, StackedExperts, dispatch_combine
from fairseq_taskmoe.moe.router import Router
from fairseq_taskmoe.moe.routing import (
    ROUTINGS, SECOND_POLICIES, apply_capacity, capacity, check_top_k, load_balancing_loss,
    top_k_experts,
)


@dataclass(frozen=True)
class MoELayerConfig:
    """What one MoE layer is built from (``models.layers.moe_layer_config`` fills it from the flags).

    Defaults match the ``--moe-*`` flag defaults.
    """

    embed_dim: int  # D
    ffn_dim: int  # F, each expert's hidden width
    num_experts: int  # E, experts of the whole layer
    routing: str  # one of moe.routing.ROUTINGS
    top_k: int  # K, 1 or 2
    activation_fn: Callable[[Tensor], Tensor]
    activation_dropout: float = 0.0
    num_tasks: int = 0  # task-gate rows (task routing)
    causal: bool = False  # decoder: prefix-mean sentence routing, always dropless
    capacity_factor: float = 1.25  # training, token routing, non-causal
    eval_capacity_factor: float = 0.0  # <= 0: dropless in evaluation
    dropless: bool = False
    second_policy: str = "all"  # one of moe.routing.SECOND_POLICIES
    gate_fp32: bool = False  # --moe-gate-fp32
    expert_impl: str = "auto"  # --moe-expert-impl, one of moe.experts.EXPERT_IMPLS

    def __post_init__(self):
        if self.routing not in ROUTINGS:
            raise ValueError(f"unknown routing {self.routing!r}; valid: {', '.join(ROUTINGS)}")
        if self.second_policy not in SECOND_POLICIES:
            raise ValueError(f"--moe-second-expert-policy must be one of "
                             f"{', '.join(SECOND_POLICIES)}; got {self.second_policy!r}")
        check_top_k(self.top_k, self.num_experts)
        if self.expert_impl not in EXPERT_IMPLS:
            raise ValueError(f"--moe-expert-impl must be one of {', '.join(EXPERT_IMPLS)}; "
                             f"got {self.expert_impl!r}")


class MoEStats(NamedTuple):
    """What one MoE layer reports to the criterion (all tensors)."""

    aux_loss: Tensor  # () GShard load-balancing loss, 1.0 when balanced
    expert_counts: Tensor  # (E,) kept token assignments per expert
    dropped: Tensor  # () assignments dropped by capacity
    assigned: Tensor  # () assignments before capacity
    # Expert parallel only (None otherwise): rows this rank handed to the
    # all-to-all, and the kept assignments it routed; sent / routed is the
    # logged moe_{enc,dec}_a2a_ratio (1.0: no padding).
    a2a_sent: Optional[Tensor] = None
    a2a_routed: Optional[Tensor] = None


class MoELayer(nn.Module):
    """Replaces a transformer FFN: ``y = sum_k w_k * expert_k(x)``.

    Built from a ``MoELayerConfig``; ``MoELayer(embed_dim, ffn_dim, ...)`` with
    the config's fields (positional or keyword) is shorthand for
    ``MoELayer(MoELayerConfig(embed_dim, ffn_dim, ...))``. All E experts are
    local unless an ``expert_parallel`` plan (``fairseq_taskmoe.parallel``) is
    given: it builds this rank's experts and the ``expert_fn`` that runs them
    across ranks.

    Dtypes: ``forward`` returns x's dtype (the residual stream's) whatever the
    autocast state; the experts compute in the autocast dtype when autocast is
    on (else in x's dtype) and the routing decision is made in fp32 (see
    ``moe.experts`` for the whole contract).
    """

    def __init__(self, *args, expert_parallel=None, **kwargs):
        super().__init__()
        if len(args) == 1 and not kwargs and isinstance(args[0], MoELayerConfig):
            cfg = args[0]
        else:
            cfg = MoELayerConfig(*args, **kwargs)
        self.cfg = cfg
        self.num_experts = cfg.num_experts
        self.top_k = cfg.top_k
        self.routing = cfg.routing
        self.second_policy = cfg.second_policy
        # Sentence and task routing send a whole sentence/task to K experts: a
        # batch dominated by one task would overflow any fixed capacity.
        # Causal (decoder) layers are dropless too: a capacity queue over the batch
        # (GShard's puts every first choice before every second choice) makes the
        # drop of position t depend on later positions, which leaks the future in
        # training. A position-major queue would be causal but would drop late
        # positions systematically, and its capacity still counts future tokens;
        # dropless is exactly causal, routes training like inference (eval is
        # dropless by default), and sort-based dispatch costs only the real
        # assignments, so no capacity buffer is padded.
        self.dropless = cfg.dropless or cfg.routing != "token" or cfg.causal
        self.capacity_factor = cfg.capacity_factor
        self.eval_capacity_factor = cfg.eval_capacity_factor
        self.router = Router(cfg.routing, cfg.embed_dim, cfg.num_experts, cfg.num_tasks, cfg.causal,
                             cfg.gate_fp32)
        if expert_parallel is None:
            self.experts = StackedExperts(cfg.num_experts, cfg.embed_dim, cfg.ffn_dim,
                                          cfg.activation_fn, cfg.activation_dropout,
                                          impl=cfg.expert_impl)
            self.expert_fn = None  # the local experts' forward_sorted
        else:
            self.experts, self.expert_fn = expert_parallel.build_experts(
                cfg.num_experts, cfg.embed_dim, cfg.ffn_dim, cfg.activation_fn, cfg.activation_dropout)
            self.experts.impl = cfg.expert_impl  # the plan builds experts from their shape only

    def route(self, x_bld: Tensor, mask: Tensor, task_ids: Optional[Tensor], incremental_state=None):
        """Routing decision and stats for the routed tokens ``x_bld[mask]``."""
        unit_logits, token_unit = self.router(x_bld, mask, task_ids, incremental_state)
        unit_probs, unit_idx, unit_w = top_k_experts(
            unit_logits, self.top_k, self.second_policy, self.training
        )
        probs = unit_probs[token_unit]  # (T, E)
        expert_idx, weights = unit_idx[token_unit], unit_w[token_unit]  # (T, K)
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        if self.training and not self.dropless and factor <= 0:
            raise ValueError(f"--moe-capacity-factor must be > 0 in training, got {factor}; "
                             "use --moe-dropless for token routing without a capacity limit")
        cap = None if self.dropless or factor <= 0 else capacity(
            probs.size(0), self.num_experts, self.top_k, factor)
        routing = apply_capacity(expert_idx, weights, self.num_experts, cap)
        assigned = (weights > 0).sum()
        kept = routing.keep.sum()
        counts = torch.bincount(expert_idx[routing.keep], minlength=self.num_experts)
        stats = MoEStats(
            aux_loss=load_balancing_loss(probs, expert_idx[:, 0]),
            expert_counts=counts.float(),
            dropped=(assigned - kept).float(),
            assigned=assigned.float(),
        )
        return routing, stats

    def _run_expert_fn(self, x_sorted, counts, a2a):
        """``expert_fn`` may return ``(y, rows_sent)`` (expert parallel); keep the count."""
        out = self.expert_fn(x_sorted, counts)
        if isinstance(out, tuple):
            out, a2a["sent"] = out
            a2a["routed"] = x_sorted.size(0)
        return out

    def forward(self, x: Tensor, padding_mask: Optional[Tensor], task_ids: Optional[Tensor] = None,
                incremental_state=None):
        """
        Args:
            x: (L, B, D) time-major, as in fairseq layers.
            padding_mask: (B, L) True at padding, or None.
            task_ids: (B,) long.
        Returns:
            y (L, B, D) with zeros at padding, and ``MoEStats``.
        """
        x_bld = x.transpose(0, 1)  # (B, L, D)
        if padding_mask is None:
            mask = torch.ones(x_bld.shape[:2], dtype=torch.bool, device=x.device)
        else:
            mask = ~padding_mask
        routing, stats = self.route(x_bld, mask, task_ids, incremental_state)
        tokens = x_bld[mask]  # (T, D)
        a2a = {}
        run = self.experts.forward_sorted if self.expert_fn is None else partial(
            self._run_expert_fn, a2a=a2a)
        y_tokens = dispatch_combine(tokens, routing, self.num_experts, run)  # (T, D)
        if a2a:
            stats = stats._replace(a2a_sent=torch.tensor(float(a2a["sent"])),
                                   a2a_routed=torch.tensor(float(a2a["routed"])))
        y = x_bld.new_zeros(x_bld.shape)  # the residual stream's dtype
        y[mask] = y_tokens  # (T, D), already x's dtype (dispatch_combine)
        return y.transpose(0, 1), stats
