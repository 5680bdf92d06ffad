"""Routers: turn tokens (or sentences, or tasks) into gate logits.

Legend: B batch, L length, D model dim, E experts, S routing units, T routed
(non-pad) tokens, N tasks.

Every router returns logits per *routing unit* plus the unit of each routed
token, so the top-k choice is made once per unit and shared by its tokens:
- token: a unit per token, gate ``Linear(D, E)`` on the token.
- sentence: the token gate logits averaged over the sentence (encoder), or over
  the prefix so far (decoder: the future is unknown at inference, so training
  uses the same causal mean and cannot leak future target tokens).
- sentence-pooled: an MLP gate reads the mean-pooled sentence representation
  (causal prefix mean in the decoder).
- task: learned logits per task id (``Embedding(N, E)``); a unit per task, so
  every token of a task gets the same experts and weights.
"""

import contextlib
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor

from fairseq_taskmoe.moe.routing import ROUTINGS, prefix_mean, segment_mean


@with_incremental_state
class Router(nn.Module):
    # --moe-new-tasks (set by the task when fine-tuning adds tasks): a checkpoint's
    # task gate with fewer rows loads into the first rows, the rest keep their init.
    allow_new_task_rows = False

    def __init__(self, routing, embed_dim, num_experts, num_tasks=0, causal=False, gate_fp32=False):
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"unknown routing {routing!r}; valid: {', '.join(ROUTINGS)}")
        self.routing = routing
        self.causal = causal
        self.gate_fp32 = gate_fp32
        self.num_experts = num_experts
        if routing == "task":
            if num_tasks < 1:
                raise ValueError(
                    "task routing needs the task list (--moe-task-names, filled by the "
                    "translation_multi_simple_epoch_taskmoe task from --lang-pairs)"
                )
            self.task_gate = nn.Embedding(num_tasks, num_experts)
            # Spread distinct tasks over experts from the start.
            nn.init.normal_(self.task_gate.weight, std=1.0)
        elif routing == "sentence-pooled":
            self.pool_proj = nn.Linear(embed_dim, embed_dim)
            self.wg = nn.Linear(embed_dim, num_experts, bias=False)
        else:
            self.wg = nn.Linear(embed_dim, num_experts, bias=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "task_gate.weight"
        if self.allow_new_task_rows and self.routing == "task" and key in state_dict:
            old, new = state_dict[key], self.task_gate.weight  # (N_old, E), (N, E)
            if old.dim() == 2 and old.size(1) == new.size(1) and old.size(0) < new.size(0):
                fresh = new.detach()[old.size(0):].to(device=old.device, dtype=old.dtype)
                state_dict[key] = torch.cat([old, fresh], 0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _gate(self, x):
        if self.gate_fp32:
            return F.linear(x.float(), self.wg.weight.float())
        return self.wg(x)

    def _pooled_gate(self, pooled):
        if self.gate_fp32:
            h = torch.tanh(F.linear(pooled.float(), self.pool_proj.weight.float(), self.pool_proj.bias.float()))
            return F.linear(h, self.wg.weight.float())
        return self.wg(torch.tanh(self.pool_proj(pooled)))

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        task_ids: Optional[Tensor],
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
    ):
        """
        Args:
            x: (B, L, D). mask: (B, L) True for real tokens. task_ids: (B,).
        Returns:
            unit_logits (S, E), token_unit (T,) long: the unit of each routed token
            in the order of ``x[mask]``.
        """
        # --moe-gate-fp32: autocast (--amp) would cast F.linear(x.float(), w.float())
        # back down to fp16/bf16, so the gate runs with autocast off.
        fp32 = (torch.autocast(device_type=x.device.type, enabled=False)
                if self.gate_fp32 else contextlib.nullcontext())
        with fp32:
            return self._route_units(x, mask, task_ids, incremental_state)

    def _route_units(self, x, mask, task_ids, incremental_state):
        if self.routing == "task":
            if task_ids is None:
                raise ValueError("task routing needs task_ids in net_input (use the "
                                 "translation_multi_simple_epoch_taskmoe task)")
            batch_of_token = mask.nonzero(as_tuple=True)[0]  # (T,)
            logits = self.task_gate.weight.float() if self.gate_fp32 else self.task_gate.weight
            return logits, task_ids[batch_of_token]
        if self.routing == "token":
            return self._gate(x[mask]), torch.arange(int(mask.sum()), device=x.device)

        # Sentence routing: logits (sentence) or inputs (sentence-pooled) averaged.
        feats = self._gate(x) if self.routing == "sentence" else x.float() if self.gate_fp32 else x
        if not self.causal:
            pooled = segment_mean(feats, mask)  # (B, E or D)
            logits = pooled if self.routing == "sentence" else self._pooled_gate(pooled)
            return logits, mask.nonzero(as_tuple=True)[0]
        state = self.get_incremental_state(incremental_state, "prefix")
        prev_sum = state["sum"] if state is not None else None
        prev_count = state["count"] if state is not None else None
        means, new_sum, new_count = prefix_mean(feats, mask, prev_sum, prev_count)  # (B, L, *)
        if incremental_state is not None:
            self.set_incremental_state(incremental_state, "prefix", {"sum": new_sum, "count": new_count})
        means = means[mask]  # (T, *)
        logits = means if self.routing == "sentence" else self._pooled_gate(means)
        return logits, torch.arange(logits.size(0), device=x.device)

    def reorder_incremental_state(self, incremental_state, new_order):
        state = self.get_incremental_state(incremental_state, "prefix")
        if state is not None:
            state = {k: v.index_select(0, new_order) for k, v in state.items()}
            self.set_incremental_state(incremental_state, "prefix", state)
