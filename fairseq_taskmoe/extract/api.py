"""``extract()``: the Python API behind ``fairseq-taskmoe-extract``."""

import copy
import json
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence

from fairseq_taskmoe.checkpoints import (
    atomic_dir, atomic_torch_save, atomic_write_json, atomic_write_text, lang_pairs, load_source, model_args, sha256,
    task_args,
)
from fairseq_taskmoe.checkpoints.validate import check_moe_state
from fairseq_taskmoe.extract import all_tasks, outdir, readme, stock
from fairseq_taskmoe.extract.subnet import check_extractable, extract_subnet
from fairseq_taskmoe.serve import ctranslate2_export as ct2_export
from fairseq_taskmoe.tasks.checkpoint_flags import language_list, task_group
from fairseq_taskmoe.tasks.translation_multi_taskmoe import task_key

FORMATS = ("plugin", "stock", "ctranslate2", "argos")

logger = logging.getLogger("fairseq_taskmoe.extract")


def resolve_tasks(requested: Iterable[str], target_langs: Iterable[str], task_by: str,
                  names: Sequence[str], model_pairs: Sequence[str]):
    """Gate rows (sorted) and language pairs of the requested pairs / target languages."""
    pairs = []
    for pair in requested:
        if pair.count("-") != 1 or not all(pair.split("-")):
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


def check_prune(n: int, moe_cfg, num_layers: Dict[str, int]):
    """``--prune-token-experts N`` must remove something: top-k <= N < experts of a routed layer."""
    from fairseq_taskmoe.extract.subnet import moe_layers

    top_k = moe_cfg.top_k
    if n < top_k:
        raise ValueError(f"--prune-token-experts must be >= --moe-top-k ({top_k}), got {n}")
    routed = [e for side, _, e in moe_layers(moe_cfg, num_layers) if moe_cfg.routing(side) != "task"]
    if not routed:
        raise ValueError("--prune-token-experts: the model has no token- or sentence-routed MoE layer "
                         "(task-routed layers are extracted exactly); leave the flag out")
    if n >= max(routed):
        raise ValueError(f"--prune-token-experts {n}: the token/sentence-routed layers have at most "
                         f"{max(routed)} experts, so nothing would be pruned; valid: {top_k} to "
                         f"{max(routed) - 1}")


def _experts_fraction(layers: List[dict], side: str) -> Optional[float]:
    mine = [l for l in layers if l["side"] == side]
    if not mine:
        return None
    return sum(len(l["kept"]) for l in mine) / sum(l["experts_before"] for l in mine)


def extract(checkpoint: str, tasks: Sequence[str] = (), out_dir: str = "", fmt: str = "plugin",
            force: bool = False, prune_token_experts: Optional[int] = None,
            prune_data: Optional[str] = None, prune_split: str = "valid",
            target_langs: Sequence[str] = (), data_dir: Optional[str] = None,
            quantization: Optional[str] = None, log=logger.warning, copy_vocab: bool = True,
            scores: Optional[str] = None) -> dict:
    """Write a per-task sub-network of ``checkpoint`` to ``out_dir``; return extract.json's content.

    Args:
        tasks: language pairs ("en-de"); mapped to tasks by the model's --moe-task-by.
        fmt: "plugin" (transformer_taskmoe) or "stock" (fairseq transformer, one task,
            every MoE side task-routed) or "ctranslate2" (that stock model converted by
            CTranslate2's fairseq converter, ``quantization`` weights; see docs/SERVING.md).
        prune_token_experts: keep the N most used experts of token/sentence routed
            layers, counted on ``prune_data``/``prune_split`` (approximate).
        data_dir: where the dictionaries are copied from (default: the checkpoint's own
            directory; the checkpoint's recorded data dir is never followed).
        prune_data: data dir for the routing statistics (default: ``data_dir``).
        force: replace ``out_dir`` if it is an earlier extract (never anything else).
        log: called with each note about leftovers of an interrupted earlier run.
        copy_vocab: write dict.*.txt / spm.model into ``out_dir`` (``--tasks all`` writes
            them once for formats that allow it).
        scores: ``--format argos``: fairseq-taskmoe-evaluate's JSON, quoted in the READMEs.

    ``tasks == ["all"]``: one extract per task under ``out_dir`` (``all_tasks.py``);
    ``fmt == "argos"``: one Argos Translate package per pair (``argos.py``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    multi = dict(force=force, prune_token_experts=prune_token_experts, prune_data=prune_data,
                 target_langs=target_langs, data_dir=data_dir, quantization=quantization, log=log)
    if fmt == "argos":
        from fairseq_taskmoe.extract.argos import extract_argos

        return extract_argos(checkpoint, tasks, out_dir, scores=scores, **multi)
    if scores:
        raise ValueError(f"--scores is for --format argos (got --format {fmt})")
    if all_tasks.wants_all(tasks):
        return all_tasks.extract_all(checkpoint, out_dir, fmt, prune_split=prune_split, **multi)
    if fmt == "ctranslate2":
        quantization = ct2_export.check_quantization(quantization)
    elif quantization:
        raise ValueError(f"--quantization is for --format ctranslate2 (got --format {fmt})")
    prune_data = prune_data or (data_dir if prune_token_experts is not None else None)
    for flag, path in (("--data", data_dir), ("--prune-data", prune_data)):
        if path and not os.path.isdir(path):
            raise FileNotFoundError(f"{flag} {path}: no such directory")
    outdir.check_out_dir(out_dir, force, [checkpoint, data_dir, prune_data], log)
    state = load_source(checkpoint)
    model_ns = model_args(state, checkpoint)
    task_ns = task_args(state) or model_ns
    moe_cfg, num_layers = check_moe_state(state, model_ns, checkpoint)
    names = list(moe_cfg.task_names)
    check_extractable(moe_cfg, num_layers, checkpoint)
    rows, pairs, data_pairs = resolve_tasks(tasks, target_langs, moe_cfg.task_by, names,
                                            lang_pairs(task_ns))
    if fmt != "plugin" and len(rows) != 1:
        raise ValueError(f"--format {fmt} takes exactly one task (a stock transformer has no "
                         f"router); got {len(rows)}: {', '.join(names[r] for r in rows)}")
    vocab = outdir.vocab_dir(data_dir, checkpoint, getattr(task_ns, "data", None))
    outdir.check_langs(vocab, sorted({lang for p in pairs for lang in p.split("-")}),
                       "--data" if data_dir else "the checkpoint's directory")

    counts = None
    if prune_token_experts is not None:
        from fairseq_taskmoe.extract.prune import routing_counts

        check_prune(prune_token_experts, moe_cfg, num_layers)
        if not prune_data:
            raise ValueError("--prune-token-experts needs --prune-data DIR (or --data DIR): the "
                             "binarized data whose routing decides which experts stay")
        counts = routing_counts(state, model_ns, task_ns, prune_data, prune_split, data_pairs)

    sub = extract_subnet(state["model"], moe_cfg, num_layers, rows, prune_token_experts, counts)
    kept_names = [names[r] for r in rows]
    layout_json = json.dumps(sub.layout, sort_keys=True)
    langs = language_list(task_group(state) or task_ns)
    langtoks = {"encoder_langtok": getattr(task_ns, "encoder_langtok", None),
                "decoder_langtok": bool(getattr(task_ns, "decoder_langtok", False))}
    report = {
        "source_checkpoint": os.path.abspath(checkpoint),
        "source_sha256": sha256(checkpoint),
        "tasks": kept_names,
        "pairs": pairs,
        "langs": langs,
        "moe_task_by": moe_cfg.task_by,
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
        padded, widths, overhead = stock.pad_to_common_width(sub.state, num_layers, fmt)
        out_state = stock.stock_state(state, padded, widths, served={
            "tasks": kept_names, "moe_task_by": moe_cfg.task_by, "pairs": pairs})
        report["params_written"] = count_params(padded)
        report["stock_overhead"] = overhead

    report["vocab_dir"] = vocab
    with atomic_dir(out_dir, replace=force) as tmp:
        if fmt == "ctranslate2":
            report["ctranslate2"] = ct2_export.convert(out_state, tmp, vocab, pairs, quantization,
                                                       stock_overhead=overhead)
        else:
            atomic_torch_save(out_state, os.path.join(tmp, "checkpoint.pt"))
        report["vocab_files"] = outdir.copy_vocab(vocab, tmp) if copy_vocab else []
        # --tasks all writes the vocabulary once, in the parent of this extract.
        has_spm = os.path.isfile(os.path.join(vocab, "spm.model")) if vocab else False
        # What stock fairseq / plain CTranslate2 need to decode it, and how (readme.py).
        atomic_write_text(os.path.join(tmp, "README.md"),
                          readme.render(report, langs, langtoks, has_spm))
        if langs:
            atomic_write_text(os.path.join(tmp, "langs.txt"), readme.langs_txt(langs))
        atomic_write_text(os.path.join(tmp, "lang_pairs.txt"), readme.lang_pairs_txt(pairs))
        atomic_write_json(os.path.join(tmp, outdir.MARKER), report, indent=2)
        outdir.check_out_dir(out_dir, force, [checkpoint, data_dir, prune_data])  # still safe to replace
    return copy.deepcopy(report)
