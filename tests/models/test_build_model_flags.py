"""build_model and the stock transformer flags: each one done as stock does, or refused by name."""

import argparse
import logging

import pytest
import torch
from fairseq.models.transformer import TransformerModel
from fairseq.models.transformer.transformer_legacy import tiny_architecture

from fairseq_taskmoe.models.layers import MoEDecoderLayer, MoEEncoderLayer
from fairseq_taskmoe.models.transformer_taskmoe import TransformerTaskMoEModel
from taskmoe_testlib import FakeTask


def moe_args(**flags):
    args = argparse.Namespace(dropout=0.0, attention_dropout=0.0, moe_task_names="de,fr", **flags)
    tiny_architecture(args)
    return args


def stock_args(**flags):
    args = argparse.Namespace(dropout=0.0, attention_dropout=0.0, **flags)
    tiny_architecture(args)
    return args


@pytest.mark.parametrize("flags,match", [
    (dict(merge_src_tgt_embed=True), "does not support --merge-src-tgt-embed: it merges"),
    (dict(encoder_layers_to_keep="0"), "does not support --encoder-layers-to-keep: layer dropping"),
    (dict(decoder_layers_to_keep="1"), "does not support --decoder-layers-to-keep: layer dropping"),
])
def test_unsupported_stock_flags_are_refused_by_name(flags, match):
    with pytest.raises(ValueError, match=match):
        TransformerTaskMoEModel.build_model(moe_args(**flags), FakeTask(40))


def test_decoder_embed_path_with_shared_embeddings_is_refused_as_stock_does(tmp_path):
    flags = dict(share_all_embeddings=True, decoder_embed_path=str(tmp_path / "emb.txt"))
    with pytest.raises(ValueError) as stock_err:
        TransformerModel.build_model(stock_args(**flags), FakeTask(40))
    with pytest.raises(ValueError) as ours:
        TransformerTaskMoEModel.build_model(moe_args(**flags), FakeTask(40))
    assert str(ours.value) == str(stock_err.value) == (
        "--share-all-embeddings not compatible with --decoder-embed-path")


@pytest.mark.parametrize("flags", [{}, dict(share_all_embeddings=True), dict(min_params_to_wrap=7)])
def test_min_params_to_wrap_is_filled_as_stock_does(flags):
    stock, ours = stock_args(**flags), moe_args(**flags)
    TransformerModel.build_model(stock, FakeTask(40))
    TransformerTaskMoEModel.build_model(ours, FakeTask(40))
    assert getattr(ours, "min_params_to_wrap", "unset") == getattr(stock, "min_params_to_wrap", "unset")


def _loss_and_grads(model):
    torch.manual_seed(3)
    src, prev = torch.randint(4, 40, (4, 6)), torch.randint(4, 40, (4, 5))
    model.zero_grad()
    out, extra = model(src, torch.full((4,), 6), prev, task_ids=torch.tensor([0, 1, 0, 1]))
    stats = extra["moe_stats"]["encoder"] + extra["moe_stats"]["decoder"]
    (out.pow(2).mean() + sum(s.aux_loss for s in stats)).backward()
    return out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("flag", ["checkpoint_activations", "offload_activations"])
def test_activation_checkpointing_wraps_dense_layers_and_keeps_the_gradients(flag, caplog):
    """As stock: --offload-activations implies --checkpoint-activations; the dense layers are
    wrapped by fairseq's build_*_layer, the MoE layers are not (said in the log)."""
    torch.manual_seed(0)
    plain = TransformerTaskMoEModel.build_model(moe_args(), FakeTask(40)).train()
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING):
        wrapped = TransformerTaskMoEModel.build_model(moe_args(**{flag: True}), FakeTask(40)).train()
    assert "wrap the dense layers only; MoE layers run unwrapped" in caplog.text
    layers = list(wrapped.encoder.layers) + list(wrapped.decoder.layers)
    moe = [isinstance(l, (MoEEncoderLayer, MoEDecoderLayer)) for l in layers]
    assert moe == [False, True, False, True]
    assert [hasattr(l, "precheckpoint_forward") for l in layers] == [not m for m in moe]
    offload = [l.forward.args[1] for l, m in zip(layers, moe) if not m]  # checkpoint_wrapper's partial
    assert offload == [flag == "offload_activations"] * 2
    out_plain, grads_plain = _loss_and_grads(plain)
    out_wrapped, grads_wrapped = _loss_and_grads(wrapped)
    torch.testing.assert_close(out_wrapped, out_plain, atol=0, rtol=0)
    assert grads_wrapped.keys() == grads_plain.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_wrapped[name], grads_plain[name], atol=1e-6, rtol=1e-5)
