"""Helpers for the extraction tests (a unique module name; fixtures live in conftest.py)."""

import torch
from fairseq import checkpoint_utils


def load(path, data, pair=None):
    """(model, task) of a checkpoint; with ``pair`` ("en-de") the task is set to that one pair.

    Loading one pair matters: fairseq's multilingual test split concatenates the
    pairs behind a shared collater that stamps every sentence with the first
    pair's language ids, so task ids of mixed batches are wrong (see docs/EXTRACT.md).
    """
    overrides = {"data": str(data)}
    if pair:
        overrides["source_lang"], overrides["target_lang"] = pair.split("-")
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides=overrides)
    return models[0].float().eval(), task


def pair_batches(task, split="test"):
    """Batches of ``split`` of the task's single pair (``task_ids`` stamped by the task's collater)."""
    task.load_dataset(split)
    itr = task.get_batch_iterator(dataset=task.dataset(split), max_tokens=4000,
                                  num_workers=0).next_epoch_itr(shuffle=False)
    for sample in itr:
        yield sample["net_input"]


def decoder_logits(model, net_input, task_ids=None):
    """(B, T, V) logits; ``task_ids`` replaces the batch's ids (None: drop them, stock model)."""
    inputs = {k: net_input[k] for k in ("src_tokens", "src_lengths", "prev_output_tokens")}
    if task_ids is not None:
        inputs["task_ids"] = torch.full_like(net_input["task_ids"], task_ids)
    with torch.no_grad():
        return model(**inputs)[0]
