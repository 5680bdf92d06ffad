"""transformer_taskmoe vs stock transformer with copied weights (pins the layer loops)."""

import argparse

import pytest
import torch
from fairseq.models.transformer import TransformerModel
from fairseq.models.transformer.transformer_legacy import tiny_architecture

from fairseq_taskmoe.models.transformer_taskmoe import TransformerTaskMoEModel
from taskmoe_testlib import FakeTask


def build_pair(**moe):
    task = FakeTask(40)
    stock_args = argparse.Namespace(dropout=0.0, attention_dropout=0.0)
    tiny_architecture(stock_args)
    torch.manual_seed(0)
    stock = TransformerModel.build_model(stock_args, task)
    moe_args = argparse.Namespace(dropout=0.0, attention_dropout=0.0, moe_task_names="de,fr", **moe)
    tiny_architecture(moe_args)
    model = TransformerTaskMoEModel.build_model(moe_args, task)
    return task, stock.eval(), model.eval()


def copy_weights(stock, model):
    target = model.state_dict()
    for name, value in stock.state_dict().items():
        if name in target:
            target[name] = value.clone()
            continue
        # fc1/fc2 of a layer that is MoE in `model`: expert 0 gets them
        layer, fc, kind = name.rsplit(".", 2)
        key = f"{layer}.moe.experts.{fc}_{kind}"
        assert key in target, name
        target[key] = value.clone().unsqueeze(0)
    model.load_state_dict(target)


def inputs(task, bsz=4):
    torch.manual_seed(3)
    src = torch.randint(4, len(task.source_dictionary), (bsz, 6))
    src[0, :2] = task.source_dictionary.pad()  # left padding
    prev = torch.randint(4, len(task.target_dictionary), (bsz, 5))
    prev[1, -2:] = task.target_dictionary.pad()
    lengths = src.ne(task.source_dictionary.pad()).sum(1)
    return src, lengths, prev


def test_no_moe_layers_reproduces_stock_transformer():
    task, stock, model = build_pair(moe_freq=0)
    assert set(stock.state_dict()) == set(model.state_dict())
    copy_weights(stock, model)
    src, lengths, prev = inputs(task)
    ref, _ = stock(src, lengths, prev)
    out, extra = model(src, lengths, prev, task_ids=torch.tensor([0, 1, 0, 1]))
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    assert extra["moe_stats"] == {"encoder": [], "decoder": []}


@pytest.mark.parametrize("routing", ["token", "sentence", "task"])
def test_single_expert_moe_model_reproduces_stock_transformer(routing):
    task, stock, model = build_pair(moe_freq=2, moe_expert_count=1, moe_top_k=1,
                                    moe_encoder_routing=routing, moe_decoder_routing=routing)
    copy_weights(stock, model)
    src, lengths, prev = inputs(task)
    ref, _ = stock(src, lengths, prev)
    out, extra = model(src, lengths, prev, task_ids=torch.tensor([0, 1, 0, 1]))
    # Padding is never routed (its MoE output is 0, a dense FFN's is not); padded
    # positions are masked everywhere downstream, so compare the real positions.
    real = prev.ne(task.target_dictionary.pad())
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=1e-5)
    assert len(extra["moe_stats"]["encoder"]) == 1 and len(extra["moe_stats"]["decoder"]) == 1


def test_incremental_decoding_matches_full_forward_with_task_ids():
    task, _, model = build_pair(moe_freq=2, moe_expert_count=4, moe_encoder_routing="token",
                                moe_decoder_routing="sentence")
    src, lengths, prev = inputs(task)
    prev[1, -2:] = 5  # no target padding for step-wise comparison
    task_ids = torch.tensor([0, 1, 0, 1])
    full, _ = model(src, lengths, prev, task_ids=task_ids)
    enc = model.encoder(src, src_lengths=lengths, task_ids=task_ids)
    state = {}
    steps = [model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)[0]
             for t in range(prev.size(1))]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    # beam reordering carries task ids along
    order = torch.tensor([3, 2, 1, 0])
    reordered = model.encoder.reorder_encoder_out(enc, order)
    assert reordered["task_ids"][0].tolist() == [1, 0, 1, 0]


def test_task_routing_without_task_names_is_a_clear_error():
    task = FakeTask(40)
    args = argparse.Namespace(moe_decoder_routing="task")
    tiny_architecture(args)
    with pytest.raises(ValueError, match="--moe-task-names"):
        TransformerTaskMoEModel.build_model(args, task)


@pytest.mark.parametrize("flag,value,match", [
    ("moe_encoder_routing", "tokens", "--moe-encoder-routing must be one of"),
    ("moe_top_k", 3, "--moe-top-k must be 1 or 2"),
    ("moe_expert_count", 0, "--moe-expert-count must be >= 1"),
    ("moe_layout", "{bad", "--moe-layout is not valid JSON"),
])
def test_bad_flags_are_clear_errors(flag, value, match):
    args = argparse.Namespace(moe_task_names="de", **{flag: value})
    tiny_architecture(args)
    with pytest.raises(ValueError, match=match):
        TransformerTaskMoEModel.build_model(args, FakeTask(40))


@pytest.mark.parametrize("routing", ["token", "sentence", "sentence-pooled"])
def test_beam_reordering_of_causal_sentence_routing_state(routing):
    """Reordering mid-decode (as beam search does) keeps the router's prefix state aligned."""
    task, _, model = build_pair(moe_freq=2, moe_expert_count=4, moe_encoder_routing="token",
                                moe_decoder_routing=routing)
    src, lengths, prev = inputs(task)
    prev[1, -2:] = 5
    # Rows 0-1 and 2-3 are two beams of one sentence each, as in beam search:
    # fairseq only reorders within a sentence's beams (cross-attention caches rely on it).
    src, lengths = src[[0, 0, 1, 1]], lengths[[0, 0, 1, 1]]
    task_ids = torch.tensor([0, 0, 1, 1])
    order = torch.tensor([1, 1, 3, 2])
    full, _ = model(src[order], lengths[order], prev[order], task_ids=task_ids[order])
    enc = model.encoder(src, src_lengths=lengths, task_ids=task_ids)
    state = {}
    outs = [model.decoder(prev[:, :t + 1], encoder_out=enc, incremental_state=state)[0] for t in range(2)]
    model.decoder.reorder_incremental_state_scripting(state, order)
    enc = model.encoder.reorder_encoder_out(enc, order)
    prev = prev[order]
    outs = [o[order] for o in outs]
    outs += [model.decoder(prev[:, :t + 1], encoder_out=enc, incremental_state=state)[0]
             for t in range(2, prev.size(1))]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
