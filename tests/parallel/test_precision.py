"""Single-process clipping counts the experts; bf16 training (what
--memory-efficient-bf16 runs: half params and grads, fp32 Adam maths) tracks
fp32 with and without expert parallelism.

fairseq 0.12.3 itself cannot run --bf16 / --memory-efficient-bf16 off TPU (it
implies --tpu) nor --fp16 without CUDA, so these tests drive the plugin's
side (experts, all-to-all, adam_ep, clipping) directly; see docs/PARALLEL.md."""

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fairseq import utils

from parallel import ep_harness as H

STEPS = 4


def test_single_process_clip_norm_counts_every_expert():
    """fairseq's clip_grad_norm_ (--optimizer adam) leaves params tagged `expert` out of the
    norm; at W = 1 no param is tagged, so the norm is over every param."""
    torch.manual_seed(0)
    model = H.build()
    tokens, targets, pad, task_ids = H.global_batch()
    logits, _ = model(tokens, pad, task_ids)
    torch.nn.functional.cross_entropy(logits[~pad.t()], targets[~pad.t()]).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    full = torch.sqrt(sum(p.grad.float().pow(2).sum() for p in params))
    dense = torch.sqrt(sum(p.grad.float().pow(2).sum() for n, p in model.named_parameters()
                           if ".experts." not in n and p.grad is not None))
    assert full > dense * 1.01, "the experts must carry gradient for the test to cover them"
    torch.testing.assert_close(utils.clip_grad_norm_(params, 0.0), full)
    assert not any(hasattr(p, "expert") for p in model.parameters())


def _worker(rank, world, port, out):
    H.init_gloo(rank, world, port)
    try:
        result = {str(dt): H.train_losses(rank, world, STEPS, dt)
                  for dt in (torch.float32, torch.bfloat16)}
        if rank == 0:
            out.write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_bf16_tracks_fp32_with_and_without_expert_parallel(tmp_path):
    torch.set_num_threads(1)
    single = {str(dt): H.train_losses(0, 1, STEPS, dt) for dt in (torch.float32, torch.bfloat16)}
    mp.spawn(_worker, args=(2, H.free_port(), tmp_path / "w2.json"), nprocs=2, join=True)
    two = json.loads((tmp_path / "w2.json").read_text())
    fp32, bf16 = single["torch.float32"], single["torch.bfloat16"]
    assert fp32[-1] < fp32[0] * 0.97, f"fp32 must learn for the comparison to mean anything: {fp32}"
    for name, run in (("W=1 bf16", bf16), ("W=2 bf16", two["torch.bfloat16"])):
        for a, b in zip(run, fp32):
            assert abs(a - b) <= 0.02 * b, (name, run, fp32)
    for a, b in zip(two["torch.float32"], fp32):  # fp32 W=2 is the W=1 run (exact up to fp error)
        assert abs(a - b) <= 1e-4 * b
