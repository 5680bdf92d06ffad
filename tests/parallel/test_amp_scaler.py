"""``--amp`` with expert parallelism: every rank makes the same loss-scale decision.

Driven through fairseq's real ``AMPOptimizer`` around ``adam_ep`` in the order
fairseq's Trainer calls it (scaled backward, legacy_ddp's average of dense
grads, multiply_grads, clip_grad_norm, step). fairseq builds a CUDA GradScaler,
which disables itself without CUDA; a CPU one of the same settings takes its
place here, and the plugin swaps in ``ExpertParallelGradScaler`` for CPU the
same way it does for CUDA. With an inf in one rank's expert grads both ranks
skip, both scales halve and the replicated params stay bit-identical; with
fairseq's own scaler the ranks part ways (the test can fail). A clean step
unscales once: the update equals fp32 ``adam_ep`` exactly (the scale is a
power of two), where fairseq's own scaler unscales twice.
"""

from argparse import Namespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from fairseq import optim
from fairseq.optim import AMPOptimizer, MemoryEfficientFP16Optimizer

from parallel import ep_harness as H
from fairseq_taskmoe.parallel.scaler import (
    ExpertParallelGradScaler, expert_parallel_scaler_like, install_expert_parallel_scaler,
)
from fairseq_taskmoe.parallel.sharding import check_training_args

INIT_SCALE = 128


def _cpu_grad_scaler(**kwargs):
    return torch.amp.GradScaler("cpu", **kwargs)


def amp_optimizer(model, world, install):
    """fairseq's AMPOptimizer.build_optimizer with a CPU GradScaler for its CUDA one."""
    cuda_scaler = torch.cuda.amp.GradScaler
    torch.cuda.amp.GradScaler = _cpu_grad_scaler
    try:
        opt = AMPOptimizer.build_optimizer(H.fairseq_cfg(world, INIT_SCALE), list(model.parameters()))
    finally:
        torch.cuda.amp.GradScaler = cuda_scaler
    assert type(opt.scaler) is torch.amp.GradScaler and opt.scaler.is_enabled()
    if install:
        assert install_expert_parallel_scaler(opt)
    return opt


def fairseq_step(model, opt, rank, world, clip=0.05, poison=False):
    """One update on this rank's half of the batch, as fairseq's Trainer drives ``opt``
    (a FairseqOptimizer: fp32 adam_ep or AMPOptimizer). ``poison``: an inf in this
    rank's first expert gradient after backward."""
    tokens, targets, pad, task_ids = H.global_batch()
    cols = slice(rank * H.B // world, (rank + 1) * H.B // world)
    logits, stats = model(tokens[:, cols], pad[cols], task_ids[cols])
    keep = ~pad[cols].t()
    n = keep.sum().float()
    loss = F.cross_entropy(logits[keep].float(), targets[:, cols][keep], reduction="sum")
    opt.backward(loss + 0.01 * n * torch.stack([st.aux_loss for st in stats]).mean())
    if poison:
        model.moes[0].experts.fc1_weight.grad[0, 0, 0] = float("inf")
    if world > 1:
        for p in model.parameters():
            if not hasattr(p, "expert"):
                p.grad /= world
                dist.all_reduce(p.grad)
        dist.all_reduce(n)
    opt.multiply_grads(world / n)
    norm = opt.clip_grad_norm(clip)
    opt.step()
    return norm


def _dense(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".experts." not in n}


def _run(rank, world, variant, poison_rank):
    model = H.build()
    opt = amp_optimizer(model, world, install=variant == "ep")
    before = [p.detach().clone() for p in model.parameters()]
    # fairseq's default --clip-norm 0 when poisoned: clipping by an inf norm would zero the
    # grads of a rank that steps anyway, and a first Adam step on zero grads moves nothing.
    norm = fairseq_step(model, opt, rank, world, clip=0.0 if poison_rank is not None else 0.05,
                        poison=rank == poison_rank)
    return {"scale": opt.scaler.get_scale(), "norm": float(norm),
            "stepped": [not torch.equal(a, b) for a, b in zip(before, model.parameters())],
            "adam_steps": len(opt.optimizer.state), "dense": _dense(model),
            "params": [p.detach().clone() for p in model.parameters()]}


def _fp32_reference(rank, world):
    model = H.build()
    opt = optim.build_optimizer(H.fairseq_cfg(world).optimizer, list(model.parameters()))
    fairseq_step(model, opt, rank, world)
    return [p.detach().clone() for p in model.parameters()]


def _mem_eff_fp16(rank, world, poison):
    """fairseq's MemoryEfficientFP16Optimizer (its DynamicLossScaler decides from the grad
    norm, which adam_ep all-reduces) on given fp16 grads; rank 0's expert grad inf if
    ``poison``. Returns whether this rank saw the overflow, its loss scale, dense params."""
    model = H.build().half()
    opt = MemoryEfficientFP16Optimizer.build_optimizer(H.fairseq_cfg(world, INIT_SCALE),
                                                       list(model.parameters()))
    opt.zero_grad()
    g = torch.Generator().manual_seed(rank)
    for p in model.parameters():
        p.grad = (torch.randn(p.shape, generator=g) * 0.1).half()
    if poison and rank == 0:
        model.moes[0].experts.fc1_weight.grad[0, 0, 0] = float("inf")
    for p in model.parameters():
        if not hasattr(p, "expert"):
            p.grad /= world
            dist.all_reduce(p.grad)
    try:
        opt.clip_grad_norm(0.0)
        opt.step()
        overflow = False
    except OverflowError:  # fairseq's Trainer then skips the update
        overflow = True
    return {"overflow": overflow, "loss_scale": opt.scaler.loss_scale, "dense": _dense(model)}


def _worker(rank, world, port, out_dir):
    H.init_gloo(rank, world, port)
    try:
        report = {v: _run(rank, world, v, poison_rank=0) for v in ("ep", "stock")}
        report.update({f"mem-eff {poison}": _mem_eff_fp16(rank, world, poison)
                       for poison in (True, False)})
        report.update({f"{v} clean": _run(rank, world, v, poison_rank=None) for v in ("ep", "stock")})
        report["fp32"] = _fp32_reference(rank, world)
        torch.save(report, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_reports(tmp_path_factory):
    """Every 2-rank run of this file, in one spawn."""
    out = tmp_path_factory.mktemp("amp")
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(2, H.free_port(), out), nprocs=2, join=True)
    return out


def test_ranks_agree_on_overflow(two_rank_reports):
    r0, r1 = (torch.load(two_rank_reports / f"rank{r}.pt") for r in range(2))

    # The plugin's scaler: rank 0's inf makes both ranks skip and halve the scale.
    for r in (r0["ep"], r1["ep"]):
        assert r["scale"] == INIT_SCALE / 2
        assert not any(r["stepped"]) and r["adam_steps"] == 0
        assert r["norm"] != r["norm"] or r["norm"] == float("inf")  # adam_ep's norm is global
    for n, t in r0["ep"]["dense"].items():
        assert torch.equal(t, r1["ep"]["dense"][n]), n

    # fairseq's own scaler: rank 0 skips and halves, rank 1 steps and keeps its scale,
    # and the replicated params are no longer the same on the two ranks.
    assert r0["stock"]["scale"] == INIT_SCALE / 2 and not any(r0["stock"]["stepped"])
    assert r1["stock"]["scale"] == INIT_SCALE and any(r1["stock"]["stepped"])
    assert r0["stock"]["adam_steps"] == 0 < r1["stock"]["adam_steps"]
    assert any(not torch.equal(t, r1["stock"]["dense"][n]) for n, t in r0["stock"]["dense"].items())

    # A clean step: both step, the scale stays; grads unscaled once, so the update is
    # fp32 adam_ep's to the bit. fairseq's own scaler hands Adam g / scale.
    for r in (r0, r1):
        assert r["ep clean"]["scale"] == INIT_SCALE and all(r["ep clean"]["stepped"])
        for got, want in zip(r["ep clean"]["params"], r["fp32"]):
            assert torch.equal(got, want)
        assert any(not torch.equal(got, want) for got, want in zip(r["stock clean"]["params"], r["fp32"]))
    for n, t in r0["ep clean"]["dense"].items():
        assert torch.equal(t, r1["ep clean"]["dense"][n]), n


def test_memory_efficient_fp16_ranks_agree_on_overflow(two_rank_reports):
    """--memory-efficient-fp16 needs no new scaler: fairseq's DynamicLossScaler decides from
    adam_ep's grad norm, which is all-reduced, so an inf in rank 0's experts is an overflow
    on both ranks (same new scale, no step); without one, both step alike."""
    r0, r1 = (torch.load(two_rank_reports / f"rank{r}.pt") for r in range(2))
    for r in (r0, r1):
        assert r["mem-eff True"]["overflow"] and r["mem-eff True"]["loss_scale"] == INIT_SCALE / 2
        assert not r["mem-eff False"]["overflow"] and r["mem-eff False"]["loss_scale"] == INIT_SCALE
    for kind in ("mem-eff True", "mem-eff False"):
        for n, t in r0[kind]["dense"].items():
            assert torch.equal(t, r1[kind]["dense"][n]), (kind, n)


def test_swap_keeps_settings_and_state():
    old = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_factor=3.0, backoff_factor=0.25,
                               growth_interval=7)
    p = torch.nn.Parameter(torch.ones(2))
    sgd = torch.optim.SGD([p], lr=0.1)
    for _ in range(3):  # advance the growth tracker; one overflow to move the scale
        old.scale(p.sum()).backward()
        p.grad[0] = float("inf") if _ == 0 else p.grad[0]
        old.step(sgd)
        old.update()
        sgd.zero_grad()
    new = expert_parallel_scaler_like(old)
    assert isinstance(new, ExpertParallelGradScaler)
    assert new.state_dict() == old.state_dict() == {
        "scale": 2.0 ** 10 * 0.25, "growth_factor": 3.0, "backoff_factor": 0.25,
        "growth_interval": 7, "_growth_tracker": 2}
    off = expert_parallel_scaler_like(torch.amp.GradScaler("cpu", enabled=False))
    assert not off.is_enabled()


def test_install_only_around_adam_ep_and_once():
    model = H.build()
    amp = amp_optimizer(model, 1, install=False)
    assert install_expert_parallel_scaler(amp)
    first = amp.scaler
    assert isinstance(first, ExpertParallelGradScaler) and first._device == "cpu"
    assert first.get_scale() == INIT_SCALE
    assert install_expert_parallel_scaler(amp) and amp.scaler is first  # idempotent
    plain = optim.build_optimizer(H.fairseq_cfg(1).optimizer, list(model.parameters()))
    assert not install_expert_parallel_scaler(plain)  # not an AMPOptimizer: untouched


def test_trainer_holds_the_expert_parallel_scaler_across_a_resume(toy_data, tmp_path, monkeypatch):
    """fairseq's own Trainer, with --amp --optimizer adam_ep and the plugin task: after a
    train step the AMPOptimizer the Trainer holds has the plugin's scaler, and again after
    a checkpoint load (which rebuilds the optimizer with a fresh fairseq scaler)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer
    from taskmoe_testlib import multilingual_task_args, train_args

    monkeypatch.setattr(torch.cuda.amp, "GradScaler", _cpu_grad_scaler)
    args = options.parse_args_and_arch(options.get_training_parser(), [str(a) for a in [
        *multilingual_task_args(toy_data), *train_args(tmp_path, 2),
        "--optimizer", "adam_ep", "--cpu", "--amp", "--fp16-init-scale", str(INIT_SCALE)]])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    itr = trainer.get_train_iterator(epoch=1)
    batches = itr.next_epoch_itr(shuffle=False)

    assert type(trainer.optimizer.scaler) is torch.amp.GradScaler  # fairseq's, as built
    trainer.train_step([next(batches)])
    assert trainer.get_num_updates() == 1
    assert isinstance(trainer.optimizer.scaler, ExpertParallelGradScaler)
    assert trainer.optimizer.scaler.get_scale() == INIT_SCALE

    trainer.consolidate_optimizer()  # as fairseq's checkpoint_utils.save_checkpoint does
    trainer.save_checkpoint(str(tmp_path / "checkpoint_last.pt"), {"train_iterator": itr.state_dict()})
    trainer.load_checkpoint(str(tmp_path / "checkpoint_last.pt"))
    assert type(trainer.optimizer.scaler) is torch.amp.GradScaler  # rebuilt by fairseq
    trainer.train_step([next(batches)])
    assert trainer.get_num_updates() == 2
    assert isinstance(trainer.optimizer.scaler, ExpertParallelGradScaler)


def test_amp_with_expert_parallel_needs_the_plugin_task():
    """The scaler is installed by the plugin task's train_step: with another task, W > 1
    and --amp is refused at model build."""
    base = {"ddp_backend": "legacy_ddp", "optimizer": "adam_ep", "load_checkpoint_on_all_dp_ranks": True,
            "amp": True}
    with pytest.raises(ValueError, match="--amp needs --task one of "
                                         "translation_multi_simple_epoch_taskmoe; got 'translation'"):
        check_training_args(Namespace(**base, task="translation"), 2)
    check_training_args(Namespace(**base, task="translation_multi_simple_epoch_taskmoe"), 2)
    check_training_args(Namespace(**{**base, "amp": False}, task="translation"), 2)
