"""Who holds which experts: the expert-parallel plan, decided once per model.

``expert_parallel_from_args(args)`` runs at the start of
``TransformerTaskMoEModel.build_model``: it reads the world size of
``torch.distributed`` once, checks the training flags, and returns the
``ExpertParallelPlan`` that every ``MoELayer`` receives at construction. With
W > 1 the plan builds each layer's ``StackedExperts`` holding only experts
``rank*E/W .. (rank+1)*E/W - 1`` (every rank draws the random numbers of all E
experts, so the shards are exactly the slices of the W = 1 model from the same
seed) and the all-to-all that runs them; with W = 1 it builds all E experts,
run locally. ``plan.attach(model)`` then names the experts by their place in
the model and installs the checkpoint hooks (``checkpoint.py``).

Gradient scale: fairseq averages data-parallel grads over W (legacy_ddp
divides by W before its all-reduce) and then multiplies every grad by
W / sample_size, so a replicated param ends at sum_r g_r / S, exactly the
W = 1 gradient. An expert's grad is never all-reduced, but the all-to-all
backward already brings it every rank's tokens: it is the full-batch g_e,
and fairseq's W / S would leave it W times too large. A grad hook divides
expert grads by W, giving g_e / S as with W = 1.
"""

import os
import socket

import torch.distributed as dist

from fairseq_taskmoe.checkpoints.args import restore_checkpoint_path
from fairseq_taskmoe.checkpoints.shards import ShardReader, resolve_shard_dir
from fairseq_taskmoe.moe.experts import StackedExperts
from fairseq_taskmoe.parallel.all_to_all import ExpertParallelRun
from fairseq_taskmoe.parallel.checkpoint import (
    EXPERT_PARAM_NAMES, gather_dim0_to_rank0, install_checkpoint_hooks, load_dirs_from_args,
)

# fairseq's wrappers that skip the all-reduce of params tagged `expert`. c10d /
# pytorch_ddp would average different experts' grads across ranks.
EP_DDP_BACKENDS = ("legacy_ddp", "no_c10d")
EP_OPTIMIZERS = ("adam_ep",)
# Tasks whose train_step installs the loss scaler all ranks agree on (parallel/scaler.py).
EP_AMP_TASKS = ("translation_multi_simple_epoch_taskmoe",)


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
    task = getattr(args, "task", None)
    if getattr(args, "amp", False) and str(task) not in EP_AMP_TASKS:
        raise ValueError(f"expert parallel with --amp needs --task one of {', '.join(EP_AMP_TASKS)}; "
                         f"got {task!r} (that task gives fairseq's AMP optimizer the loss scaler "
                         "whose overflow check is shared by all ranks; with fairseq's own, a rank "
                         "with an inf in its experts skips a step that the other ranks take)")
    if (getattr(args, "fp16", False) or getattr(args, "bf16", False)) and not getattr(
            args, "memory_efficient_fp16", False) and not getattr(args, "memory_efficient_bf16", False):
        flag = "--bf16" if getattr(args, "bf16", False) else "--fp16"
        # Why not --fp16-no-flatten-grads: its per-param fp32 copies carry `expert` but not
        # the plan (adam_ep's one link to ranks, rows and names), and fairseq loads the saved
        # optimizer state into them before any plugin code runs, so the rows could not be
        # picked at resume, nor the copies named in a sharded save (docs/PARALLEL.md).
        flat = not getattr(args, "fp16_no_flatten_grads", False) and flag == "--fp16"
        raise ValueError(f"expert parallel does not support {flag}, with or without "
                         "--fp16-no-flatten-grads: fairseq's FP16Optimizer runs Adam on fp32 copies "
                         f"of the params{' (one flat tensor)' if flat else ''}, and loads the "
                         "checkpoint's optimizer state into them, without their link to the "
                         "expert-parallel plan, so adam_ep cannot tell which rank's experts a copy "
                         "holds (a resume would hand a rank another rank's Adam moments; a sharded "
                         f"save could not name them); use --memory-efficient-{flag[2:]} (the same "
                         f"{flag[2:]} compute, adam_ep keeping fp32 moments and maths) or --amp "
                         "(fp32 params, autocast compute)")


def expert_parallel_world():
    """(rank, world size) of the expert-parallel group (all ranks), or None when off."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return dist.get_rank(), dist.get_world_size()


class ExpertParallelPlan:
    """This process's share of the experts, and everything that follows from it.

    Owns rank, world size, the state-dict name of every expert param, the
    tensors gathered for a complete checkpoint and the shard set last written
    or read. Built before the model, handed to every ``MoELayer``
    (``build_experts``), then ``attach``-ed to the finished model.
    """

    def __init__(self, rank: int = 0, world: int = 1, gather: bool = False, save_dir=None,
                 load_dirs=()):
        self.rank, self.world, self.gather = rank, world, gather
        self.save_dir = save_dir
        self.load_dirs = [d for d in load_dirs if d]
        self.names = {}  # id(param) -> state-dict name
        self.params = {}  # state-dict name -> param
        self.gathered = {}  # --moe-gather-checkpoint: name -> all E rows (rank 0; None elsewhere)
        self.pending_ref = None  # shard set written by the last consolidate (every rank)
        self.reader = None  # shard set read by the last model load, reused by the optimizer
        self._built = []  # StackedExperts built by this plan, named by attach()

    @property
    def sharded_save(self) -> bool:
        return self.world > 1 and not self.gather

    def local_rows(self, num_experts: int):
        """(lo, hi): the global experts this rank holds of a layer with ``num_experts``."""
        if num_experts % self.world != 0:
            raise ValueError(f"expert parallel: --moe-expert-count ({num_experts}) must be "
                             f"divisible by --distributed-world-size ({self.world})")
        n_local = num_experts // self.world
        return self.rank * n_local, (self.rank + 1) * n_local

    def build_experts(self, num_experts, embed_dim, ffn_dim, activation_fn, activation_dropout=0.0):
        """This rank's ``StackedExperts`` of an MoE layer, and its ``expert_fn`` (None: run
        locally, W = 1; else the all-to-all over ranks)."""
        # Tagged `expert` only when sharded: the tag keeps them out of legacy_ddp's all-reduce
        # (each rank holds different experts), but fairseq's clip_grad_norm_ also leaves tagged
        # params out of the norm, so at W = 1 (--clip-norm) they must be ordinary params.
        experts = StackedExperts(num_experts, embed_dim, ffn_dim, activation_fn, activation_dropout,
                                 rows=self.local_rows(num_experts), tag_expert=self.world > 1)
        self._built.append(experts)
        if self.world == 1:
            return experts, None
        for p in experts.parameters():
            p.register_hook(lambda g, w=self.world: g / w)  # see the module docstring
        return experts, ExpertParallelRun(experts)

    def attach(self, model):
        """Name the experts this plan built by their place in ``model``; install the hooks
        that load them at any W and save them sharded or gathered."""
        built = {id(m) for m in self._built}
        found = [(name, m) for name, m in model.named_modules() if id(m) in built]
        if len(found) != len(self._built):
            raise RuntimeError(f"expert parallel: {len(self._built)} expert modules were built "
                               f"with this plan, {len(found)} are in the model")
        for name, experts in found:
            for n in EXPERT_PARAM_NAMES:
                p = getattr(experts, n)
                self.names[id(p)] = f"{name}.{n}" if name else n
                self.params[self.names[id(p)]] = p
                # The one link from a param to the plan: fairseq builds the optimizer from the
                # params alone (Trainer -> build_optimizer(cfg, params)), so this is how adam_ep
                # finds the plan. Everything else goes through the plan.
                p.expert_shard = self
        install_checkpoint_hooks(model, self, [m for _, m in found])
        return model

    def name_of(self, p) -> str:
        return self.names[id(p)]

    def rows(self, p):
        """(lo, hi): the global expert rows this rank holds of param ``p``."""
        return self.rank * p.size(0), (self.rank + 1) * p.size(0)

    def reader_for(self, ref: dict, hints=()) -> ShardReader:
        if self.reader is None or self.reader.ref["set_id"] != ref["set_id"]:
            self.reader = ShardReader(ref, resolve_shard_dir(ref, [*hints, *self.load_dirs]))
        return self.reader

    def gather_experts(self, group=None):
        """Collective (--moe-gather-checkpoint): every expert param's E rows to rank 0."""
        self.gathered = {name: gather_dim0_to_rank0(p.data, group) for name, p in self.params.items()}

    def pop_gathered(self, p):
        """The gathered full tensor of ``p`` (once), or None when no gather ran."""
        return self.gathered.pop(self.name_of(p), None)


def check_same_restore_point(args, rank: int):
    """Collective: refuse when some ranks would resume and others start from scratch.

    With a node-local --save-dir, fairseq-train on a node that lacks the checkpoint logs
    "No existing checkpoint found" and trains from scratch (or from --finetune-from-model)
    while the other nodes resume: the replicated params differ between ranks from the first
    step on, and nothing fails. Every rank says which file it would load
    (``restore_checkpoint_path``, fairseq's own choice); all must agree."""
    if getattr(args, "restore_file", None) is None or getattr(args, "save_dir", None) is None:
        return  # not fairseq-train's args
    path = restore_checkpoint_path(args)
    loads = os.path.basename(path) if path and os.path.isfile(path) else None
    found = [None] * dist.get_world_size()
    dist.all_gather_object(found, (rank, socket.gethostname(), loads))
    if len({what for _, _, what in found}) == 1:
        return
    scratch = [f"rank {r} ({host})" for r, host, what in found if what is None]
    loaded = sorted({what for _, _, what in found if what is not None})
    if scratch:
        problem = (f"{' / '.join(loaded)} exists on some ranks but not on {', '.join(scratch)}: those "
                   "ranks would train from scratch while the others resume")
    else:
        problem = "the ranks would resume from different checkpoints (" + "; ".join(
            f"rank {r} ({host}): {what}" for r, host, what in found) + ")"
    raise ValueError(f"expert parallel: {problem}. Copy the checkpoint file (and the expert shard "
                     "files it names, docs/PARALLEL.md) to every node's --save-dir, or pass the same "
                     "--restore-file everywhere")


def expert_parallel_from_args(args=None, task=None) -> ExpertParallelPlan:
    """The plan for a model about to be built: W > 1 when ``torch.distributed`` is
    initialized with several ranks (the training flags are then checked), else W = 1
    (a W = 1 model still loads a sharded checkpoint through its plan; ``task``'s args name
    the checkpoint files fairseq-generate loads, see ``load_dirs_from_args``)."""
    world = expert_parallel_world()
    rank, size = world or (0, 1)
    if world is not None and args is not None:
        check_training_args(args, size)
        check_same_restore_point(args, rank)
    return ExpertParallelPlan(rank, size, gather=bool(getattr(args, "moe_gather_checkpoint", False)),
                              save_dir=getattr(args, "save_dir", None),
                              load_dirs=load_dirs_from_args(args, task) if args is not None else ())
