"""Checkpoint states for the two output formats.

- plugin: a ``transformer_taskmoe`` checkpoint, cfg as training wrote it
  (``argparse.Namespace`` model/task args, which the plugin allowlists), with
  the sub-network's ``moe_layout`` and ``moe_task_names``.
- stock: a fairseq ``transformer`` checkpoint for ``translation_multi_simple_epoch``.
  Stock fairseq on torch >= 2.6 loads with ``weights_only=True`` and, without
  the plugin, refuses ``argparse.Namespace``; so every cfg group is a plain
  dict (``_name`` says the model / task), which ``load_checkpoint_to_cpu``
  turns into an OmegaConf config. A stock transformer has one FFN width per
  side, so narrower dense layers are zero-padded to the fused width (exact).
"""

import argparse
import copy
from collections import OrderedDict
from typing import Dict, Optional

import torch
from torch import Tensor

from fairseq_taskmoe.extract import fuse
from fairseq_taskmoe.extract.subnet import SIDES, dense_widths
from fairseq_taskmoe.tasks.checkpoint_flags import SERVED_KEY

PLAIN_TYPES = (str, int, float, bool, type(None), Tensor)
STOCK_TASK = "translation_multi_simple_epoch"


def _deployable_meta(state: dict) -> dict:
    """Training-only entries dropped: optimizer state and logged metrics."""
    out = {k: v for k, v in state.items() if k not in ("last_optimizer_state", "model", "cfg")}
    extra = dict(state.get("extra_state") or {})
    extra.pop("metrics", None)
    extra.setdefault("train_iterator", {"epoch": 1})
    out["extra_state"] = extra
    return out


def plugin_state(state: dict, model: Dict[str, Tensor], layout_json: str, task_names_csv: str) -> dict:
    """The plugin-format checkpoint: same cfg, new layout / task list / weights."""
    out = _deployable_meta(state)
    cfg = dict(state["cfg"])
    for group in ("model", "task"):
        if isinstance(cfg.get(group), argparse.Namespace):
            ns = copy.copy(cfg[group])
            ns.moe_layout = layout_json
            ns.moe_task_names = task_names_csv
            cfg[group] = ns
    out["cfg"] = cfg
    out["model"] = model
    return out


def pad_to_common_width(model: Dict[str, Tensor], num_layers: Dict[str, int], fmt: str = "stock"):
    """Zero-pad every dense FFN of a side to that side's widest one (``fmt`` names the format in errors).

    Returns:
        new state dict, {side: width}, and the overhead report.
    """
    new = dict(model)
    widths, report = {}, {}
    real_ffn = padded_ffn = 0
    for side in SIDES:
        layer_widths = dense_widths(model, side, num_layers[side])
        if any(w is None for w in layer_widths):
            moe = [i for i, w in enumerate(layer_widths) if w is None]
            engine = "CTranslate2" if fmt == "ctranslate2" else "stock fairseq"
            raise ValueError(
                f"--format {fmt}: {side} layers {moe} are still MoE layers (token or sentence "
                f"routed); {engine} has no MoE layer. What works: --format plugin (served by "
                f"fairseq_taskmoe.serve.from_pretrained or fairseq-taskmoe-translate), or a model "
                f"trained with --moe-{side}-routing task (tasks by --moe-task-by target_lang or "
                f"lang_pair) or none (dense {side})")
        if not layer_widths:
            continue
        width = max(layer_widths)
        widths[side] = width
        for i, w in enumerate(layer_widths):
            if w < width:
                prefix = f"{side}.layers.{i}."
                ffn = {k: model[prefix + k] for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")}
                for k, v in fuse.pad_dense_ffn(ffn, width).items():
                    new[prefix + k] = v
        embed = model[f"{side}.layers.0.fc1.weight"].size(1)
        # FFN multiply-adds per token: two (D x width) matmuls per layer.
        real_ffn += sum(2 * embed * w for w in layer_widths)
        padded_ffn += 2 * embed * width * len(layer_widths)
        report[side] = {"ffn_width": width, "layer_widths_before_padding": layer_widths,
                        "zero_params_added": sum((2 * embed + 1) * (width - w) for w in layer_widths)}
    report["ffn_flops_overhead_pct"] = round(100.0 * (padded_ffn - real_ffn) / max(real_ffn, 1), 2)
    return new, widths, report


def _plain(obj):
    """``obj`` with every Namespace turned into a dict (recursively)."""
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def assert_plain(obj, where="checkpoint"):
    """Raise unless ``obj`` holds only types stock fairseq's weights_only loader accepts."""
    if isinstance(obj, (dict, OrderedDict)):
        for k, v in obj.items():
            assert_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            assert_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, PLAIN_TYPES):
        raise TypeError(f"{where} is a {type(obj).__name__}, which stock fairseq cannot load safely")


def _strip_moe(group: dict) -> dict:
    return {k: v for k, v in group.items() if not k.startswith("moe_")}


def stock_state(state: dict, model: Dict[str, Tensor], widths: Dict[str, int],
                served: Optional[dict] = None) -> dict:
    """A plain-typed fairseq ``transformer`` checkpoint for ``translation_multi_simple_epoch``.

    ``served``: ``{"tasks", "moe_task_by", "pairs"}`` of the extract, stored under
    ``SERVED_KEY`` so that the plugin's task and translators refuse other pairs (a stock
    transformer has no task gate to do it; stock fairseq ignores the key).
    """
    out = _plain(_deployable_meta(state))
    cfg = _plain(state["cfg"])
    # argparse-era groups each hold every training flag, so the model group names the task and
    # the task group the FFN widths: both must describe the stock model (the CTranslate2 converter
    # builds the task and model from the model group alone).
    stock_names = dict(arch="transformer", task=STOCK_TASK, user_dir=None)
    model_cfg = _strip_moe(cfg["model"])
    model_cfg.update(_name="transformer", **stock_names)
    task_cfg = _strip_moe(cfg["task"])
    task_cfg.update(_name=STOCK_TASK, **stock_names)
    for group in (model_cfg, task_cfg):
        for side, width in widths.items():
            group[f"{side}_ffn_embed_dim"] = width
        if isinstance(group.get("lang_pairs"), str):  # fairseq's type for --lang-pairs is a list
            group["lang_pairs"] = group["lang_pairs"].split(",")
        if str(group.get("criterion", "")).endswith("_moe"):
            group["criterion"] = "label_smoothed_cross_entropy"
    cfg["model"], cfg["task"] = model_cfg, task_cfg
    cfg["common"] = dict(cfg.get("common") or {}, user_dir=None)
    criterion = _strip_moe(cfg.get("criterion") or {})
    if str(criterion.get("_name", "")).endswith("_moe"):
        criterion["_name"] = "label_smoothed_cross_entropy"
    cfg["criterion"] = criterion
    out["cfg"] = cfg
    out["args"] = None
    for hist in out.get("optimizer_history") or []:
        if "MoE" in str(hist.get("criterion_name", "")):
            hist["criterion_name"] = "LabelSmoothedCrossEntropyCriterion"
    out["model"] = model
    if served is not None:
        out[SERVED_KEY] = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in served.items()}
    assert_plain(out)
    return out
