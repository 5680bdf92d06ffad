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
from fairseq_taskmoe.parallel.checkpoint import EXPERT_PARAM_NAMES, install_checkpoint_hooks

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
        raise ValueError("expert parallel with --fp16/--bf16 needs --memory-efficient-fp16/"
                         "--memory-efficient-bf16 (fairseq's flat fp32 master copy loses the "
                         "expert tags the checkpoint gather relies on)")


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
        p.expert_shard = (rank, world)  # static tag, read by the adam_ep optimizer
        p.register_hook(lambda g, w=world: g / w)  # see the module docstring
    experts.num_experts = n_local
    install_checkpoint_hooks(experts, rank, world)
    moe.expert_fn = ExpertParallelRun(experts)


def shard_experts_for_expert_parallel(model, args=None):
    """Shard every MoE layer of ``model`` when distributed with W > 1; no-op otherwise."""
    world = expert_parallel_world()
    if world is None:
        return model
    rank, size = world
    if args is not None:
        check_training_args(args, size)
    for module in model.modules():
        if isinstance(module, MoELayer):
            shard_moe_layer(module, rank, size)
    return model
