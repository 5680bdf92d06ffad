"""Turn a full ``transformer_taskmoe`` state dict into a per-task sub-network.

Works on the state dict only (no model is built), one MoE layer at a time:
- task-routed layer, one task: fuse its top-k experts into one dense FFN of
  width K*F (``{"ffn_dim": K*F}``), exact;
- task-routed layer, several tasks: keep the union of their experts, task gate
  restricted to those tasks (rows) and experts (columns) (``{"experts": n}``),
  exact for k=2;
- token / sentence routed layer: all experts kept (exact), or the N most used
  ones with ``prune`` (approximate).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from torch import Tensor

from fairseq_taskmoe.config import SIDES, MoESettings
from fairseq_taskmoe.extract import fuse


@dataclass
class SubnetResult:
    state: Dict[str, Tensor]  # new model state dict
    layout: Dict[str, Dict[str, dict]]  # --moe-layout of the sub-network
    layers: List[dict] = field(default_factory=list)  # one report entry per MoE layer


def moe_layers(cfg: MoESettings, num_layers: Dict[str, int]):
    """(side, layer index, expert count) of every MoE layer of the model."""
    for side in SIDES:
        for i, spec in enumerate(cfg.layer_plan(side, num_layers[side])):
            if spec is not None and "experts" in spec:
                yield side, i, int(spec["experts"])


def check_extractable(cfg: MoESettings, num_layers: Dict[str, int], checkpoint: str):
    """Refuse models whose MoE layers are all token/sentence routed."""
    routed = {cfg.routing(side) for side, _, _ in moe_layers(cfg, num_layers)}
    if "task" not in routed:
        raise ValueError(
            f"{checkpoint}: no task-routed MoE layer (--moe-encoder-routing "
            f"{cfg.encoder_routing}, --moe-decoder-routing {cfg.decoder_routing}); "
            "only task routing gives a per-task sub-network (train with --moe-decoder-routing task)")


def _pop_prefix(state: Dict[str, Tensor], prefix: str) -> Dict[str, Tensor]:
    """Remove and return the entries under ``prefix`` (prefix stripped)."""
    keys = [k for k in state if k.startswith(prefix)]
    return {k[len(prefix):]: state.pop(k) for k in keys}


def _task_layer(state, prefix, tasks: Sequence[int], top_k: int, report: dict):
    moe = _pop_prefix(state, prefix + "moe.")
    experts = {k: moe["experts." + k] for k in fuse.EXPERT_KEYS}
    gate = moe["router.task_gate.weight"]  # (N, E)
    choices = [fuse.task_choice(gate, t, top_k) for t in tasks]
    report["per_task"] = [{"experts": idx, "weights": [round(w, 6) for w in ws]}
                          for idx, ws in choices]
    if len(tasks) == 1:
        idx, weights = choices[0]
        for name, tensor in fuse.fuse_experts(experts, idx, weights).items():
            state[prefix + name] = tensor
        report["kept"] = sorted(idx)
        return {"ffn_dim": int(experts["fc1_weight"].size(1)) * len(idx)}
    keep = fuse.expert_union([idx for idx, _ in choices])
    for name, tensor in fuse.slice_experts(experts, keep).items():
        state[prefix + "moe.experts." + name] = tensor
    state[prefix + "moe.router.task_gate.weight"] = fuse.restrict_task_gate(gate, tasks, keep)
    report["kept"] = keep
    return {"experts": len(keep)}


def _routed_layer(state, prefix, num_experts: int, counts: Optional[Tensor], prune: Optional[int],
                  report: dict):
    if prune is None or prune >= num_experts:
        report["kept"] = list(range(num_experts))
        return {"experts": num_experts}
    keep = fuse.top_used(counts, prune)
    report["kept"] = keep
    report["routing_counts"] = [int(c) for c in counts.tolist()]
    moe = _pop_prefix(state, prefix + "moe.")
    experts = {k: moe.pop("experts." + k) for k in fuse.EXPERT_KEYS}
    for name, tensor in fuse.slice_experts(experts, keep).items():
        state[prefix + "moe.experts." + name] = tensor
    moe["router.wg.weight"] = fuse.restrict_token_gate(moe["router.wg.weight"], keep)
    for name, tensor in moe.items():  # router (and pool_proj) weights
        state[prefix + "moe." + name] = tensor
    return {"experts": len(keep)}


def extract_subnet(state: Dict[str, Tensor], cfg: MoESettings, num_layers: Dict[str, int],
                   tasks: Sequence[int], prune: Optional[int] = None,
                   routing_counts: Optional[Dict[str, Dict[int, Tensor]]] = None) -> SubnetResult:
    """Sub-network of the model for the task indices ``tasks`` (gate row order).

    Args:
        state: the full model state dict (not modified).
        num_layers: {"encoder": layers, "decoder": layers}.
        prune: keep this many experts in token/sentence routed layers.
        routing_counts: side -> layer -> (E,) top-k assignment counts, needed with prune.
    """
    top_k = cfg.top_k
    if len(tasks) > 1 and top_k == 1:
        # k=1 weights are gate probabilities: dropping columns changes the
        # softmax normaliser, so a multi-task gate would not be exact.
        raise ValueError("several --tasks need a --moe-top-k 2 model (with top-1 the combine "
                         "weight is the gate probability, which a restricted gate changes); "
                         "extract one task at a time")
    if prune is not None and prune < top_k:
        raise ValueError(f"--prune-token-experts must be >= --moe-top-k ({top_k}), got {prune}")
    new = dict(state)
    layout = {side: {} for side in SIDES}
    reports = []
    for side in SIDES:
        routing = cfg.routing(side)
        for i, spec in enumerate(cfg.layer_plan(side, num_layers[side])):
            if spec is None:
                continue
            if "ffn_dim" in spec:  # already a fused dense layer (re-extraction)
                layout[side][str(i)] = dict(spec)
                continue
            prefix = f"{side}.layers.{i}."
            report = {"side": side, "layer": i, "routing": routing, "experts_before": spec["experts"]}
            if routing == "task":
                result = _task_layer(new, prefix, tasks, top_k, report)
            else:
                counts = (routing_counts or {}).get(side, {}).get(i)
                if prune is not None and counts is None:
                    raise ValueError(f"--prune-token-experts: no routing statistics for {side} layer {i}")
                result = _routed_layer(new, prefix, spec["experts"], counts, prune, report)
            report["result"] = result
            layout[side][str(i)] = result
            reports.append(report)
    return SubnetResult(new, {s: v for s, v in layout.items()}, reports)


def dense_widths(state: Dict[str, Tensor], side: str, num_layers: int) -> List[Optional[int]]:
    """FFN width of each layer of ``side``; None for an MoE layer."""
    widths = []
    for i in range(num_layers):
        w = state.get(f"{side}.layers.{i}.fc1.weight")
        widths.append(None if w is None else int(w.size(0)))
    return widths
