"""``--optimizer adam_ep``: fairseq's Adam, aware of expert-sharded params.

What differs from ``--optimizer adam`` (the update itself is the same,
fairseq's reference ``Adam``; fused Adam is not used):

- ``consolidate_state_dict()``: fairseq calls it on every rank right before
  rank 0 writes a checkpoint. With W > 1 each rank writes its experts and their
  Adam moments to its own shard file (``shards.py``), or, with
  ``--moe-gather-checkpoint``, gathers them to rank 0 (``checkpoint.py``).
- ``state_dict()`` leaves the experts' moments out of the shared file (sharded
  save) and names every expert entry; ``load_state_dict()`` takes this rank's
  rows from a complete checkpoint or from the shard files, at any world size.
- ``clip_grad_norm()``: the norm counts every expert once,
  ``sqrt(|g_dense|^2 + sum over ranks |g_local_experts|^2)``, the same value
  on every rank and for any world size.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
from fairseq.optim import FairseqOptimizer, register_optimizer
from fairseq.optim.adam import Adam, FairseqAdam, FairseqAdamConfig

from fairseq_taskmoe.checkpoints.shards import REF_KEY, ShardReader, resolve_shard_dir
from fairseq_taskmoe.parallel.checkpoint import gather_dim0_to_rank0, slice_dim0
from fairseq_taskmoe.parallel.shards import collect_stale_sets, save_shard_set


def _shard(p):
    """The ``ExpertParallelPlan`` of an expert param (any W), else None.

    fairseq builds the optimizer from the params alone, so ``p.expert_shard``
    (set by ``ExpertParallelPlan.attach``) is the one way to reach the plan;
    names, rows and gathered tensors all come from the plan itself."""
    return getattr(p, "expert_shard", None)


def _sharded(p):
    plan = _shard(p)
    return plan is not None and plan.world > 1


class ExpertParallelAdam(Adam):
    """fairseq ``Adam`` whose checkpoints hold every rank's expert moments exactly once."""

    _full_expert_state = None  # {(param index, state key): full tensor}, rank 0, after a gather
    # fairseq's MemoryEfficientFP16Optimizer.load_state_dict otherwise writes the checkpoint's
    # raw optimizer entries over ours after load_state_dict: see _restore_saved_dtypes.
    disable_mem_eff_fp16_loading_hack = True

    def _indexed_params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def _plan(self):
        return next((_shard(p) for p in self._indexed_params() if _shard(p) is not None), None)

    def consolidate_state_dict(self):
        """Collective, on every rank: write this rank's expert shard, or gather to rank 0."""
        plan = self._plan()
        if plan is None:
            return
        params = self._indexed_params()
        plan.pending_ref = None  # a failed save must leave nothing for rank 0 to reference
        if plan.sharded_save:
            if not plan.save_dir:
                raise RuntimeError("expert parallel: no --save-dir known to write expert shards to")
            experts = [p for p in params if _shard(p) is plan]
            steps = [self.state.get(p, {}).get("step") for p in experts]
            plan.pending_ref = save_shard_set(  # collective; raises on every rank if one failed
                plan.save_dir, plan.rank, plan.world, {plan.name_of(p): p.data for p in experts},
                {plan.name_of(p): dict(self.state.get(p, {})) for p in experts},
                num_updates=int(steps[0]) if steps and steps[0] is not None else None)
            return
        collect_stale_sets(plan.save_dir, plan.rank, plan.world)  # sets of earlier sharded runs
        if plan.world == 1:
            return
        plan.gather_experts()
        keys = [(i, k) for i, p in enumerate(params) if _sharded(p)
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
        plan = self._plan()
        # Which entries are experts, for fairseq-taskmoe-merge-shards and sharded loads (shapes
        # alone are ambiguous: a router's (E, D) gate looks like an (E, D) expert bias).
        sd["expert_param_indices"] = [i for i, p in enumerate(params) if _shard(p) is not None]
        sd["expert_param_names"] = {i: plan.name_of(p) for i, p in enumerate(params)
                                    if _shard(p) is not None}
        if plan is None or plan.world == 1:
            return sd
        state = dict(sd["state"])
        if plan.sharded_save:
            if plan.pending_ref is None:
                raise RuntimeError("expert parallel: the optimizer state holds only this rank's "
                                   "experts; consolidate_state_dict() must run on all ranks first")
            for i in sd["expert_param_indices"]:
                state.pop(i, None)  # in the shard files
            sd["state"] = state
            sd[REF_KEY] = dict(plan.pending_ref)
            return sd
        full, self._full_expert_state = self._full_expert_state, None
        if full is None:
            raise RuntimeError("expert parallel: the optimizer state holds only this rank's "
                               "experts; consolidate_state_dict() must run on all ranks first")
        for (i, k), t in full.items():
            state[i] = dict(state[i])  # copy: sd["state"][i] is the live state dict
            state[i][k] = t
        sd["state"] = state
        return sd

    def load_state_dict(self, state_dict):
        params = self._indexed_params()
        state = dict(state_dict["state"])
        ref = state_dict.get(REF_KEY)
        names = state_dict.get("expert_param_names", {})
        plan = self._plan()
        if ref is not None:
            # Sharded checkpoint: each expert entry's moments come from the shard files.
            reader = (plan.reader_for(ref) if plan is not None
                      else ShardReader(ref, resolve_shard_dir(ref, [])))
            for i, name in names.items():
                p = params[i]
                lo, hi = plan.rows(p) if _shard(p) is not None else (0, p.size(0))
                saved = reader.shard(0)["optimizer_state"][name]
                state[i] = {k: (reader.rows(lambda s, n=name, k=k: s["optimizer_state"][n][k], lo, hi,
                                            f"optimizer state {name}.{k}")
                                if torch.is_tensor(v) and v.dim() > 0 else v)
                            for k, v in saved.items()}
        else:
            for i, p in enumerate(params):
                if not _sharded(p) or i not in state:
                    continue
                plan_p = _shard(p)
                state[i] = {k: (slice_dim0(v, plan_p.rank, plan_p.world, p.size(0),
                                           f"optimizer state {k}")
                                if torch.is_tensor(v) and v.dim() > 0 and v.shape[1:] == p.shape[1:]
                                else v)
                            for k, v in state[i].items()}
        state_dict = {k: v for k, v in state_dict.items()
                      if k not in ("expert_param_indices", "expert_param_names", REF_KEY)}
        super().load_state_dict({**state_dict, "state": state})
        self._restore_saved_dtypes(state_dict["param_groups"], state)

    def _restore_saved_dtypes(self, saved_groups, state):
        """Give every param back its moments in the dtype they were saved in.

        torch's ``load_state_dict`` casts the state to each param's dtype: fp16 under
        ``--memory-efficient-fp16``, where fairseq's Adam keeps fp32 moments (an fp16
        ``exp_avg_sq`` underflows to 0). ``state`` holds this rank's rows of every entry
        (sliced or read from the shard files above), so this is the place to undo the
        cast: fairseq's own undo, in ``MemoryEfficientFP16Optimizer.load_state_dict``,
        writes the checkpoint's raw entries back, which are full-size or missing for
        experts (hence ``disable_mem_eff_fp16_loading_hack``)."""
        saved_ids = [i for group in saved_groups for i in group["params"]]
        by_id = dict(zip(saved_ids, self._indexed_params()))
        for i, entry in state.items():
            p = by_id.get(i)
            if p is None or p not in self.state:
                continue
            for k, v in entry.items():
                if k != "step" and torch.is_tensor(v) and v.is_floating_point():
                    self.state[p][k] = v.to(device=p.device)


@torch.no_grad()
def clip_grad_norm_expert_parallel(params, max_norm, aggregate_norm_fn=None):
    """Global grad norm with each expert counted once; clips all grads in place."""
    params = list(params)
    any_sharded = any(_sharded(p) for p in params)  # the same on every rank, grads or not
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    dense = [p.grad for p in params if not _sharded(p)]
    expert = [p.grad for p in params if _sharded(p)]
    zero = params[0].grad.new_zeros((), dtype=torch.float32)
    dense_sq = sum((g.float().norm() ** 2 for g in dense), zero)
    if aggregate_norm_fn is not None:  # fairseq passes one for FSDP only
        dense_sq = aggregate_norm_fn(dense_sq.sqrt()) ** 2
    expert_sq = sum((g.float().norm() ** 2 for g in expert), zero.clone())
    if any_sharded:
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
