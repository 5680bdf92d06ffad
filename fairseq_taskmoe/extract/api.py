"""``extract()``: the Python API behind ``fairseq-taskmoe-extract``."""

import copy
import json
import os
import shutil
from typing import Dict, Iterable, List, Optional, Sequence

from fairseq_taskmoe.config import moe_config_from_args, task_names
from fairseq_taskmoe.extract import checkpoint_io as io
from fairseq_taskmoe.extract import stock
from fairseq_taskmoe.extract.subnet import check_extractable, extract_subnet
from fairseq_taskmoe.tasks.translation_multi_taskmoe import task_key

FORMATS = ("plugin", "stock")


def _pairs(task_ns) -> List[str]:
    pairs = getattr(task_ns, "lang_pairs", None) or []
    return pairs if isinstance(pairs, list) else str(pairs).split(",")


def resolve_tasks(requested: Iterable[str], target_langs: Iterable[str], task_by: str,
                  names: Sequence[str], model_pairs: Sequence[str]):
    """Gate rows (sorted) and language pairs of the requested pairs / target languages."""
    pairs = []
    for pair in requested:
        if pair.count("-") != 1:
            raise ValueError(f"--tasks takes language pairs src-tgt (e.g. en-de); got {pair!r}")
        pairs.append(pair)
    for lang in target_langs:
        matching = [p for p in model_pairs if p.split("-")[1] == lang]
        if not matching:
            raise ValueError(f"--target-langs {lang}: no trained pair into {lang!r}; trained pairs: "
                             f"{', '.join(model_pairs)}")
        pairs += matching
    if not pairs:
        raise ValueError("give --tasks (language pairs, e.g. en-de) or --target-langs")
    rows = set()
    for pair in pairs:
        src, tgt = pair.split("-")
        key = task_key(task_by, src, tgt)
        if key not in names:
            raise ValueError(f"--tasks {pair}: task {key!r} (--moe-task-by {task_by}) is unknown to "
                             f"the model; known tasks: {', '.join(names)}")
        rows.add(names.index(key))
    # Pairs of the kept tasks that the model was trained on (data for pruning).
    kept = {names[r] for r in rows}
    data_pairs = [p for p in model_pairs if task_key(task_by, *p.split("-")) in kept] or pairs
    return sorted(rows), list(dict.fromkeys(pairs)), data_pairs


def count_params(model: Dict) -> Dict[str, int]:
    """Parameters of a state dict, tied tensors counted once: total and decoder."""
    seen, total, decoder = set(), 0, 0
    for name, t in model.items():
        if name.endswith(".version") or name.endswith("_float_tensor"):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        total += t.numel()
        decoder += t.numel() if name.startswith("decoder.") else 0
    return {"total": total, "decoder": decoder}


def _experts_fraction(layers: List[dict], side: str) -> Optional[float]:
    mine = [l for l in layers if l["side"] == side]
    if not mine:
        return None
    return sum(len(l["kept"]) for l in mine) / sum(l["experts_before"] for l in mine)


def extract(checkpoint: str, tasks: Sequence[str] = (), out_dir: str = "", fmt: str = "plugin",
            force: bool = False, prune_token_experts: Optional[int] = None,
            prune_data: Optional[str] = None, prune_split: str = "valid",
            target_langs: Sequence[str] = (), data_dir: Optional[str] = None) -> dict:
    """Write a per-task sub-network of ``checkpoint`` to ``out_dir``; return extract.json's content.

    Args:
        tasks: language pairs ("en-de"); mapped to tasks by the model's --moe-task-by.
        fmt: "plugin" (transformer_taskmoe) or "stock" (fairseq transformer, one task,
            every MoE side task-routed).
        prune_token_experts: keep the N most used experts of token/sentence routed
            layers, counted on ``prune_data``/``prune_split`` (approximate).
        data_dir: where the dictionaries are (default: the checkpoint's task data).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if not out_dir:
        raise ValueError("--out is required")
    io.check_out_dir(out_dir, force)
    state = io.load_source(checkpoint)
    model_ns = io.model_args(state, checkpoint)
    task_ns = io.task_args(state) or model_ns
    moe_cfg = moe_config_from_args(model_ns)
    names = task_names(moe_cfg)
    num_layers = {"encoder": int(model_ns.encoder_layers), "decoder": int(model_ns.decoder_layers)}
    check_extractable(moe_cfg, num_layers, checkpoint)
    rows, pairs, data_pairs = resolve_tasks(tasks, target_langs, str(moe_cfg.moe_task_by), names,
                                            _pairs(task_ns))
    if fmt == "stock" and len(rows) != 1:
        raise ValueError(f"--format stock takes exactly one task (a stock transformer has no "
                         f"router); got {len(rows)}: {', '.join(names[r] for r in rows)}")

    counts = None
    if prune_token_experts is not None and prune_token_experts < int(moe_cfg.moe_top_k):
        raise ValueError(f"--prune-token-experts must be >= --moe-top-k ({moe_cfg.moe_top_k}), "
                         f"got {prune_token_experts}")
    if prune_token_experts is not None:
        from fairseq_taskmoe.extract.prune import routing_counts

        data = prune_data or io.find_data_dir(getattr(task_ns, "data", None), checkpoint)
        if not data:
            raise ValueError("--prune-token-experts needs --prune-data (the checkpoint's data dir "
                             "is not reachable)")
        counts = routing_counts(state, model_ns, task_ns, moe_cfg, data, prune_split, data_pairs)

    sub = extract_subnet(state["model"], moe_cfg, num_layers, rows, prune_token_experts, counts)
    kept_names = [names[r] for r in rows]
    layout_json = json.dumps(sub.layout, sort_keys=True)
    report = {
        "source_checkpoint": os.path.abspath(checkpoint),
        "source_sha256": io.sha256(checkpoint),
        "tasks": kept_names,
        "pairs": pairs,
        "moe_task_by": str(moe_cfg.moe_task_by),
        "format": fmt,
        "moe_layout": sub.layout,
        "layers": sub.layers,
        "params_before": count_params(state["model"]),
        "params_after": count_params(sub.state),
        "decoder_experts_kept_fraction": _experts_fraction(sub.layers, "decoder"),
        "encoder_experts_kept_fraction": _experts_fraction(sub.layers, "encoder"),
        "pruned_token_experts": prune_token_experts,
    }
    if fmt == "plugin":
        out_state = stock.plugin_state(state, sub.state, layout_json, ",".join(kept_names))
    else:
        padded, widths, overhead = stock.pad_to_common_width(sub.state, num_layers)
        out_state = stock.stock_state(state, padded, widths)
        report["params_written"] = count_params(padded)
        report["stock_overhead"] = overhead

    data = data_dir or io.find_data_dir(getattr(task_ns, "data", None), checkpoint)
    tmp = io.make_tmp_dir(out_dir)
    try:
        io.save_checkpoint(out_state, os.path.join(tmp, "checkpoint.pt"))
        report["vocab_files"] = io.copy_vocab(data, tmp) if data else []
        if not data:
            report["vocab_note"] = ("training data dir not reachable: dict.*.txt not copied (the "
                                    "checkpoint stores no vocabulary); pass --data DIR")
        with open(os.path.join(tmp, "extract.json"), "w") as f:
            json.dump(report, f, indent=2)
        io.commit_dir(tmp, out_dir, force)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return copy.deepcopy(report)
