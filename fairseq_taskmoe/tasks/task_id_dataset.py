"""A dataset wrapper whose batches leave the collater with ``task_ids`` stamped.

The task wraps every dataset it hands out (each split of ``load_dataset``, the
sampled training set included, and ``build_dataset_for_inference`` for
fairseq-interactive and the hub), so training, validation, generation and the
analysis tools get ``net_input["task_ids"]`` (B,) without calling anything.

``stamp`` (the task's ``add_task_ids``) runs at collate time, not when the
dataset is built: the gate's task list may be learnt after the split was loaded
(fairseq-train loads the valid split first; ``build_model`` then reads the task
order of the checkpoint it resumes from).
"""

from fairseq.data import BaseWrapperDataset


class TaskIdDataset(BaseWrapperDataset):
    """``dataset`` whose ``collater`` output goes through ``stamp(batch)`` (in place)."""

    def __init__(self, dataset, stamp):
        super().__init__(dataset)
        self.stamp = stamp

    def collater(self, samples, **extra_args):
        # extra_args: LanguagePairDataset's pad_to_length, passed by fairseq's own wrappers
        return self.stamp(self.dataset.collater(samples, **extra_args))

    # FairseqDataset methods BaseWrapperDataset does not forward (its defaults would
    # answer for the wrapped dataset: NotImplementedError, True).
    def num_tokens_vec(self, indices):
        return self.dataset.num_tokens_vec(indices)

    @property
    def supports_fetch_outside_dataloader(self):
        return self.dataset.supports_fetch_outside_dataloader

    def __getattr__(self, name):
        # Any other attribute is the wrapped dataset's: fairseq reads ``load_next_shard`` and
        # ``shard_epoch`` of a sharded training set, fairseq-generate ``src``/``tgt``.
        # (``__dict__`` lookup: unpickling in a DataLoader worker asks before ``dataset`` is set.)
        dataset = self.__dict__.get("dataset")
        if dataset is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(dataset, name)
