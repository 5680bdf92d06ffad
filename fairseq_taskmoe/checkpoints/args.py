"""What a loaded checkpoint says about itself: model / task args, language pairs.

fairseq checkpoints keep their arguments either as ``cfg["model"]`` /
``cfg["task"]`` (an ``argparse.Namespace`` for argparse-style models, or a
plain dict in ``--format stock`` extracts) or, when older, as ``args``.
"""

import argparse
import hashlib
import os
from typing import List, Optional

from fairseq_taskmoe.checkpoints.safe_load import load_checkpoint_safely
from fairseq_taskmoe.checkpoints.shards import SPLIT_FILE, is_sharded_checkpoint, load_merged_state


def load_source(path: str) -> dict:
    """The full checkpoint state (weights_only load; expert-parallel shard sets merged)."""
    path = os.fspath(path)
    if SPLIT_FILE.match(os.path.basename(path)):
        return load_merged_state(path)
    state = load_checkpoint_safely(path)
    if isinstance(state, dict) and ("expert_parallel" in state or is_sharded_checkpoint(state)):
        return load_merged_state(path)  # a split shard, or the shared file of a sharded training save
    return state


def _group(state: dict, name: str):
    cfg = state.get("cfg") if isinstance(state, dict) else None
    return cfg.get(name) if isinstance(cfg, dict) else None


def model_args(state, path: str) -> argparse.Namespace:
    """The ``transformer_taskmoe`` model's Namespace; refuses other checkpoints by name."""
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    args = _group(state, "model")
    if args is None:
        args = state.get("args")
    if isinstance(args, dict) and args.get("_name") == "transformer":
        raise ValueError(f"{path}: a stock fairseq transformer checkpoint (e.g. a --format stock "
                         "extract), not a transformer_taskmoe one; it has no experts to analyse or extract")
    if not isinstance(args, argparse.Namespace) or not hasattr(args, "moe_task_names"):
        raise ValueError(f"{path}: not a transformer_taskmoe checkpoint (its model args have no "
                         "moe_task_names); this needs a model trained with --arch transformer_taskmoe*")
    return args


def task_args(state) -> Optional[argparse.Namespace]:
    """The task's Namespace (``cfg.task``, else the legacy ``args``), or None."""
    task = _group(state, "task")
    if isinstance(task, argparse.Namespace):
        return task
    args = state.get("args") if isinstance(state, dict) else None
    return args if isinstance(args, argparse.Namespace) else None


def lang_pairs(ns) -> List[str]:
    """``--lang-pairs`` of a task Namespace as a list (stored as a list or a CSV string)."""
    pairs = getattr(ns, "lang_pairs", None) or []
    return list(pairs) if isinstance(pairs, (list, tuple)) else [p for p in str(pairs).split(",") if p]


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def restore_checkpoint_path(args):
    """The checkpoint fairseq-train will load into the model it builds, or None.

    fairseq-train builds the model from the command line and only then loads a
    checkpoint's weights (``checkpoint_utils.load_checkpoint``): the model args,
    ``--moe-task-names`` included, are never read back from the checkpoint, for
    a resume (``<save-dir>/checkpoint_last.pt``), ``--restore-file``,
    ``--continue-once`` or ``--finetune-from-model`` alike. This mirrors that
    function's choice of file so the task can read the gate's task order first.
    """
    save_dir, restore = getattr(args, "save_dir", None), getattr(args, "restore_file", None)
    if save_dir is None or restore is None:
        return None
    suffix = getattr(args, "checkpoint_suffix", None) or ""
    if restore != "checkpoint_last.pt":
        return restore.replace(".pt", suffix + ".pt")
    last = os.path.join(save_dir, f"checkpoint_last{suffix}.pt")
    if os.path.isfile(last):
        return last
    return getattr(args, "continue_once", None) or getattr(args, "finetune_from_model", None)
