"""Resuming ``adam_ep`` under ``--memory-efficient-fp16`` keeps the fp32 Adam moments.

fairseq's ``MemoryEfficientFP16Optimizer`` wraps ``adam_ep`` around the fp16
model params; torch's ``load_state_dict`` casts the moments to fp16 (an fp16
``exp_avg_sq`` underflows to 0) and fairseq's own undo writes the checkpoint's
raw entries back, which are missing (sharded save) or hold all E experts
(gathered save, another world size) for expert params. Through fairseq's real
wrapper, for W = 1, W = 2 sharded, gathered -> W = 2 and W = 2 -> W = 1: every
moment after the resume is the saved fp32 tensor exactly, and the next step
moves the moments exactly as an fp32 resume does. The same resume without the
fix loses the moments (the test can fail). And why ``--fp16`` stays refused
with W > 1: fairseq's FP16Optimizer loads the same sharded state into fp32
copies without the plan link, and every rank gets rank 0's experts' moments.

fairseq itself cannot train --fp16 without CUDA, so the state is saved from
fp32 training (the moments are fp32 either way) and the fp16 model only loads
and takes one step with given grads (no fp16 matmul).
"""

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fairseq.optim import FP16Optimizer, MemoryEfficientFP16Optimizer

from parallel import ep_harness as H
from fairseq_taskmoe.parallel.optimizer import ExpertParallelAdam
from fairseq_taskmoe.parallel.sharding import check_training_args


def _resume(ckpt_model, ckpt_opt, world, dtype=torch.float16):
    """A fresh model in ``dtype`` resumed from the checkpoint; fp16: through fairseq's
    MemoryEfficientFP16Optimizer around adam_ep, fp32: adam_ep alone. (A copy of the state:
    a loaded optimizer shares the checkpoint's tensors, and its steps change them.)"""
    ckpt_model, ckpt_opt = copy.deepcopy(ckpt_model), copy.deepcopy(ckpt_opt)
    model = H.build(seed=123)
    model.load_state_dict(dict(ckpt_model))
    model.to(dtype)
    if dtype == torch.float32:
        opt = ExpertParallelAdam(model.parameters(), lr=0.01)
        opt.load_state_dict(ckpt_opt)
        return model, opt, opt
    wrapper = MemoryEfficientFP16Optimizer.build_optimizer(H.fairseq_cfg(world), list(model.parameters()))
    wrapper.load_state_dict(ckpt_opt)
    return model, wrapper, wrapper.optimizer


def _moment_problems(model, adam, want):
    """What differs between the resumed moments and ``want`` ({param index: {key: tensor}})."""
    problems = []
    for i, (n, p) in enumerate(model.named_parameters()):
        for k, v in want[i].items():
            if not torch.is_tensor(v) or k == "step":
                continue
            got = adam.state[p].get(k)
            if got is None or got.dtype != torch.float32 or got.shape != v.shape:
                problems.append(f"{n}.{k}: {None if got is None else (got.dtype, tuple(got.shape))}")
            elif not torch.equal(got, v):
                problems.append(f"{n}.{k}: values differ")
    return problems


def _live_moments(model, opt):
    return {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
            for i, p in enumerate(model.parameters())}


def _grads(model):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(p.shape, generator=g) * 1e-3 for p in model.parameters()]


def _step_like_fp32(ckpt_model, ckpt_opt, world):
    """One step after the fp16 resume moves the moments exactly as after an fp32 resume."""
    half, wrapper, adam16 = _resume(ckpt_model, ckpt_opt, world)
    full, adam32, _ = _resume(ckpt_model, ckpt_opt, world, torch.float32)
    for p, q, g in zip(half.parameters(), full.parameters(), _grads(full)):
        p.grad, q.grad = g.half(), g.half().float()  # the same values in both
    wrapper.step()
    adam32.step()
    want = _live_moments(full, adam32)
    return _moment_problems(half, adam16, want)


def _unfixed(monkeypatch_like):
    """fairseq's loading hack on and the dtype restore off: the code before the fix."""
    monkeypatch_like(ExpertParallelAdam, "disable_mem_eff_fp16_loading_hack", False)
    monkeypatch_like(ExpertParallelAdam, "_restore_saved_dtypes", lambda self, groups, state: None)


def _fp16_optimizer_rows(ckpt, world):
    """Why --fp16 stays refused with W > 1: fairseq's FP16Optimizer (--fp16-no-flatten-grads)
    loads the sharded state into fp32 copies that lack the plan link. Returns, per expert
    copy, which rank's rows of the complete (gathered) moments it got."""
    half = H.build(seed=123)
    half.load_state_dict(copy.deepcopy(ckpt["shared_model_sd"]))
    half.half()
    opt = FP16Optimizer.build_optimizer(H.fairseq_cfg(world), list(half.parameters()))
    opt.load_state_dict(copy.deepcopy(ckpt["shared_opt_sd"]))
    rows = []
    for i, p32 in enumerate(opt.fp32_params):
        if hasattr(p32, "expert"):
            assert getattr(p32, "expert_shard", None) is None  # the tag is copied, the link is not
            full, n = ckpt["opt_sd"]["state"][i]["exp_avg"], p32.size(0)
            got = opt.optimizer.state[p32]["exp_avg"]
            rows.append([r for r in range(world) if torch.equal(got, full[r * n:(r + 1) * n])])
    return rows


def _worker(rank, world, port, out_dir):
    H.init_gloo(rank, world, port)
    try:
        model, opt = H.run_step(rank, world, out_dir)
        dist.barrier()
        ckpt = torch.load(out_dir / "result.pt", weights_only=True)
        live = _live_moments(model, opt)
        report = {}
        for kind, keys in (("gathered", ("model_sd", "opt_sd")),
                           ("sharded", ("shared_model_sd", "shared_opt_sd"))):
            half, _, adam = _resume(ckpt[keys[0]], ckpt[keys[1]], world)
            for p, q in zip(model.parameters(), half.parameters()):
                assert torch.equal(p.detach().half(), q), "the fp16 model must resume too"
            report[kind] = _moment_problems(half, adam, live)
            report[kind + " step"] = _step_like_fp32(ckpt[keys[0]], ckpt[keys[1]], world)
        report["fp16 copies"] = _fp16_optimizer_rows(ckpt, world)
        saved = {}

        def setattr_saved(obj, name, value):
            saved[name] = obj.__dict__[name]
            setattr(obj, name, value)

        _unfixed(setattr_saved)
        try:
            half, _, adam = _resume(ckpt["shared_model_sd"], ckpt["shared_opt_sd"], world)
            report["sharded unfixed"] = _moment_problems(half, adam, live)
            try:
                half, wrapper, _ = _resume(ckpt["model_sd"], ckpt["opt_sd"], world)
                for p, g in zip(half.parameters(), _grads(half)):
                    p.grad = g.half()
                wrapper.step()
                report["gathered unfixed"] = "stepped"
            except RuntimeError as e:
                report["gathered unfixed"] = str(e)
        finally:
            for name, value in saved.items():
                setattr(ExpertParallelAdam, name, value)
        torch.save(report, out_dir / f"report{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_w1_resume_keeps_fp32_moments(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    model, opt = H.run_step(0, 1, tmp_path)
    sd_model, sd_opt = model.state_dict(), opt.state_dict()
    live = _live_moments(model, opt)
    half, _, adam = _resume(sd_model, sd_opt, 1)
    assert _moment_problems(half, adam, live) == []
    assert any((v["exp_avg_sq"].half() == 0).any() for v in live.values()), \
        "some exp_avg_sq must underflow in fp16 for the test to cover the cast"
    assert _step_like_fp32(sd_model, sd_opt, 1) == []
    # fairseq's hack got W = 1 right (complete state, same rows); with it off, the restore
    # is what keeps the moments fp32.
    monkeypatch.setattr(ExpertParallelAdam, "_restore_saved_dtypes", lambda self, groups, state: None)
    half, _, adam = _resume(sd_model, sd_opt, 1)
    assert any("float16" in p for p in _moment_problems(half, adam, live))


def test_w2_resumes_keep_fp32_moments(tmp_path):
    """Sharded W = 2 -> W = 2, gathered -> W = 2, and sharded W = 2 -> W = 1."""
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(2, H.free_port(), tmp_path), nprocs=2, join=True)
    for rank in range(2):
        report = torch.load(tmp_path / f"report{rank}.pt")
        for kind in ("gathered", "sharded", "gathered step", "sharded step"):
            assert report[kind] == [], (rank, kind, report[kind])
        # Before the fix: the expert moments of a sharded resume stay cast to fp16 ...
        unfixed = report["sharded unfixed"]
        assert unfixed and all(".experts." in p for p in unfixed), unfixed
        assert any("float16" in p for p in unfixed), unfixed
        # ... and a gathered checkpoint's full (E-row) moments break the next step.
        assert "size" in report["gathered unfixed"], report["gathered unfixed"]

    # --fp16: every rank's copies got rank 0's experts' moments (hence the refusal).
    for rank in range(2):
        rows = torch.load(tmp_path / f"report{rank}.pt")["fp16 copies"]
        assert rows and all(r == [0] for r in rows), (rank, rows)

    # W = 2 sharded -> W = 1: every expert's moments from both shard files, in fp32.
    ckpt = torch.load(tmp_path / "result.pt", weights_only=True)
    complete = {i: {k: torch.as_tensor(v) for k, v in st.items()}
                for i, st in ckpt["opt_sd"]["state"].items()}  # the gathered save: all E rows
    half, _, adam = _resume(ckpt["shared_model_sd"], ckpt["shared_opt_sd"], 1)
    assert _moment_problems(half, adam, complete) == []
    assert _step_like_fp32(ckpt["shared_model_sd"], ckpt["shared_opt_sd"], 1) == []


def test_fp16_refused_with_expert_parallel_and_why():
    from argparse import Namespace

    base = {"ddp_backend": "legacy_ddp", "optimizer": "adam_ep", "load_checkpoint_on_all_dp_ranks": True}
    for extra in ({}, {"fp16_no_flatten_grads": True}):
        with pytest.raises(ValueError, match=r"does not support --fp16, with or without "
                                             r"--fp16-no-flatten-grads: .*another rank's Adam "
                                             r"moments.*use --memory-efficient-fp16 .* or --amp"):
            check_training_args(Namespace(**base, fp16=True, **extra), 2)
    check_training_args(Namespace(**base, fp16=True, memory_efficient_fp16=True), 2)
