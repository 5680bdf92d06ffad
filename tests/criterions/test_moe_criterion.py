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


def test_logged_loss_is_the_translation_loss_for_any_aux_weight(setup):
    """checkpoint_best (fairseq's --best-checkpoint-metric loss) is chosen on the CE alone."""
    import math

    from fairseq import metrics

    task, model, sample = setup
    stock = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    logs = {}
    for weight in (0.0, 0.5):
        crit = LabelSmoothedCrossEntropyMoECriterion(task, False, 0.1, moe_aux_loss_weight=weight)
        objective, size, logs[weight] = crit(model, sample)
        with metrics.aggregate() as agg:
            crit.reduce_metrics([logs[weight]])
            logs[weight]["reduced"] = agg.get_smoothed_values()
    _, _, log_stock = stock(model, sample)
    torch.testing.assert_close(logs[0.5]["loss"], logs[0.0]["loss"], atol=0, rtol=0)
    torch.testing.assert_close(logs[0.5]["loss"], log_stock["loss"], atol=0, rtol=0)
    assert logs[0.5]["reduced"]["loss"] == logs[0.0]["reduced"]["loss"]
    _, extra = model(**sample["net_input"])
    stats = extra["moe_stats"]["encoder"] + extra["moe_stats"]["decoder"]
    aux_term = 0.5 * size * torch.stack([s.aux_loss for s in stats]).mean()
    torch.testing.assert_close(logs[0.5]["moe_aux_loss"], aux_term.detach())
    assert logs[0.0]["moe_aux_loss"] == 0.0
    # logged in the units of `loss`, so loss + moe_aux_loss is the optimised objective
    assert logs[0.5]["reduced"]["moe_aux_loss"] == pytest.approx(
        aux_term.item() / size / math.log(2), abs=1e-4)


def test_gradient_still_includes_the_weighted_aux_term(setup):
    task, model, sample = setup
    gates = [layer.moe.router.wg.weight for layer in model.encoder.layers if hasattr(layer, "moe")]
    gates += [layer.moe.router.task_gate.weight for layer in model.decoder.layers if hasattr(layer, "moe")]

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [g.grad.clone() for g in gates]

    g0 = grads(LabelSmoothedCrossEntropyMoECriterion(task, False, 0.1, moe_aux_loss_weight=0.0)(model, sample)[0])
    g1 = grads(LabelSmoothedCrossEntropyMoECriterion(task, False, 0.1, moe_aux_loss_weight=0.5)(model, sample)[0])
    _, extra = model(**sample["net_input"])
    stats = extra["moe_stats"]["encoder"] + extra["moe_stats"]["decoder"]
    ga = grads(0.5 * sample["ntokens"] * torch.stack([s.aux_loss for s in stats]).mean())
    for a, b, c in zip(g0, g1, ga):
        assert c.abs().sum() > 0
        torch.testing.assert_close(b, a + c, atol=1e-6, rtol=1e-5)
