"""Task ids of mixed-pair batches: every sentence gets its own pair's task, stamped by the
collater of the task's datasets (nobody calls ``add_task_ids``)."""

import pytest
import torch

from fairseq_taskmoe.tasks.task_id_dataset import TaskIdDataset
from taskmoe_testlib import setup_task


def build_task(data, task_by, extra=()):
    return setup_task(data, extra=["--moe-task-by", task_by, "--sampling-method", "temperature",
                                   "--sampling-temperature", "1.5", *extra])


def batches(task, split, num_workers=0):
    itr = task.get_batch_iterator(task.dataset(split), max_tokens=300, epoch=1, seed=1,
                                  num_workers=num_workers)
    return itr.next_epoch_itr(shuffle=True)


def expected_tasks(task, sample, task_by):
    """Each sentence's task, read from the language tokens fairseq put in the batch."""
    dict_ = task.target_dictionary
    src = sample["net_input"]["src_tokens"]
    first = src.ne(dict_.pad()).long().argmax(1)  # left-padded: the source langtok comes first
    src_lang = [dict_[t][2:-2] for t in src[torch.arange(src.size(0)), first].tolist()]
    # prev_output_tokens = [eos, __tgt__, ...]
    tgt_lang = [dict_[t][2:-2] for t in sample["net_input"]["prev_output_tokens"][:, 1].tolist()]
    return [{"target_lang": t, "source_lang": s, "lang_pair": f"{s}-{t}"}[task_by]
            for s, t in zip(src_lang, tgt_lang)]


def assert_batches_carry_task_ids(task, split, task_by, num_workers=0):
    mixed = 0
    for sample in batches(task, split, num_workers):
        ids = sample["net_input"]["task_ids"]  # (B,), from the collater alone
        assert ids.dtype == torch.long and ids.shape == sample["id"].shape
        assert [task.moe_task_names[i] for i in ids.tolist()] == expected_tasks(task, sample, task_by)
        mixed += len(set(ids.tolist())) > 1
    assert mixed > 0, "no batch mixed several tasks: the test would not catch a wrong collater"


@pytest.mark.parametrize("task_by", ["target_lang", "lang_pair", "source_lang"])
@pytest.mark.parametrize("split", ["train", "valid"])
def test_mixed_batches_get_per_sentence_task_ids(toy_data, task_by, split):
    task = build_task(toy_data, task_by)
    task.load_dataset(split, epoch=1)
    assert isinstance(task.dataset(split), TaskIdDataset)
    assert_batches_carry_task_ids(task, split, task_by)


def test_sampled_epoch_dataset_in_a_dataloader_worker(toy_data):
    # --virtual-epoch-size: fairseq's SampledMultiEpochDataset; the collater runs in a worker.
    task = build_task(toy_data, "lang_pair", extra=["--virtual-epoch-size", "300"])
    task.load_dataset("train", epoch=1)
    dataset = task.dataset("train")
    assert type(dataset.dataset).__name__ == "SampledMultiEpochDataset"
    # what fairseq's iterators and load_dataset read, answered by the wrapped dataset
    assert dataset.can_reuse_epoch_itr_across_epochs is False
    assert dataset.load_next_shard == dataset.dataset.load_next_shard
    assert len(dataset) == len(dataset.dataset) == 300
    assert_batches_carry_task_ids(task, "train", "lang_pair", num_workers=1)


def test_ids_follow_the_task_list_known_at_collate_time(toy_data):
    # fairseq-train loads the valid split before build_model learns the gate's order (on
    # resume, from the checkpoint): the ids must follow the list of collate time.
    task = build_task(toy_data, "target_lang")
    task.load_dataset("valid", epoch=1)
    task.moe_task_names = list(reversed(task.moe_task_names))
    assert_batches_carry_task_ids(task, "valid", "target_lang")


def test_inference_dataset_gets_the_pair_given_with_s_t(toy_data):
    task = build_task(toy_data, "target_lang")
    task.args.source_lang, task.args.target_lang = "en", "fr"
    src_dict = task.source_dictionary
    tokens = [src_dict.encode_line(line, add_if_not_exist=False).long()
              for line in ("a b c", "d e", "f")]
    dataset = task.build_dataset_for_inference(tokens, [t.numel() for t in tokens])
    sample = dataset.collater([dataset[i] for i in range(len(tokens))])  # as the hub does
    assert sample["net_input"]["task_ids"].tolist() == [task.task_id("en", "fr")] * 3
    # as fairseq-interactive does, through the iterator
    for sample in task.get_batch_iterator(dataset, max_tokens=300).next_epoch_itr(shuffle=False):
        assert sample["net_input"]["task_ids"].tolist() == [task.moe_task_names.index("fr")] * 3
        ids = sample["net_input"]["task_ids"]
        assert task.add_task_ids(sample)["net_input"]["task_ids"] is ids  # a no-op when present


def test_a_stock_model_under_the_task_gets_no_task_ids_and_decodes(toy_data):
    # a --format stock extract has no task gate: no ids, and its encoder takes no extra inputs
    from fairseq.sequence_generator import SequenceGenerator

    tiny = []
    for side in ("encoder", "decoder"):
        tiny += [f"--{side}-layers", "1", f"--{side}-embed-dim", "16", f"--{side}-ffn-embed-dim",
                 "16", f"--{side}-attention-heads", "2"]
    task = setup_task(toy_data, extra=["--arch", "transformer", *tiny])
    assert task.moe_task_names is None
    model = task.build_model(task.args).eval()
    task.load_dataset("valid", epoch=1)
    sample = next(iter(batches(task, "valid")))
    assert "task_ids" not in sample["net_input"]
    task.args.source_lang, task.args.target_lang = "en", "de"
    hypos = task.inference_step(SequenceGenerator([model], task.target_dictionary, beam_size=1,
                                                  max_len_b=3), [model], sample)
    assert len(hypos) == sample["id"].numel()
