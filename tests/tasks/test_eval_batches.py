"""Evaluation splits keep every sentence under fairseq's --required-batch-size-multiple.

fairseq main's ``data_utils.batch_by_size`` drops the last batch when its size
is not a multiple of the requested multiple (default 8). The toy splits hold
N_EVAL = 13 sentences per pair, so a multiple of 8 loses some of them.
"""

import pytest

from taskmoe_testlib import LANG_PAIRS, N_EVAL, setup_task


def sentence_ids(task, split, multiple):
    itr = task.get_batch_iterator(task.dataset(split), max_tokens=300, epoch=1, seed=1, num_workers=0,
                                  required_batch_size_multiple=multiple)
    return [i for batch in itr.next_epoch_itr(shuffle=False) for i in batch["id"].tolist()]


def test_stock_task_drops_sentences_so_this_data_exercises_the_bug(toy_data):
    task = setup_task(toy_data, generate=["-s", "en", "-t", "de"], task="translation_multi_simple_epoch")
    task.load_dataset("test")
    assert len(sentence_ids(task, "test", 8)) < N_EVAL  # fairseq's behaviour, not ours


@pytest.mark.parametrize("split", ["test", "valid"])
def test_generate_keeps_every_sentence(toy_data, split):
    task = setup_task(toy_data, generate=["-s", "en", "-t", "de"])
    task.load_dataset(split)
    assert sorted(sentence_ids(task, split, 8)) == list(range(N_EVAL))


def test_training_validation_keeps_every_sentence_and_train_keeps_the_multiple(toy_data):
    task = setup_task(toy_data)
    n_pairs = len(LANG_PAIRS.split(","))
    task.load_dataset("valid", epoch=1)
    assert len(sentence_ids(task, "valid", 8)) == n_pairs * N_EVAL
    task.load_dataset("train", epoch=1)
    itr = task.get_batch_iterator(task.dataset("train"), max_tokens=300, epoch=1, seed=1,
                                  num_workers=0, required_batch_size_multiple=8)
    sizes = [len(b["id"]) for b in itr.next_epoch_itr(shuffle=False)]
    assert sizes and all(n % 8 == 0 for n in sizes)  # training batches: fairseq's setting is kept
