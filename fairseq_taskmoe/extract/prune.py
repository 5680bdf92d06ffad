"""Routing statistics for ``--prune-token-experts``: how often each expert is chosen.

Builds the full model once, runs it in eval mode (dropless, as at inference)
over a data split of each of the extracted tasks' language pairs (one pair at a
time), and sums each MoE layer's top-k assignment counts; the counting itself is
:func:`fairseq_taskmoe.analysis.stats.expert_counts`, shared with
``fairseq-taskmoe-routing``.
"""

from typing import Dict, Sequence

from torch import Tensor

from fairseq_taskmoe.analysis.stats import expert_counts, setup_pair


def routing_counts(state: dict, model_ns, task_ns, data: str, split: str,
                   pairs: Sequence[str]) -> Dict[str, Dict[int, Tensor]]:
    """side -> layer index -> (E,) assignment counts over ``split`` of ``pairs``."""
    model = None
    total = {"encoder": {}, "decoder": {}}
    for pair in pairs:
        task, model = setup_pair(state, model_ns, task_ns, data, pair, model)
        counts, _ = expert_counts(task, model, split, "--prune-split", max_tokens=2000)
        for side, layers in counts.items():
            for layer, c in layers.items():
                total[side][layer] = total[side].get(layer, 0) + c
    return total
