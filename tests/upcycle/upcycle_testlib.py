"""Helpers for the upcycling tests (a unique module name; fixtures live in conftest.py)."""

import torch
from fairseq import checkpoint_utils

ML_PAIRS = "en-de,de-en,en-fr"  # tasks under --moe-task-by target_lang: de, en, fr
ATOL = 1e-5


def load(path, data, pair):
    """(model, task) of a checkpoint through fairseq's own loader, set up for one pair."""
    src, tgt = pair.split("-")
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(path)], arg_overrides={"data": str(data), "source_lang": src, "target_lang": tgt})
    return models[0].float().eval(), task


def split_batches(task, split="test"):
    """Batches of the task's pair (task ids stamped by the task's collater, where it has them)."""
    task.load_dataset(split)
    itr = task.get_batch_iterator(dataset=task.dataset(split), max_tokens=4000, num_workers=0)
    return list(itr.next_epoch_itr(shuffle=False))


def log_probs(model, sample):
    """(B, T, V) log-probabilities of the teacher-forced reference."""
    net = sample["net_input"]
    inputs = {k: net[k] for k in ("src_tokens", "src_lengths", "prev_output_tokens")}
    if "task_ids" in net and type(model).__name__ == "TransformerTaskMoEModel":
        inputs["task_ids"] = net["task_ids"]
    with torch.no_grad():
        return model.get_normalized_probs(model(**inputs), log_probs=True)


def max_logprob_diff(dense_path, upcycled_path, data, pair):
    """Largest |log p_dense - log p_upcycled| over the real target tokens of ``pair``'s test split."""
    dense, _ = load(dense_path, data, pair)
    upcycled, task = load(upcycled_path, data, pair)
    worst, tokens = 0.0, 0
    for sample in split_batches(task):
        real = sample["target"].ne(task.target_dictionary.pad())  # (B, T)
        diff = (log_probs(dense, sample) - log_probs(upcycled, sample)).abs()[real]
        worst, tokens = max(worst, float(diff.max())), tokens + int(real.sum())
    assert tokens > 0
    return worst
