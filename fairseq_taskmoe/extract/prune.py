"""Routing statistics for ``--prune-token-experts``: how often each expert is chosen.

Builds the full model, runs it in eval mode (dropless, as at inference) over a
data split of each of the extracted tasks' language pairs, and sums each MoE
layer's top-k assignment counts.
"""

import copy
from typing import Dict, Sequence

import torch
from torch import Tensor

from fairseq_taskmoe.config import MoEConfig, layer_plan


def _task_args(task_ns, data: str, pair: str):
    args = copy.copy(task_ns)
    all_pairs = args.lang_pairs if isinstance(args.lang_pairs, list) else args.lang_pairs.split(",")
    if not getattr(args, "langs", None):
        # fairseq builds the language-token vocabulary from --lang-pairs unless
        # --langs is set: pin the full list so one pair keeps the same vocabulary.
        args.langs = sorted({lang for p in all_pairs for lang in p.split("-")})
    args.data = data
    # One pair at a time (inference mode): fairseq's multi-pair eval splits share
    # the first pair's collater, which stamps every sentence with its language ids.
    args.source_lang, args.target_lang = pair.split("-")
    return args


def routing_counts(state: dict, model_ns, task_ns, moe_cfg: MoEConfig, data: str, split: str,
                   pairs: Sequence[str], max_tokens: int = 2000) -> Dict[str, Dict[int, Tensor]]:
    """side -> layer index -> (E,) assignment counts over ``split`` of ``pairs``."""
    from fairseq import tasks

    model = None
    counts = {"encoder": {}, "decoder": {}}
    for pair in pairs:
        task = tasks.setup_task(_task_args(task_ns, data, pair))
        if model is None:
            model = task.build_model(copy.copy(model_ns))
            model.load_state_dict(state["model"], strict=True)
            model.eval()
            layers = {side: [i for i, spec in enumerate(layer_plan(moe_cfg, side, len(getattr(model, side).layers)))
                             if spec and "experts" in spec] for side in counts}
        try:
            task.load_dataset(split)
        except FileNotFoundError as err:
            raise ValueError(f"--prune-data {data} --prune-split {split}: cannot load {pair} ({err})") from err
        itr = task.get_batch_iterator(dataset=task.dataset(split), max_tokens=max_tokens,
                                      ignore_invalid_inputs=True, num_workers=0).next_epoch_itr(shuffle=False)
        with torch.no_grad():
            for sample in itr:
                task.add_task_ids(sample)
                _, extra = model(**sample["net_input"])
                for side, stats in extra["moe_stats"].items():
                    for layer, st in zip(layers[side], stats):
                        counts[side][layer] = counts[side].get(layer, 0) + st.expert_counts.cpu()
    if not any(counts.values()):
        raise ValueError(f"--prune-data {data} --prune-split {split}: no batches for pairs {', '.join(pairs)}")
    return counts
