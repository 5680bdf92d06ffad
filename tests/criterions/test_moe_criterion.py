"""label_smoothed_cross_entropy_moe vs stock label_smoothed_cross_entropy."""

import argparse

import pytest
import torch
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.models.transformer.transformer_legacy import tiny_architecture

from fairseq_taskmoe.criterions.label_smoothed_cross_entropy_moe import (
    LabelSmoothedCrossEntropyMoECriterion,
)
from fairseq_taskmoe.models.transformer_taskmoe import TransformerTaskMoEModel
from taskmoe_testlib import FakeTask


@pytest.fixture
def setup():
    task = FakeTask(30)
    args = argparse.Namespace(dropout=0.0, attention_dropout=0.0, moe_task_names="de,fr",
                              moe_encoder_routing="token", moe_decoder_routing="task")
    tiny_architecture(args)
    torch.manual_seed(0)
    model = TransformerTaskMoEModel.build_model(args, task).eval()
    torch.manual_seed(1)
    src = torch.randint(4, 30, (3, 5))
    tgt = torch.randint(4, 30, (3, 4))
    tgt[2, -1] = task.target_dictionary.pad()
    prev = torch.cat([torch.full((3, 1), 2), tgt[:, :-1]], 1)
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.full((3,), 5), "prev_output_tokens": prev,
                            "task_ids": torch.tensor([0, 1, 0])},
              "target": tgt, "ntokens": int(tgt.ne(1).sum()), "nsentences": 3}
    return task, model, sample


def test_weight_zero_equals_stock_label_smoothed_ce(setup):
    task, model, sample = setup
    stock = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    moe = LabelSmoothedCrossEntropyMoECriterion(task, False, 0.1, moe_aux_loss_weight=0.0)
    loss_s, size_s, log_s = stock(model, sample)
    loss_m, size_m, log_m = moe(model, sample)
    assert size_s == size_m
    torch.testing.assert_close(loss_m, loss_s, atol=0, rtol=0)
    torch.testing.assert_close(log_m["nll_loss"], log_s["nll_loss"], atol=0, rtol=0)
    assert log_m["moe_encoder_n"] == 1 and log_m["moe_decoder_n"] == 1


def test_aux_term_is_weight_times_sample_size_times_mean_aux(setup):
    task, model, sample = setup
    base = LabelSmoothedCrossEntropyMoECriterion(task, False, 0.1, moe_aux_loss_weight=0.0)
    moe = LabelSmoothedCrossEntropyMoECriterion(task, False, 0.1, moe_aux_loss_weight=0.5)
    loss0, size, _ = base(model, sample)
    loss1, _, logs = moe(model, sample)
    _, extra = model(**sample["net_input"])
    stats = extra["moe_stats"]["encoder"] + extra["moe_stats"]["decoder"]
    mean_aux = torch.stack([s.aux_loss for s in stats]).mean()
    torch.testing.assert_close(loss1 - loss0, 0.5 * size * mean_aux)
    assert logs["moe_decoder_aux"] > 0


def test_negative_weight_rejected(setup):
    task, _, _ = setup
    with pytest.raises(ValueError, match="--moe-aux-loss-weight"):
        LabelSmoothedCrossEntropyMoECriterion(task, False, 0.1, moe_aux_loss_weight=-1)
