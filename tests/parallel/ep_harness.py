"""A tiny MoE model and one fairseq-style training step, run on W = 1 or under
``torch.multiprocessing.spawn`` with gloo (shared by the parallel tests).

The step reproduces fairseq's gradient pipeline: summed loss, legacy_ddp's
average of non-expert grads over ranks, then every grad times W / sample_size
(sample size summed over ranks), then clipping.
"""

import os
import socket
from argparse import Namespace

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from fairseq_taskmoe.moe.layer import MoELayer
from fairseq_taskmoe.parallel.checkpoint import gather_dim0_to_rank0
from fairseq_taskmoe.parallel.optimizer import ExpertParallelAdam, clip_grad_norm_expert_parallel
from fairseq_taskmoe.parallel.sharding import expert_parallel_from_args

E, D, FFN, V, L, B = 4, 8, 16, 11, 5, 4


# Every routing mode through the all-to-all: token routing with a binding
# capacity (0.5: each rank drops assignments) and dropless, sentence, task.
LAYERS = (("token", {"capacity_factor": 0.5}), ("token", {"dropless": True}),
          ("sentence", {}), ("task", {"num_tasks": 3}))


class TinyMoE(nn.Module):
    def __init__(self, expert_parallel=None):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.moes = nn.ModuleList(MoELayer(D, FFN, E, routing, 2, torch.relu,
                                           expert_parallel=expert_parallel, **kw)
                                  for routing, kw in LAYERS)
        self.out = nn.Linear(D, V)

    def forward(self, tokens, pad, task_ids):  # tokens (L, B), pad (B, L)
        x = self.embed(tokens)  # (L, B, D)
        stats = []
        for moe in self.moes:
            y, st = moe(x, pad, task_ids)
            x = x + y
            stats.append(st)
        return self.out(x), stats  # (L, B, V)


def global_batch():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, V, (L, B), generator=g)
    targets = torch.randint(0, V, (L, B), generator=g)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, 3:] = True
    pad[2, 4:] = True
    task_ids = torch.tensor([0, 1, 1, 2])
    return tokens, targets, pad, task_ids


def build(seed=0, save_dir=None, gather=True):
    """The model as build_model makes it: the plan first (rank and world from the
    initialized process group, if any), the layers built with it, then attached."""
    torch.manual_seed(seed)
    args = Namespace(save_dir=save_dir and str(save_dir), moe_gather_checkpoint=gather)
    plan = expert_parallel_from_args(args)
    return plan.attach(TinyMoE(plan))


def plan_of(model):
    return model.moes[0].experts.fc1_weight.expert_shard


def train_step(model, opt, rank, world, clip=0.05, parts=2):
    """One update on the global batch, cut into ``parts`` slices of sentences.

    With W = parts ranks, rank r runs slice r; with W = 1 the one process runs
    every slice in turn and sums their gradients (fairseq's --update-freq).
    Capacity is per forward call, so this is the single-process run that W
    ranks must reproduce exactly; dropless layers would match the whole batch
    in one call too.
    """
    assert parts % world == 0
    tokens, targets, pad, task_ids = global_batch()
    step = B // parts
    loss_sum = tokens.new_zeros((), dtype=torch.float)
    ntok = tokens.new_zeros((), dtype=torch.float)
    a2a = torch.zeros(2)  # rows sent, rows routed (expert parallel only)
    dropped = torch.zeros(())
    for part in range(rank, parts, world):
        cols = slice(part * step, (part + 1) * step)
        logits, stats = model(tokens[:, cols], pad[cols], task_ids[cols])
        keep = ~pad[cols].t()
        n = keep.sum().float()
        loss = F.cross_entropy(logits[keep].float(), targets[:, cols][keep], reduction="sum")
        aux = torch.stack([st.aux_loss for st in stats]).mean()
        (loss + 0.01 * n * aux).backward()  # the criterion's aux term, per forward call
        loss_sum += loss.detach()
        ntok += n
        dropped += stats[0].dropped
        for st in stats:
            if st.a2a_sent is not None:
                a2a += torch.stack([st.a2a_sent, st.a2a_routed])
    stats = torch.stack([loss_sum, ntok, dropped])
    if world > 1:
        for p in model.parameters():
            if not hasattr(p, "expert"):
                p.grad /= world
                dist.all_reduce(p.grad)
        dist.all_reduce(stats)
        dist.all_reduce(a2a)
    for p in model.parameters():
        p.grad *= world / stats[1]
    norm = clip_grad_norm_expert_parallel(model.parameters(), clip)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    return stats[0], norm, grads, {"dropped": stats[2], "a2a_sent": a2a[0], "a2a_routed": a2a[1]}


def full(name, t, world):
    """The W = 1 view of a (possibly expert-sharded) tensor, on rank 0."""
    if world == 1 or "experts." not in name:
        return t.detach().clone()
    return gather_dim0_to_rank0(t)


def run_step(rank, world, out_dir):
    """One step; rank 0 saves loss, norm, grads and params (all experts) to out_dir/result.pt.

    With W > 1 the state is saved both ways: gathered to rank 0 (``model_sd``,
    ``opt_sd``: complete) and sharded (``shared_model_sd``, ``shared_opt_sd``
    reference ``out_dir/ckpt/experts-*-rank-<r>.pt``, one file per rank).
    """
    model = build(save_dir=out_dir / "ckpt")
    opt = ExpertParallelAdam(model.parameters(), lr=0.01)
    loss, norm, grads, moe = train_step(model, opt, rank, world)
    result = {"loss": loss, "norm": norm, "moe": moe,
              "grads": {n: full(n, g, world) for n, g in grads.items()},
              "params": {n: full(n, p, world) for n, p in model.named_parameters()}}
    if world > 1:  # the checkpoint path: gather on all ranks, rank 0 writes
        opt.consolidate_state_dict()
    if rank == 0:
        result["model_sd"] = model.state_dict()
        result["opt_sd"] = opt.state_dict()
    if world > 1:  # the sharded checkpoint path: every rank writes its experts
        plan_of(model).gather = False
        opt.consolidate_state_dict()
        if rank == 0:
            result["shared_model_sd"] = model.state_dict()
            result["shared_opt_sd"] = opt.state_dict()
        plan_of(model).gather = True
    if rank == 0:
        torch.save(result, out_dir / "result.pt")
    return model, opt


def train_losses(rank, world, steps, dtype=torch.float32):
    """Losses of ``steps`` updates with the model's params in ``dtype`` (bf16: what
    --memory-efficient-bf16 does: half params and grads, fp32 Adam maths and moments)."""
    model = build().to(dtype)
    opt = ExpertParallelAdam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(steps):
        model.zero_grad()
        losses.append(float(train_step(model, opt, rank, world, clip=1.0)[0]))
    return losses


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo(rank, world, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def fairseq_cfg(world=1, init_scale=128, lr=0.01):
    """The parts of fairseq's config that its optimizer wrappers read (AMPOptimizer,
    MemoryEfficientFP16Optimizer, FP16Optimizer) around ``--optimizer adam_ep``."""
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "optimizer": {"_name": "adam_ep", "lr": [lr], "tpu": False},
        "common": {"fp16_init_scale": init_scale, "fp16_scale_window": None,
                   "fp16_scale_tolerance": 0.0, "threshold_loss_scale": None,
                   "min_loss_scale": 1e-4, "bf16": False, "amp_scale_window": None,
                   "fp16_no_flatten_grads": True, "model_parallel_size": 1},
        "optimization": {"update_freq": [1]},
        "distributed_training": {"distributed_world_size": world},
    })
