"""Decoder MoE layers never leak future target tokens, in training mode with a tight capacity.

Logits at positions < t must not change when target tokens from position t on change
(token routing: causal layers are dropless; sentence modes: causal prefix mean).
"""

import argparse

import pytest
import torch
from fairseq.models.transformer.transformer_legacy import tiny_architecture

from fairseq_taskmoe.models.transformer_taskmoe import TransformerTaskMoEModel
from taskmoe_testlib import FakeTask


def build(decoder_routing, policy):
    task = FakeTask(40)
    args = argparse.Namespace(dropout=0.0, attention_dropout=0.0, moe_task_names="de,fr",
                              moe_encoder_routing="token", moe_decoder_routing=decoder_routing,
                              moe_capacity_factor=0.5, moe_second_expert_policy=policy)
    tiny_architecture(args)
    torch.manual_seed(0)
    return task, TransformerTaskMoEModel.build_model(args, task).train()


@pytest.mark.parametrize("routing", ["token", "sentence", "sentence-pooled"])
@pytest.mark.parametrize("policy", ["all", "random"])
def test_changing_future_targets_leaves_earlier_logits_unchanged(routing, policy):
    task, model = build(routing, policy)
    torch.manual_seed(3)
    bsz, src_len, tgt_len = 8, 7, 10
    src = torch.randint(4, 40, (bsz, src_len))
    prev = torch.randint(4, 40, (bsz, tgt_len))
    lengths = torch.full((bsz,), src_len)
    task_ids = torch.tensor([0, 1] * (bsz // 2))
    torch.manual_seed(7)
    logits, extra = model(src, lengths, prev, task_ids=task_ids)
    # capacity 0.5 binds in training: the encoder's token layer drops, the decoder's does not
    assert sum(s.dropped for s in extra["moe_stats"]["encoder"]) > 0
    assert sum(s.dropped for s in extra["moe_stats"]["decoder"]) == 0
    for t in (1, 5):
        prev2 = prev.clone()
        prev2[:, t:] = torch.randint(4, 40, prev2[:, t:].shape, generator=torch.Generator().manual_seed(t))
        torch.manual_seed(7)  # the same random-policy draws
        logits2, _ = model(src, lengths, prev2, task_ids=task_ids)
        torch.testing.assert_close(logits2[:, :t], logits[:, :t], atol=1e-6, rtol=0)
        assert not torch.allclose(logits2[:, t:], logits[:, t:])
