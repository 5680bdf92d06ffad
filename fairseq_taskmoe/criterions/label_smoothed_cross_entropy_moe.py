"""Criterion ``label_smoothed_cross_entropy_moe``: label-smoothed CE + load balancing.

optimised: label_smoothed_CE + moe_aux_loss_weight * sample_size * mean(aux over MoE layers)

The logged ``loss`` is the label-smoothed CE alone (the translation loss), so
``--best-checkpoint-metric loss`` (fairseq's default) selects checkpoint_best on
translation quality, not on the balance term; ``moe_aux_loss`` logs the weighted
balance term in the same units (per ``sample_size``, base 2), so
``loss + moe_aux_loss`` is the optimised objective.

Logs per side (encoder, decoder): the aux loss (1.0 = balanced), the
percentage of token assignments dropped by capacity, and the coefficient of
variation of tokens per expert (0 = perfectly even).
"""

import math
from dataclasses import dataclass, field

import torch
from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)

SIDES = ("encoder", "decoder")


@dataclass
class LabelSmoothedCrossEntropyMoECriterionConfig(LabelSmoothedCrossEntropyCriterionConfig):
    moe_aux_loss_weight: float = field(
        default=0.01, metadata={"help": "weight of the GShard load-balancing loss (0 disables it); "
                                "optimised but logged apart as moe_aux_loss: the logged loss (and "
                                "so checkpoint_best) is the translation loss alone"}
    )


def summarize_moe_stats(moe_stats):
    """Reduce ``extra["moe_stats"]`` to (mean aux loss tensor, per-side float stats)."""
    aux_terms, logs = [], {}
    for side in SIDES:
        layers = moe_stats.get(side, []) if moe_stats else []
        if not layers:
            continue
        aux_terms.extend(s.aux_loss for s in layers)
        counts = torch.stack([s.expert_counts for s in layers])  # (layers, E)
        cv = counts.std(dim=1, unbiased=False) / counts.mean(dim=1).clamp_min(1e-9)
        logs[f"moe_{side}_aux"] = float(sum(s.aux_loss.detach() for s in layers) / len(layers))
        logs[f"moe_{side}_dropped"] = float(sum(s.dropped for s in layers))
        logs[f"moe_{side}_assigned"] = float(sum(s.assigned for s in layers))
        logs[f"moe_{side}_cv"] = float(cv.mean())
        logs[f"moe_{side}_n"] = 1
        sent = [s.a2a_sent for s in layers if s.a2a_sent is not None]  # expert parallel only
        if sent:
            logs[f"moe_{side}_a2a_sent"] = float(sum(sent))
            logs[f"moe_{side}_a2a_routed"] = float(sum(s.a2a_routed for s in layers
                                                       if s.a2a_routed is not None))
    aux = torch.stack(aux_terms).mean() if aux_terms else None
    return aux, logs


@register_criterion("label_smoothed_cross_entropy_moe", dataclass=LabelSmoothedCrossEntropyMoECriterionConfig)
class LabelSmoothedCrossEntropyMoECriterion(LabelSmoothedCrossEntropyCriterion):
    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0,
                 report_accuracy=False, moe_aux_loss_weight=0.01):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if moe_aux_loss_weight < 0:
            raise ValueError(f"--moe-aux-loss-weight must be >= 0, got {moe_aux_loss_weight}")
        self.moe_aux_loss_weight = moe_aux_loss_weight

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        aux, moe_logs = summarize_moe_stats(net_output[1].get("moe_stats"))
        objective, aux_term = loss, None
        if aux is not None and self.moe_aux_loss_weight > 0:
            aux_term = self.moe_aux_loss_weight * sample_size * aux.to(loss.dtype)
            objective = loss + aux_term
        logging_output = {
            "loss": loss.data,  # translation loss only: what checkpoint_best is chosen on
            "moe_aux_loss": aux_term.data if aux_term is not None else 0.0,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
            **moe_logs,
        }
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"] = n_correct.data
            logging_output["total"] = total.data
        return objective, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        if any("moe_aux_loss" in log for log in logging_outputs):
            aux_sum = sum(log.get("moe_aux_loss", 0) for log in logging_outputs)
            sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
            # same normalisation as fairseq's `loss`, so loss + moe_aux_loss = objective
            metrics.log_scalar("moe_aux_loss", aux_sum / max(sample_size, 1) / math.log(2),
                               sample_size, round=4)
        for side in SIDES:
            n = sum(log.get(f"moe_{side}_n", 0) for log in logging_outputs)
            if n == 0:
                continue
            aux = sum(log.get(f"moe_{side}_aux", 0) for log in logging_outputs)
            cv = sum(log.get(f"moe_{side}_cv", 0) for log in logging_outputs)
            dropped = sum(log.get(f"moe_{side}_dropped", 0) for log in logging_outputs)
            assigned = sum(log.get(f"moe_{side}_assigned", 0) for log in logging_outputs)
            metrics.log_scalar(f"moe_{side[:3]}_aux", aux / n, n, round=4)
            metrics.log_scalar(f"moe_{side[:3]}_cv", cv / n, n, round=3)
            metrics.log_scalar(f"moe_{side[:3]}_overflow_pct", 100.0 * dropped / max(assigned, 1.0),
                               assigned, round=2)
            # expert parallel: rows handed to the all-to-all / rows routed (1.0 = no padding)
            routed = sum(log.get(f"moe_{side}_a2a_routed", 0) for log in logging_outputs)
            if routed > 0:
                sent = sum(log.get(f"moe_{side}_a2a_sent", 0) for log in logging_outputs)
                metrics.log_scalar(f"moe_{side[:3]}_a2a_ratio", sent / routed, routed, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
