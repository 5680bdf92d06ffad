"""Expert tensors across ranks: who saves what, and loading at any world size.

The hooks here read and write through the model's ``ExpertParallelPlan``
(``sharding.py``): this process's share of the experts (rank, world size, the
name of every expert param, the tensors gathered for a complete checkpoint).
The ``adam_ep`` optimizer finds the plan through ``param.expert_shard``.

Saving. fairseq writes checkpoints on rank 0 only; the one hook it calls on
every rank right before is ``optimizer.consolidate_state_dict()``
(``Trainer.consolidate_optimizer``, fairscale's OSS hook), hence
``--optimizer adam_ep``. There, by default (W > 1), every rank writes its own
experts and their Adam moments (``shards.py``) and rank 0's shared file only
references them: no rank ever holds all experts. With ``--moe-gather-checkpoint``
the experts and moments are gathered to rank 0 instead and the checkpoint is
one complete single-process file (fine for small models).

Loading, at any world size (W = 1 too, e.g. fairseq-generate): a model-level
load pre-hook gives every MoE layer this rank's rows, either sliced from a
complete checkpoint or read from the shard files that cover them.
"""

import os
from functools import partial

import torch
import torch.distributed as dist
from torch import Tensor

from fairseq_taskmoe.checkpoints.shards import EXPERT_PARAM_NAMES, REF_KEY


def gather_dim0_to_rank0(t: Tensor, group=None):
    """Concatenate every rank's ``t`` along dim 0 on rank 0 (CPU); None elsewhere."""
    t = t.detach().contiguous()
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    parts = [torch.empty_like(t) for _ in range(world)] if rank == 0 else None
    dist.gather(t, parts, dst=0, group=group)
    return torch.cat(parts, 0).cpu() if rank == 0 else None


def slice_dim0(t: Tensor, rank: int, world: int, local_rows: int, what: str) -> Tensor:
    """This rank's ``local_rows`` rows of a full (world*local_rows, ...) tensor."""
    if t.size(0) != local_rows * world:
        raise ValueError(
            f"{what}: checkpoint has {t.size(0)} experts, but this run has {local_rows} local "
            f"experts on each of {world} ranks ({local_rows * world} in all); check "
            "--moe-expert-count and --distributed-world-size")
    return t[rank * local_rows:(rank + 1) * local_rows].clone()


def full_experts_state_dict_hook(module, state_dict, prefix, local_metadata, plan):
    """``StackedExperts`` post-hook (--moe-gather-checkpoint): write all E experts."""
    if plan.sharded_save:
        return
    for name in EXPERT_PARAM_NAMES:
        full = plan.pop_gathered(getattr(module, name))
        if full is None:
            raise RuntimeError(
                f"expert parallel: {prefix}{name} holds only this rank's experts and no gathered "
                "copy is ready. Checkpoints need every rank to gather first; with fairseq-train "
                "that is --optimizer adam_ep (its consolidate_state_dict runs on all ranks before "
                "rank 0 saves). Refusing to save a partial model.")
        state_dict[prefix + name] = full.to(state_dict[prefix + name].dtype)


def shared_state_dict_hook(module, state_dict, prefix, local_metadata, plan):
    """Model post-hook (sharded save): drop expert tensors, reference this save's shard set."""
    if not plan.sharded_save:
        return
    if plan.pending_ref is None:
        raise RuntimeError(
            "expert parallel: no shard set was written for this save. Each rank writes its experts "
            "in optimizer.consolidate_state_dict() (fairseq-train: --optimizer adam_ep) before rank "
            "0 saves; refusing to save a model without its experts.")
    for name in plan.params:
        state_dict.pop(prefix + name, None)
    state_dict[prefix + REF_KEY] = dict(plan.pending_ref)


def experts_load_hook(module, state_dict, prefix, local_metadata, strict, missing_keys,
                      unexpected_keys, error_msgs, plan):
    """Model pre-hook: give every expert param this rank's rows, from a complete checkpoint
    (slice) or from the shard files a shared checkpoint references."""
    ref = state_dict.pop(prefix + REF_KEY, None)
    reader = plan.reader_for(ref) if ref else None
    for name, p in plan.params.items():
        key = prefix + name
        lo, hi = plan.rows(p)
        if reader is not None:
            if key in state_dict:
                raise ValueError(f"{key}: both in the shared checkpoint and in its expert shards")
            state_dict[key] = reader.rows(lambda s, n=name: s["model"][n], lo, hi, key)
        elif key in state_dict and plan.world > 1:
            state_dict[key] = slice_dim0(state_dict[key], plan.rank, plan.world, p.size(0), key)


def install_checkpoint_hooks(model, plan, experts_modules):
    """Load at any W; save sharded or gathered (the hooks read ``plan.gather`` when called)."""
    model.register_load_state_dict_pre_hook(partial(experts_load_hook, plan=plan))
    if plan.world > 1:
        model.register_state_dict_post_hook(partial(shared_state_dict_hook, plan=plan))
        for experts in experts_modules:
            experts.register_state_dict_post_hook(partial(full_experts_state_dict_hook, plan=plan))


def load_dirs_from_args(args, task=None):
    """Where the shard files of a checkpoint being loaded may be, in order: beside the
    checkpoint files the command line loads (fairseq-generate / -interactive ``--path``,
    a colon-separated list, read from the task: generate builds the model from the
    checkpoint's args, which name the training run's directories, not this file's), beside
    --restore-file / --finetune-from-model, else --save-dir (fairseq's own resolution of
    checkpoint_last.pt). ``resolve_shard_dir`` then falls back to the dir recorded at save."""
    dirs = []
    for ns, attrs in ((getattr(task, "args", None), ("path",)),
                      (args, ("path", "restore_file", "finetune_from_model"))):
        for attr in attrs:
            value = getattr(ns, attr, None) if ns is not None else None
            for path in (str(value).split(os.pathsep) if value and "://" not in str(value) else []):
                if os.path.dirname(path) or attr == "path":
                    dirs.append(os.path.dirname(os.path.abspath(path)))
    if getattr(args, "save_dir", None):
        dirs.append(os.path.abspath(args.save_dir))
    return list(dict.fromkeys(dirs))
