"""Task ids of mixed-pair batches: every sentence gets its own pair's task."""

import pytest
import torch

from taskmoe_testlib import setup_task


def build_task(data, task_by):
    return setup_task(data, extra=["--moe-task-by", task_by, "--sampling-method", "temperature",
                                   "--sampling-temperature", "1.5"])


@pytest.mark.parametrize("task_by", ["target_lang", "lang_pair", "source_lang"])
@pytest.mark.parametrize("split", ["train", "valid"])
def test_mixed_batches_get_per_sentence_task_ids(toy_data, task_by, split):
    task = build_task(toy_data, task_by)
    task.load_dataset(split, epoch=1)
    itr = task.get_batch_iterator(task.dataset(split), max_tokens=300, epoch=1, seed=1,
                                  num_workers=0).next_epoch_itr(shuffle=True)
    dict_ = task.target_dictionary
    mixed = 0
    for sample in itr:
        task.add_task_ids(sample)
        ids = sample["net_input"]["task_ids"]
        # ground truth from the language tokens fairseq put in the batch
        src = sample["net_input"]["src_tokens"]
        first = src.ne(dict_.pad()).long().argmax(1)  # left-padded: the source langtok comes first
        src_lang = [dict_[t][2:-2] for t in src[torch.arange(src.size(0)), first].tolist()]
        # prev_output_tokens = [eos, __tgt__, ...]
        tgt_lang = [dict_[t][2:-2] for t in sample["net_input"]["prev_output_tokens"][:, 1].tolist()]
        for i, (s, t) in enumerate(zip(src_lang, tgt_lang)):
            expected = {"target_lang": t, "source_lang": s, "lang_pair": f"{s}-{t}"}[task_by]
            assert task.moe_task_names[ids[i]] == expected
        mixed += len(set(ids.tolist())) > 1
    assert mixed > 0, "no batch mixed several tasks: the test would not catch a wrong collater"
