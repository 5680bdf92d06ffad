"""Reading the source checkpoint and writing the output directory atomically."""

import argparse
import glob
import hashlib
import importlib
import os
import re
import shutil
import tempfile

import torch

from fairseq_taskmoe.safe_load import load_checkpoint_safely

# Expert-parallel shard sets are named NAME.ep<rank>-of-<world>.pt (fairseq_taskmoe.parallel).
SHARD_NAME = re.compile(r"\.ep\d+-of-\d+\.pt$")


def _merged_state(path: str):
    try:
        merge = importlib.import_module("fairseq_taskmoe.parallel.merge")
    except ImportError as err:
        raise ValueError(f"{path}: sharded checkpoints need fairseq_taskmoe.parallel ({err})") from err
    return merge.load_merged_state(path)


def load_source(path: str) -> dict:
    """The full checkpoint state (weights_only load; shard sets merged)."""
    if SHARD_NAME.search(os.path.basename(path)):
        return _merged_state(path)
    state = load_checkpoint_safely(path)
    if isinstance(state, dict) and "expert_parallel" in state:
        return _merged_state(path)
    return state


def model_args(state: dict, path: str) -> argparse.Namespace:
    """The model's argparse Namespace; refuses checkpoints of other models."""
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    cfg = state.get("cfg") or {}
    args = cfg.get("model") if isinstance(cfg, dict) else None
    if args is None:
        args = state.get("args")
    if not isinstance(args, argparse.Namespace) or not hasattr(args, "moe_task_names"):
        raise ValueError(f"{path}: not a transformer_taskmoe checkpoint (its model args have no "
                         "moe_task_names); fairseq-taskmoe-extract needs a model trained with "
                         "--arch transformer_taskmoe*")
    return args


def task_args(state: dict) -> argparse.Namespace:
    cfg = state.get("cfg") or {}
    task = cfg.get("task") if isinstance(cfg, dict) else None
    return task if isinstance(task, argparse.Namespace) else state.get("args")


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_out_dir(out_dir: str, force: bool):
    if os.path.exists(out_dir) and not force:
        raise FileExistsError(f"--out {out_dir} already exists; pass --force to replace it")


def make_tmp_dir(out_dir: str) -> str:
    """An empty directory next to ``out_dir`` (same filesystem, so the final rename is atomic)."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(out_dir))}.tmp-")


def commit_dir(tmp_dir: str, out_dir: str, force: bool):
    """Move the finished ``tmp_dir`` to ``out_dir``; an old one goes only after that."""
    check_out_dir(out_dir, force)
    old = None
    if os.path.exists(out_dir):
        old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(out_dir)), prefix=".old-")
        os.rmdir(old)
        os.replace(out_dir, old)
    os.replace(tmp_dir, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(obj: dict, path: str):
    torch.save(obj, path)


def find_data_dir(data, checkpoint: str):
    """The training data dir if it is reachable: as stored, or relative to the checkpoint."""
    if not data:
        return None
    first = str(data).split(os.pathsep)[0]
    candidates = [first]
    if not os.path.isabs(first):
        ckpt_dir = os.path.dirname(os.path.abspath(checkpoint))
        candidates += [os.path.join(ckpt_dir, first), os.path.join(os.path.dirname(ckpt_dir), first)]
    for cand in candidates:
        if glob.glob(os.path.join(cand, "dict.*.txt")):
            return os.path.abspath(cand)
    return None


def copy_vocab(data_dir: str, dest: str) -> list:
    """Copy ``dict.*.txt`` and a sentencepiece model (``spm.model`` in or next to the data)."""
    copied = []
    for path in sorted(glob.glob(os.path.join(data_dir, "dict.*.txt"))):
        shutil.copy2(path, dest)
        copied.append(os.path.basename(path))
    for cand in (os.path.join(data_dir, "spm.model"), os.path.join(os.path.dirname(data_dir), "spm.model")):
        if os.path.isfile(cand):
            shutil.copy2(cand, dest)
            copied.append("spm.model")
            break
    return copied
