"""Turn a built model into its expert-parallel shard for this rank.

``shard_experts_for_expert_parallel(model, args)`` is called at the end of
``TransformerTaskMoEModel.build_model``. When ``torch.distributed`` is
initialized with world size W > 1 it keeps experts ``rank*E/W ..`` of every
MoE layer (all ranks build the full model from the same seed first, so the
shards are the slices of the W = 1 model), routes tokens through the
all-to-all, and fixes the gradient scale.

Gradient scale: fairseq averages data-parallel grads over W (legacy_ddp
divides by W before its all-reduce) and then multiplies every grad by
W / sample_size, so a replicated param ends at sum_r g_r / S, exactly the
W = 1 gradient. An expert's grad is never all-reduced, but the all-to-all
backward already brings it every rank's tokens: it is the full-batch g_e,
and fairseq's W / S would leave it W times too large. A grad hook divides
expert grads by W, giving g_e / S as with W = 1.
"""

import torch.distributed as dist

from fairseq_taskmoe.moe.layer import MoELayer
from fairseq_taskmoe.parallel.all_to_all import ExpertParallelRun
from fairseq_taskmoe.parallel.checkpoint import (
    EXPERT_PARAM_NAMES, ExpertParallelPlan, install_checkpoint_hooks, load_dirs_from_args,
)

# fairseq's wrappers that skip the all-reduce of params tagged `expert`. c10d /
# pytorch_ddp would average different experts' grads across ranks.
EP_DDP_BACKENDS = ("legacy_ddp", "no_c10d")
EP_OPTIMIZERS = ("adam_ep",)


def expert_parallel_world():
    """(rank, world size) of the expert-parallel group (all ranks), or None when off."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return dist.get_rank(), dist.get_world_size()


def check_training_args(args, world: int):
    """Refuse fairseq-train settings that would corrupt or lose experts, before any work."""
    backend = getattr(args, "ddp_backend", None)
    if backend is not None and str(backend) not in EP_DDP_BACKENDS:
        raise ValueError(f"expert parallel (world size {world}) needs --ddp-backend one of "
                         f"{', '.join(EP_DDP_BACKENDS)}; got {backend!r} (it would all-reduce "
                         "expert gradients across ranks that hold different experts)")
    optimizer = getattr(args, "optimizer", None)
    if optimizer is not None and str(optimizer) not in EP_OPTIMIZERS:
        raise ValueError(f"expert parallel (world size {world}) needs --optimizer one of "
                         f"{', '.join(EP_OPTIMIZERS)}; got {optimizer!r} (only it gathers every "
                         "rank's experts before fairseq saves on rank 0)")
    if hasattr(args, "load_checkpoint_on_all_dp_ranks") and not args.load_checkpoint_on_all_dp_ranks:
        raise ValueError("expert parallel needs --load-checkpoint-on-all-dp-ranks: otherwise fairseq "
                         "loads on rank 0 and broadcasts the state as a pickle holding an omegaconf "
                         "DictConfig, which torch's safe loader refuses on the other ranks at resume")
    if getattr(args, "store_ema", False):
        raise ValueError("expert parallel does not support --store-ema (the EMA copy's experts are "
                         "not gathered for the checkpoint)")
    if getattr(args, "no_save_optimizer_state", False):
        raise ValueError("expert parallel does not support --no-save-optimizer-state: fairseq then "
                         "skips the all-rank hook that gathers experts for the checkpoint")
    if (getattr(args, "fp16", False) or getattr(args, "bf16", False)) and not getattr(
            args, "memory_efficient_fp16", False) and not getattr(args, "memory_efficient_bf16", False):
        flag = "--bf16" if getattr(args, "bf16", False) else "--fp16"
        raise ValueError(f"expert parallel does not support {flag} (fairseq's fp32 master copy of "
                         "the params is a separate tensor per param, or one flat tensor, that the "
                         "expert-parallel optimizer cannot map back to the sharded experts); use "
                         f"--memory-efficient-{flag[2:]} (same compute dtype, fp32 optimizer maths) "
                         "or --amp")


def shard_moe_layer(moe: MoELayer, rank: int, world: int):
    """Keep this rank's E/W experts of ``moe`` and dispatch through the all-to-all."""
    if moe.num_experts % world != 0:
        raise ValueError(f"expert parallel: --moe-expert-count ({moe.num_experts}) must be "
                         f"divisible by --distributed-world-size ({world})")
    experts = moe.experts
    n_local = moe.num_experts // world
    assert experts.num_experts == moe.num_experts, "layer already sharded"
    for name in EXPERT_PARAM_NAMES:
        p = getattr(experts, name)
        p.data = p.data[rank * n_local:(rank + 1) * n_local].clone()
        p.register_hook(lambda g, w=world: g / w)  # see the module docstring
    experts.num_experts = n_local
    moe.expert_fn = ExpertParallelRun(experts)


def untag_experts(experts):
    """W = 1: experts are ordinary params. fairseq's ``clip_grad_norm_`` leaves params tagged
    ``expert`` out of the grad norm (it only scales them), so a single-process run with
    ``--clip-norm`` would clip on the dense params alone; the tag is only needed to keep
    sharded experts out of the data-parallel all-reduce."""
    for name in EXPERT_PARAM_NAMES:
        p = getattr(experts, name)
        if hasattr(p, "expert"):
            del p.expert


def shard_experts_for_expert_parallel(model, args=None):
    """Shard every MoE layer of ``model`` when distributed with W > 1.

    At any W, attaches the ``ExpertParallelPlan`` (names of expert params and
    checkpoint hooks), so a W = 1 model loads a sharded checkpoint too.
    """
    world = expert_parallel_world()
    rank, size = world or (0, 1)
    if world is not None and args is not None:
        check_training_args(args, size)
    plan = ExpertParallelPlan(rank, size, gather=bool(getattr(args, "moe_gather_checkpoint", False)),
                              save_dir=getattr(args, "save_dir", None),
                              load_dirs=load_dirs_from_args(args) if args is not None else ())
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, MoELayer)]
    for name, moe in layers:
        if world is None:
            untag_experts(moe.experts)
        else:
            shard_moe_layer(moe, rank, size)
        plan.add(f"{name}.experts" if name else "experts", moe.experts)
    install_checkpoint_hooks(model, plan, [moe.experts for _, moe in layers])
    return model
