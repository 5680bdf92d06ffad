"""Expert tensors across ranks: gather to rank 0 for saving, slice on load.

Checkpoint layout (see docs/PARALLEL.md): fairseq writes checkpoints on rank 0
only, so before every save the experts of all ranks are gathered to rank 0
and ``checkpoint_*.pt`` is a complete single-process checkpoint (all E experts
in the model, all E experts' Adam moments in the optimizer state). Loading
slices each rank's experts back out, for any world size that divides E.

The gather is a collective, so it has to run on every rank. The only hook
fairseq calls on every rank right before a save is
``optimizer.consolidate_state_dict()`` (``Trainer.consolidate_optimizer``, the
same hook fairscale's sharded OSS optimizer uses), hence ``--optimizer adam_ep``
(``parallel/optimizer.py``). It leaves the gathered expert weights on each
expert parameter (``_ep_gathered``, rank 0 only) for the model's state-dict
hook below to pick up, once.
"""

from functools import partial

import torch
import torch.distributed as dist
from torch import Tensor

EXPERT_PARAM_NAMES = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")


def gather_dim0_to_rank0(t: Tensor, group=None):
    """Concatenate every rank's ``t`` along dim 0 on rank 0 (CPU); None elsewhere."""
    t = t.detach().contiguous()
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    parts = [torch.empty_like(t) for _ in range(world)] if rank == 0 else None
    dist.gather(t, parts, dst=0, group=group)
    return torch.cat(parts, 0).cpu() if rank == 0 else None


def slice_dim0(t: Tensor, rank: int, world: int, local_rows: int, what: str) -> Tensor:
    """This rank's ``local_rows`` rows of a full (world*local_rows, ...) tensor.

    Every rank reads the same file (fairseq loads on rank 0 and broadcasts), so
    only complete checkpoints are accepted, never a per-rank piece.
    """
    if t.size(0) != local_rows * world:
        raise ValueError(
            f"{what}: checkpoint has {t.size(0)} experts, but this run has {local_rows} local "
            f"experts on each of {world} ranks ({local_rows * world} in all); check "
            "--moe-expert-count and --distributed-world-size")
    return t[rank * local_rows:(rank + 1) * local_rows].clone()


def gather_expert_params(params, group=None):
    """Collective: leave the full tensor of each sharded expert param on rank 0."""
    for p in params:
        if getattr(p, "expert_shard", None) is not None:
            p._ep_gathered = gather_dim0_to_rank0(p.data, group)


def full_experts_state_dict_hook(module, state_dict, prefix, local_metadata):
    """``StackedExperts`` state-dict post-hook: write all E experts, not the local ones."""
    for name in EXPERT_PARAM_NAMES:
        p = getattr(module, name)
        full = p.__dict__.pop("_ep_gathered", None)
        if full is None:
            raise RuntimeError(
                f"expert parallel: {prefix}{name} holds only this rank's experts and no gathered "
                "copy is ready. Checkpoints need every rank to gather first; with fairseq-train "
                "that is --optimizer adam_ep (its consolidate_state_dict runs on all ranks before "
                "rank 0 saves). Refusing to save a partial model.")
        state_dict[prefix + name] = full.to(state_dict[prefix + name].dtype)


def slice_experts_load_hook(module, state_dict, prefix, local_metadata, strict, missing_keys,
                            unexpected_keys, error_msgs, rank, world):
    """``StackedExperts`` load pre-hook: keep this rank's rows of a full checkpoint."""
    for name in EXPERT_PARAM_NAMES:
        key = prefix + name
        if key in state_dict:
            state_dict[key] = slice_dim0(state_dict[key], rank, world, module.num_experts, key)


def install_checkpoint_hooks(experts, rank: int, world: int):
    experts.register_state_dict_post_hook(full_experts_state_dict_hook)
    experts.register_load_state_dict_pre_hook(
        partial(slice_experts_load_hook, rank=rank, world=world))
