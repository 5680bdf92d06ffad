"""Routing statistics: run a model over one language pair's split, count expert assignments.

One helper for ``--prune-token-experts`` (extract/prune.py) and
``fairseq-taskmoe-routing`` (routing.py): the model is built from a state
already loaded by :func:`fairseq_taskmoe.checkpoints.load_source` (safe load,
shard sets merged, shapes checked), never re-read through fairseq's loader.
Legend: E experts of a layer.
"""

import copy
import os
from typing import Dict, List, Sequence

import torch

from fairseq_taskmoe.checkpoints import lang_pairs


def check_pairs(pairs: Sequence[str], known: Sequence[str], flag: str) -> List[str]:
    """``pairs`` as src-tgt strings the model was trained on; a clear error otherwise."""
    out = []
    for pair in pairs:
        if pair.count("-") != 1 or not all(pair.split("-")):
            raise ValueError(f"{flag}: {pair!r} is not a language pair src-tgt (e.g. en-de)")
        unknown = [l for l in pair.split("-") if known and l not in {x for k in known for x in k.split("-")}]
        if unknown:
            raise ValueError(f"{flag}: {pair}: language {unknown[0]!r} is unknown to the model; trained "
                             f"pairs: {', '.join(known)}")
        out.append(pair)
    if not out:
        raise ValueError(f"{flag}: no language pair given (e.g. en-de); trained pairs: {', '.join(known)}")
    return out


def pair_task_args(task_ns, data: str, pair: str):
    """The checkpoint's task args narrowed to one pair (inference mode) and pointed at ``data``."""
    args = copy.copy(task_ns)
    if not getattr(args, "langs", None):
        # fairseq builds the language-token vocabulary from --lang-pairs unless
        # --langs is set: pin the full list so one pair keeps the same vocabulary.
        args.langs = sorted({lang for p in lang_pairs(task_ns) for lang in p.split("-")})
    args.data = data
    args.source_lang, args.target_lang = pair.split("-")
    return args


def check_data_dir(data: str, flag: str):
    if not data or not os.path.isdir(data):
        raise FileNotFoundError(f"{flag} {data}: no such directory (the binarized data dir)")


def setup_pair(state: dict, model_ns, task_ns, data: str, pair: str, model=None):
    """(fairseq task for ``pair``, model): the model is built and loaded once, then reused."""
    from fairseq import tasks

    task = tasks.setup_task(pair_task_args(task_ns, data, pair))
    if model is None:
        model = task.build_model(copy.copy(model_ns))
        model.load_state_dict(state["model"], strict=True)
        model = model.float().eval()
    else:
        # The task learns the gate's task list in build_model; without it its collater stamps
        # no task ids. Reusing the first pair's model, give this pair's task the same list.
        task.moe_task_by = model.moe_cfg.task_by
        task.moe_task_names = list(model.moe_cfg.task_names)
    return task, model


def moe_layer_ids(model, side: str) -> List[int]:
    """Indices of the layers of ``side`` whose FFN is an MoE block, in forward order."""
    from fairseq_taskmoe.moe.layer import MoELayer

    layers = getattr(model, side).layers
    return [i for i, layer in enumerate(layers) if any(isinstance(m, MoELayer) for m in layer.modules())]


def expert_counts(task, model, split: str, flag: str, max_sentences: int = 0,
                  max_tokens: int = 4000) -> (Dict[str, Dict[int, torch.Tensor]], int):
    """side -> layer index -> (E,) top-k assignment counts over the task's ``split``; sentences seen.

    Eval mode (dropless, as at inference), teacher forcing, ``task_ids`` as the task's
    collater stamps them.
    """
    from fairseq_taskmoe.data.binarize import pair_file

    src, tgt = task.args.source_lang, task.args.target_lang
    pair, data = f"{src}-{tgt}", str(task.args.data).split(os.pathsep)[0]
    try:  # fairseq answers a missing split with a KeyError deep in its data manager
        pair_file(data, split, src, tgt, src)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{flag} {split}: no binarized {split} split of {pair} in {data} "
                                f"(expected {split}.{src}-{tgt}.{src}.idx or {split}.{tgt}-{src}.{src}.idx)") from err
    try:
        task.load_dataset(split)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{flag} {split}: no {split} split of {pair} in {task.args.data} "
                                f"({' '.join(str(err).split())})") from err
    itr = task.get_batch_iterator(dataset=task.dataset(split), max_tokens=max_tokens,
                                  ignore_invalid_inputs=True, num_workers=0).next_epoch_itr(shuffle=False)
    layers = {side: moe_layer_ids(model, side) for side in ("encoder", "decoder")}
    counts = {"encoder": {}, "decoder": {}}
    seen = 0
    with torch.no_grad():
        for sample in itr:
            if max_sentences and seen >= max_sentences:
                break
            net = sample["net_input"]
            _, extra = model(net["src_tokens"], net["src_lengths"], net["prev_output_tokens"],
                             task_ids=net.get("task_ids"), features_only=True)
            for side, stats in extra["moe_stats"].items():
                for layer, st in zip(layers[side], stats):
                    counts[side][layer] = counts[side].get(layer, 0) + st.expert_counts.double().cpu()
            seen += net["src_tokens"].size(0)
    if not seen:
        raise ValueError(f"{flag} {split}: the {split} split of {pair} in {task.args.data} has no sentences")
    return counts, seen
