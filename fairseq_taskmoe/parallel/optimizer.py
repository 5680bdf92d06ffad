"""``--optimizer adam_ep``: fairseq's Adam, aware of expert-sharded params.

Three things differ from ``--optimizer adam`` (the update itself is the same,
fairseq's reference ``Adam``; fused Adam is not used):

- ``consolidate_state_dict()``: fairseq calls it on every rank right before
  rank 0 writes a checkpoint. It gathers every expert param and its Adam
  moments to rank 0, so the checkpoint holds all E experts (checkpoint.py).
- ``load_state_dict()`` keeps this rank's rows of full expert moments.
- ``clip_grad_norm()``: the norm counts every expert once,
  ``sqrt(|g_dense|^2 + sum over ranks |g_local_experts|^2)``, the same value
  on every rank and for any world size. (fairseq's ``clip_grad_norm_`` leaves
  ``expert`` params out of the norm altogether and only scales them.)
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
from fairseq.optim import FairseqOptimizer, register_optimizer
from fairseq.optim.adam import Adam, FairseqAdam, FairseqAdamConfig

from fairseq_taskmoe.parallel.checkpoint import gather_dim0_to_rank0, gather_expert_params, slice_dim0


def _shard(p):
    return getattr(p, "expert_shard", None)


class ExpertParallelAdam(Adam):
    """fairseq ``Adam`` whose state dict holds all ranks' expert moments on rank 0."""

    _full_expert_state = None  # {(param index, state key): full tensor}, rank 0, after consolidate

    def _indexed_params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def consolidate_state_dict(self):
        """Collective, on every rank: gather expert params and moments to rank 0."""
        params = self._indexed_params()
        if not any(_shard(p) for p in params):
            return
        gather_expert_params(params)
        keys = [(i, k) for i, p in enumerate(params) if _shard(p)
                for k, v in sorted(self.state.get(p, {}).items())
                if torch.is_tensor(v) and v.shape == p.shape]
        # Every rank must enter the same gathers in the same order.
        all_keys = [None] * dist.get_world_size()
        dist.all_gather_object(all_keys, keys)
        if any(k != keys for k in all_keys):
            raise RuntimeError("expert parallel: optimizer states differ between ranks; "
                               "cannot gather them for the checkpoint")
        full = {(i, k): gather_dim0_to_rank0(self.state[params[i]][k]) for i, k in keys}
        self._full_expert_state = full if dist.get_rank() == 0 else None

    def state_dict(self):
        sd = super().state_dict()
        params = self._indexed_params()
        # Which entries are experts, for fairseq-taskmoe-merge-shards (shapes alone are
        # ambiguous: a router's (E, D) gate looks like an (E, D) expert bias).
        sd["expert_param_indices"] = [i for i, p in enumerate(params) if hasattr(p, "expert")]
        if not any(_shard(p) for p in params):
            return sd
        full, self._full_expert_state = self._full_expert_state, None
        if full is None:
            raise RuntimeError("expert parallel: the optimizer state holds only this rank's "
                               "experts; consolidate_state_dict() must run on all ranks first")
        state = dict(sd["state"])
        for (i, k), t in full.items():
            state[i] = dict(state[i])  # copy: sd["state"][i] is the live state dict
            state[i][k] = t
        sd["state"] = state
        return sd

    def load_state_dict(self, state_dict):
        params = self._indexed_params()
        state = dict(state_dict["state"])
        for i, p in enumerate(params):
            shard = _shard(p)
            if shard is None or i not in state:
                continue
            state[i] = {k: (slice_dim0(v, shard[0], shard[1], p.size(0), f"optimizer state {k}")
                            if torch.is_tensor(v) and v.dim() > 0 and v.shape[1:] == p.shape[1:]
                            else v)
                        for k, v in state[i].items()}
        state_dict = {k: v for k, v in state_dict.items() if k != "expert_param_indices"}
        super().load_state_dict({**state_dict, "state": state})


@torch.no_grad()
def clip_grad_norm_expert_parallel(params, max_norm, aggregate_norm_fn=None):
    """Global grad norm with each expert counted once; clips all grads in place."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    dense = [p.grad for p in params if not hasattr(p, "expert")]
    expert = [p.grad for p in params if hasattr(p, "expert")]
    zero = params[0].grad.new_zeros((), dtype=torch.float32)
    dense_sq = sum((g.float().norm() ** 2 for g in dense), zero)
    if aggregate_norm_fn is not None:  # fairseq passes one for FSDP only
        dense_sq = aggregate_norm_fn(dense_sq.sqrt()) ** 2
    expert_sq = sum((g.float().norm() ** 2 for g in expert), zero.clone())
    if any(_shard(p) for p in params):
        dist.all_reduce(expert_sq)  # each rank holds different experts
    total = (dense_sq + expert_sq).sqrt()
    if max_norm > 0:
        coef = (float(max_norm) / (total + 1e-6)).clamp_(max=1)
        torch._foreach_mul_([p.grad for p in params], coef)
    return total


@dataclass
class FairseqAdamEPConfig(FairseqAdamConfig):
    pass


@register_optimizer("adam_ep", dataclass=FairseqAdamEPConfig)
class FairseqAdamEP(FairseqAdam):
    """``--optimizer adam`` for expert-parallel training (same flags)."""

    def __init__(self, cfg: FairseqAdamEPConfig, params):
        FairseqOptimizer.__init__(self, cfg)  # skip FairseqAdam's fused-Adam choice
        if getattr(cfg, "fp16_adam_stats", False):
            raise ValueError("--optimizer adam_ep does not support --fp16-adam-stats")
        self._optimizer = ExpertParallelAdam(params, **self.optimizer_config)

    def clip_grad_norm(self, max_norm, aggregate_norm_fn=None):
        return clip_grad_norm_expert_parallel(self.params, max_norm, aggregate_norm_fn)
