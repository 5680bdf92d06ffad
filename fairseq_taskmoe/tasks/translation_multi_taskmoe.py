"""Task ``translation_multi_simple_epoch_taskmoe``.

fairseq's ``translation_multi_simple_epoch`` plus task ids: every batch (which
mixes language pairs) gets ``net_input["task_ids"]``, a (B,) LongTensor built
from each sentence's language pair under ``--moe-task-by``. Language ids come
from fairseq's own ``--enable-lang-ids`` machinery, which this task switches
on; the mapping goes through language *names*, so it does not depend on the
language order at inference. The ids are stamped by the collater of every
dataset the task hands out (``task_id_dataset.py``), so a consumer that loops
over ``task.get_batch_iterator(...)`` or ``dataset.collater`` gets them as is.

It also keeps every sentence of evaluation splits: fairseq's
``data_utils.batch_by_size`` (fairseq main, which ve-fairseq 0.12.3 builds)
drops the last batch of a split when its size is not a multiple of
``--required-batch-size-multiple`` (default 8), so ``fairseq-generate`` silently
skipped up to 7 test sentences per pair. This task batches every split other
than the training split it trains on with a multiple of 1.
"""

import logging
import os
from collections import OrderedDict

import torch
from fairseq.data.multilingual.multilingual_data_manager import MultilingualDatasetManager
from fairseq.data.multilingual.sampled_multi_dataset import CollateFormat, SampledMultiDataset
from fairseq.tasks import FairseqTask, register_task
from fairseq.tasks.translation_multi_simple_epoch import TranslationMultiSimpleEpochTask

from fairseq_taskmoe.checkpoints.args import restore_checkpoint_path
from fairseq_taskmoe.checkpoints.cli import UsageError
from fairseq_taskmoe.config import TASK_BY_CHOICES, moe_config_from_args, split_task_names, validate_training
from fairseq_taskmoe.models.transformer_taskmoe import TransformerTaskMoEModel
from fairseq_taskmoe.moe.router import Router
from fairseq_taskmoe.parallel.scaler import install_expert_parallel_scaler
from fairseq_taskmoe.tasks.checkpoint_flags import check_decoding_command_line
from fairseq_taskmoe.tasks.ngram_block import fix_ngram_blocker
from fairseq_taskmoe.tasks.task_id_dataset import TaskIdDataset

logger = logging.getLogger(__name__)


def task_key(task_by: str, src: str, tgt: str) -> str:
    """The task a (source, target) language pair belongs to."""
    if task_by == "target_lang":
        return tgt
    if task_by == "source_lang":
        return src
    if task_by == "lang_pair":
        return f"{src}-{tgt}"
    raise ValueError(f"--moe-task-by must be one of {', '.join(map(str, TASK_BY_CHOICES))}; got {task_by!r}")


def task_names_for_pairs(task_by: str, lang_pairs) -> list:
    """Sorted task names covering ``lang_pairs`` (['en-de', 'de-en', ...])."""
    names = set()
    for pair in lang_pairs:
        src, tgt = pair.split("-")
        names.add(task_key(task_by, src, tgt))
    return sorted(names)


def check_restore_file(args):
    """fairseq-train ``--restore-file FILE`` naming no file: refuse.

    fairseq logs one INFO line ("No existing checkpoint found") and trains from scratch,
    which for an explicit ``--restore-file`` is a typo, not an intention. fairseq's own
    default (``checkpoint_last.pt`` in ``--save-dir``, absent on a first run) is left alone.
    """
    restore = getattr(args, "restore_file", None)
    if not restore or restore == "checkpoint_last.pt" or getattr(args, "save_dir", None) is None:
        return
    path = restore_checkpoint_path(args)
    if not os.path.isfile(path):
        what = "is a directory, not a checkpoint file" if os.path.isdir(path) else "no such file"
        raise UsageError(f"--restore-file {path}: {what}; fairseq-train would start from "
                                "scratch. Give an existing checkpoint file, or leave --restore-file out")


def resolve_task_names(task_by, pair_names, given, ckpt_names, ckpt_task_by, ckpt_path,
                       new_tasks=False, fresh_optimizer=False):
    """Gate order of a model that starts from a checkpoint (or from scratch: ``ckpt_names`` None).

    The checkpoint's order wins: row i of a task gate was trained for its i-th
    task, so tasks are matched to rows by *name*. A task of ``--lang-pairs`` that
    the checkpoint has no row for, a different ``--moe-task-by`` or an explicit
    ``--moe-task-names`` other than the checkpoint's is an error, never a silent
    re-assignment of rows. With ``new_tasks`` (``--moe-new-tasks``) the missing
    tasks get rows after the checkpoint's; that needs a fresh optimizer, whose
    state would otherwise have the old gate shape.
    """
    if ckpt_names is None:
        return given or pair_names
    if ckpt_task_by != task_by:
        raise ValueError(f"--moe-task-by {task_by} differs from the checkpoint {ckpt_path} "
                         f"(--moe-task-by {ckpt_task_by}): its task-gate rows are tasks of another "
                         f"kind; pass --moe-task-by {ckpt_task_by}")
    if given and given != ckpt_names:
        raise ValueError(f"--moe-task-names {','.join(given)} differs from the task order of the "
                         f"checkpoint {ckpt_path} ({','.join(ckpt_names)}); leave --moe-task-names "
                         "out: the checkpoint's order is kept and tasks are matched by name")
    missing = [name for name in pair_names if name not in ckpt_names]
    if missing and new_tasks:
        if not fresh_optimizer:
            raise ValueError(f"--moe-new-tasks ({', '.join(missing)}) adds task-gate rows, so the "
                             f"optimizer state of {ckpt_path} no longer fits: use "
                             "--finetune-from-model or --reset-optimizer")
        return list(ckpt_names) + missing
    if missing:
        raise ValueError(f"--lang-pairs gives task(s) {', '.join(missing)} (under --moe-task-by "
                         f"{task_by}) that the checkpoint {ckpt_path} has no task-gate row for; its "
                         f"tasks are {', '.join(ckpt_names)}. Use only language pairs of those tasks, or "
                         "--moe-new-tasks to fine-tune new rows")
    return list(ckpt_names)


def checkpoint_task_names(path):
    """(task names, --moe-task-by) stored in a transformer_taskmoe checkpoint, or (None, None)."""
    from fairseq_taskmoe.checkpoints import load_checkpoint_safely, model_args

    if not path or not os.path.isfile(path):
        return None, None  # fairseq-train starts from scratch (or reports the missing file)
    state = load_checkpoint_safely(path)
    try:
        ns = model_args(state, path)
    except ValueError:
        return None, None  # not a task-MoE checkpoint: loading its weights is fairseq's business
    names = list(split_task_names(getattr(ns, "moe_task_names", "")))
    return (names or None), str(getattr(ns, "moe_task_by", None) or "target_lang")


class TaskIdDatasetManager(MultilingualDatasetManager):
    """Collates each language pair separately, then concatenates.

    fairseq's default shared collater (and its ConcatDataset for valid/test)
    runs the *first* pair's
    ``LanguagePairDataset.collater`` over the whole mixed batch, which stamps
    that pair's language ids on every sentence. Per-pair collation keeps each
    sentence's own ids (fairseq's non-shared path concatenates them in order).
    """

    def _shared_collater(self):
        return False

    def get_split_num_data_shards(self, split):
        """fairseq's shard count per pair, with a clear error for a pair that has no data files
        (fairseq itself ends in ``KeyError: 'main:en-fr'``)."""
        shards = super().get_split_num_data_shards(split)
        data_paths, lang_pairs = self.get_data_paths_and_lang_pairs(split)
        for category, pairs in lang_pairs.items():
            if category not in data_paths or "mono_" in category:
                continue
            for pair in pairs:
                if self.get_dataset_key(category, *pair.split("-")) not in shards:
                    src, tgt = pair.split("-")
                    where = data_paths[category].split(os.pathsep)[0]
                    flag = "--lang-pairs" if self.args.source_lang is None else "-s/-t"
                    raise UsageError(
                        f"{flag} {pair}: no {split} data in {where} (looked for "
                        f"{split}.{src}-{tgt}.{src}.idx and {split}.{tgt}-{src}.{src}.idx, with .bin); "
                        f"binarize the pair with fairseq-preprocess or drop it from {flag}")
        return shards

    def load_into_concat_dataset(self, split, datasets, data_param_list):
        # Valid/test splits: fairseq's ConcatDataset collates with datasets[0]
        # too; a non-sampling SampledMultiDataset (what fairseq itself uses for
        # --lang-tok-replacing-bos-eos) collates per pair.
        return SampledMultiDataset(OrderedDict(datasets), sampling_ratios=None, eval_key=None,
                                   collate_format=CollateFormat.single, virtual_size=None,
                                   split=split, shared_collater=False)


@register_task("translation_multi_simple_epoch_taskmoe")
class TranslationMultiSimpleEpochTaskMoE(TranslationMultiSimpleEpochTask):
    def __init__(self, args, langs, dicts, training):
        # Batches keep per-sentence language ids (src_lang_id / tgt_lang_id).
        args.enable_lang_ids = True
        super().__init__(args, langs, dicts, training)
        self.data_manager = TaskIdDatasetManager(
            args, self.lang_pairs, langs, dicts, self.sampling_method
        )
        self.moe_task_by = None
        self.moe_task_names = None
        self.checkpoint_flags = None

    @classmethod
    def setup_task(cls, args, **kwargs):
        """fairseq's setup, after checking the command line against the checkpoint(s) it names:
        ``--path`` of fairseq-generate / -interactive (``checkpoint_flags.py``), ``--restore-file``
        of fairseq-train."""
        flags = check_decoding_command_line(args)
        if not kwargs.get("from_checkpoint"):
            check_restore_file(args)
        task = super().setup_task(args, **kwargs)
        task.checkpoint_flags = flags
        return task

    def build_model(self, args, from_checkpoint=False):
        task_by = str(getattr(args, "moe_task_by", None) or "target_lang")
        given = list(split_task_names(getattr(args, "moe_task_names", None)))
        new_rows = False
        moe_cfg = moe_config_from_args(args) if self.training and not from_checkpoint else None
        if moe_cfg is not None:
            validate_training(moe_cfg)
        # (getattr, not moe_cfg: a stock --arch has no routing flags and no task gate)
        if moe_cfg is not None and "task" in (str(getattr(args, "moe_encoder_routing", None)),
                                               str(getattr(args, "moe_decoder_routing", None))):
            # fairseq-train: the model is built from the command line, and a checkpoint's
            # weights may be loaded into it next; its task-gate rows keep their tasks.
            path = restore_checkpoint_path(self.args)
            ckpt_names, ckpt_task_by = checkpoint_task_names(path)
            fresh = bool(path) and (path == getattr(self.args, "finetune_from_model", None)
                                    or bool(getattr(self.args, "reset_optimizer", False)))
            names = resolve_task_names(task_by, task_names_for_pairs(task_by, self.lang_pairs),
                                       given, ckpt_names, ckpt_task_by, path,
                                       new_tasks=moe_cfg.new_tasks, fresh_optimizer=fresh)
            if ckpt_names is not None and names != task_names_for_pairs(task_by, self.lang_pairs):
                logger.info("task-gate rows follow the task order of %s: %s", path, ",".join(names))
            args.moe_task_names = ",".join(names)
            new_rows = ckpt_names is not None and len(names) > len(ckpt_names)
        elif not given:
            # One task per target language / pair / source language.
            args.moe_task_names = ",".join(task_names_for_pairs(task_by, self.lang_pairs))
        self.moe_task_by = task_by
        self.moe_task_names = args.moe_task_names.split(",")
        model = super().build_model(args, from_checkpoint)
        if not isinstance(model, TransformerTaskMoEModel):
            # A stock transformer (a --format stock extract) has no task gate: its batches get
            # no task ids; which task it holds was fixed at extraction, and the pair asked for
            # was checked against the extract's record in setup_task (check_served_pair).
            self.moe_task_names = None
        if moe_cfg is not None and new_rows:
            logger.info("--moe-new-tasks: new task-gate rows for %s", ",".join(names[len(ckpt_names):]))
            for module in model.modules():
                if isinstance(module, Router):
                    module.allow_new_task_rows = True
        return model

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        # --amp with adam_ep: ranks agree on skipping a step (parallel/scaler.py). Every call:
        # fairseq rebuilds its optimizer, and with it the scaler, on each checkpoint load.
        install_expert_parallel_scaler(optimizer)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        if not isinstance(self.datasets[split], TaskIdDataset):  # else fairseq kept the loaded shard
            self.datasets[split] = TaskIdDataset(self.datasets[split], self.add_task_ids)

    def build_dataset_for_inference(self, src_tokens, src_lengths, constraints=None):
        """fairseq-interactive and the hub: ids of the pair given with -s/-t (see add_task_ids)."""
        dataset = super().build_dataset_for_inference(src_tokens, src_lengths, constraints)
        return TaskIdDataset(dataset, self.add_task_ids)

    def get_batch_iterator(self, dataset, *args, **kwargs):
        if "required_batch_size_multiple" in kwargs:
            train_split = getattr(self.args, "train_subset", "train")
            if not (self.training and dataset is self.datasets.get(train_split)):
                # Evaluation: a multiple > 1 makes fairseq drop the last batch (see module doc).
                if kwargs["required_batch_size_multiple"] != 1:
                    logger.info("batching a non-training split with required_batch_size_multiple=1 "
                                "(was %s) so that no sentence is dropped",
                                kwargs["required_batch_size_multiple"])
                kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, *args, **kwargs)

    def task_id(self, src: str, tgt: str) -> int:
        key = task_key(self.moe_task_by, src, tgt)
        if key not in self.moe_task_names:
            raise ValueError(
                f"language pair {src}-{tgt} is task {key!r} under --moe-task-by {self.moe_task_by}, "
                f"which the model was not trained on; known tasks: {', '.join(self.moe_task_names)}"
            )
        return self.moe_task_names.index(key)

    def add_task_ids(self, sample):
        """Put ``task_ids`` (B,) into ``sample["net_input"]`` (in place); returns ``sample``.

        The task's datasets call it from their collater, so train/valid steps need not;
        inference_step does (fairseq-interactive drops them), and so may a batch built by
        hand. A no-op when the ids are there already.
        """
        if sample is None or "net_input" not in sample or self.moe_task_names is None:
            return sample
        net_input = sample["net_input"]
        if "task_ids" in net_input:
            return sample
        src_tokens = net_input["src_tokens"]
        lang_dict = self.data_manager.lang_dict
        if "src_lang_id" in net_input and "tgt_lang_id" in sample:
            src_ids = net_input["src_lang_id"].view(-1).tolist()
            tgt_ids = sample["tgt_lang_id"].view(-1).tolist()
            cache = {}
            ids = []
            for s, t in zip(src_ids, tgt_ids):
                if (s, t) not in cache:
                    cache[(s, t)] = self.task_id(lang_dict[s], lang_dict[t])
                ids.append(cache[(s, t)])
        else:
            # Inference datasets (fairseq-interactive) carry no language ids:
            # the pair is the one given with -s/-t.
            ids = [self.task_id(self.args.source_lang, self.args.target_lang)] * src_tokens.size(0)
        net_input["task_ids"] = torch.tensor(ids, dtype=torch.long, device=src_tokens.device)
        return sample

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        """fairseq's own signature: the hub passes ``prefix_allowed_tokens_fn``, which the parent drops."""
        if not getattr(args, "keep_inference_langtok", False):
            # As the parent: the forced target-language token is not part of the output.
            _, tgt_spec = self.args.langtoks["main"]
            if tgt_spec:
                tok = self.data_manager.get_decoder_langtok(self.args.target_lang, tgt_spec)
                extra_gen_cls_kwargs = dict(extra_gen_cls_kwargs or {}, symbols_to_strip_from_output={tok})
        generator = FairseqTask.build_generator(self, models, args, seq_gen_cls, extra_gen_cls_kwargs, **kwargs)
        return fix_ngram_blocker(generator)  # --no-repeat-ngram-size is a no-op on CPU otherwise

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        plugin = [isinstance(m, TransformerTaskMoEModel) for m in models]
        if all(plugin):
            # The task's collater stamped task_ids, but fairseq-interactive rebuilds the
            # sample from src_tokens and src_lengths alone (the -s/-t pair's ids then).
            self.add_task_ids(sample)
        elif any(plugin):
            raise ValueError("--path: cannot ensemble transformer_taskmoe models with stock ones "
                             "(a --format stock extract); decode them separately")
        elif sample is not None and "net_input" in sample:
            # A stock transformer (a --format stock extract) reads neither task ids nor the
            # language ids this task puts in net_input: its encoder would raise a TypeError.
            # Which task it holds is fixed at extraction (extract.json), not chosen here.
            sample["net_input"].pop("src_lang_id", None)
            sample["net_input"].pop("task_ids", None)
        return super().inference_step(generator, models, sample, prefix_tokens, constraints)
