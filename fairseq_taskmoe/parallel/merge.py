"""``fairseq-taskmoe-merge-shards``: per-rank expert shards <-> one checkpoint.

Expert-parallel training (W > 1) writes sharded checkpoints: fairseq's
``checkpoint_*.pt`` holds the shared part and names the per-rank
``experts-<set>-rank-<r>.pt`` files beside it (parallel/shards.py). Every tool of the
plugin, fairseq-generate and a resume at any W read such a checkpoint
directly; ``merge`` turns it into one complete file when one is wanted:

    fairseq-taskmoe-merge-shards merge checkpoint_last.pt [--out OUT]
        -> one complete checkpoint (default: checkpoint_last.merged.pt)

Complete checkpoints (W = 1, or --moe-gather-checkpoint) can also be cut into
per-rank pieces for moving or archiving, and put back together:

    fairseq-taskmoe-merge-shards split CKPT --world-size W [--out-dir D]
        -> D/NAME.ep{r}-of-{W}.pt, each with its rank's E/W experts
    fairseq-taskmoe-merge-shards merge SHARD [--out OUT]
        -> one checkpoint (any shard of the set names the set)

Each shard carries ``expert_parallel = {rank, world_size, set_id, num_updates}``;
merging refuses missing ranks and shards of another set (reading and merging
both kinds of set: ``fairseq_taskmoe.checkpoints.shards``; this module is its
command line and the split). Writes go to a temp
file then ``os.replace``; an existing output is refused without ``--force``.
"""

import argparse
import os
import uuid

import torch

from fairseq_taskmoe.checkpoints import atomic_torch_save, console_main
from fairseq_taskmoe.checkpoints.atomic import atomic_torch_save_many
from fairseq_taskmoe.checkpoints.cli import HelpFormatter, add_verbose
from fairseq_taskmoe.checkpoints.shards import (
    SPLIT_FILE, is_expert_key, is_sharded_checkpoint, load_checkpoint_state, merge_shared_state,
    merge_split_states, optimizer_expert_indices, split_path, split_set_paths,
)


def _map_experts(state, fn):
    """Copy of ``state`` with ``fn`` applied to every expert tensor (model and Adam moments)."""
    out = dict(state)
    out["model"] = {k: fn(v) if is_expert_key(k) else v for k, v in state["model"].items()}
    indices = optimizer_expert_indices(state)
    if indices is not None:
        opt = dict(state["last_optimizer_state"])
        opt["state"] = {i: ({k: fn(v) if torch.is_tensor(v) and v.dim() > 0 else v
                             for k, v in st.items()} if i in indices else st)
                        for i, st in opt["state"].items()}
        out["last_optimizer_state"] = opt
    return out


def split_state(state, world: int):
    """One complete checkpoint -> ``world`` shard states (rank r keeps experts r*E/W ..)."""
    sizes = {v.size(0) for k, v in state["model"].items() if is_expert_key(k)}
    for e in sizes:
        if e % world:
            raise ValueError(f"--world-size {world} must divide every layer's expert count; "
                             f"found {e} experts")
    set_id = uuid.uuid4().hex
    updates = _num_updates(state)
    shards = []
    for r in range(world):
        shard = _map_experts(state, lambda t, r=r: t[r * (t.size(0) // world):
                                                     (r + 1) * (t.size(0) // world)].clone())
        shard["expert_parallel"] = {"rank": r, "world_size": world, "set_id": set_id,
                                    "num_updates": updates}
        shards.append(shard)
    return shards


def _num_updates(state):
    history = state.get("optimizer_history") or [{}]
    return history[-1].get("num_updates")


def atomic_save(obj, path: str, force: bool = False):
    """torch.save through the one atomic writer (temp file beside ``path``, fsync, rename,
    the user's umask: a merged checkpoint must be readable by whoever decodes it)."""
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_torch_save(obj, path)


def _drop_optimizer(state):
    state = dict(state)
    state.pop("last_optimizer_state", None)
    return state


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The plugin's help style, keeping the module docstring's layout as the description."""


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fairseq-taskmoe-merge-shards", description=__doc__,
                                     formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="shard set -> one checkpoint")
    m.add_argument("shard", help="any shard of a split set (NAME.ep<r>-of-<W>.pt), or the "
                                 "checkpoint_*.pt of a sharded training save")
    m.add_argument("--out", help="output checkpoint (default: NAME.pt beside the shards)")
    s = sub.add_parser("split", help="one checkpoint -> W shards")
    s.add_argument("checkpoint", help="a complete checkpoint (W = 1, or --moe-gather-checkpoint)")
    s.add_argument("--world-size", type=int, required=True, help="number of shards W (divides E)")
    s.add_argument("--out-dir", help="where NAME.ep<r>-of-<W>.pt go (default: beside the checkpoint)")
    for p in (m, s):
        p.add_argument("--force", action="store_true", help="overwrite existing outputs")
        p.add_argument("--drop-optimizer-state", action="store_true",
                       help="leave the optimizer state out (needed for checkpoints not written by "
                            "--optimizer adam_ep)")
        add_verbose(p)
    args = parser.parse_args(argv)
    if args.cmd == "merge":
        sm = SPLIT_FILE.match(os.path.basename(args.shard))
        if sm is None:  # the shared file of a sharded training save
            out = args.out or os.path.splitext(args.shard)[0] + ".merged.pt"
            if os.path.exists(out) and not args.force:
                raise FileExistsError(f"{out} exists; pass --force to overwrite")
            state = load_checkpoint_state(args.shard)
            if not is_sharded_checkpoint(state):
                raise ValueError(f"{args.shard}: neither a shard (NAME.ep<rank>-of-<world>.pt) nor "
                                 "a sharded training checkpoint; a complete checkpoint needs no merge")
            merged = merge_shared_state(state, args.shard)
            atomic_save(_drop_optimizer(merged) if args.drop_optimizer_state else merged, out,
                        args.force)
            print(out)
            return
        out = args.out or os.path.join(os.path.dirname(args.shard), sm["stem"] + ".pt")
        if os.path.exists(out) and not args.force:  # before the (slow) load
            raise FileExistsError(f"{out} exists; pass --force to overwrite")
        shards = [load_checkpoint_state(p) for p in split_set_paths(args.shard)]
        if args.drop_optimizer_state:
            shards = [_drop_optimizer(x) for x in shards]
        atomic_save(merge_split_states(shards), out, args.force)
        print(out)
    else:
        if args.world_size < 1:
            raise ValueError(f"--world-size must be >= 1, got {args.world_size}")
        stem = os.path.splitext(os.path.basename(args.checkpoint))[0]
        stem_path = os.path.join(args.out_dir or os.path.dirname(args.checkpoint), stem)
        outs = [split_path(stem_path, r, args.world_size) for r in range(args.world_size)]
        existing = [o for o in outs if os.path.exists(o)]
        if existing and not args.force:
            raise FileExistsError(f"{', '.join(existing)} exist(s); pass --force to overwrite")
        state = load_checkpoint_state(args.checkpoint)
        if "expert_parallel" in state or is_sharded_checkpoint(state):
            raise ValueError(f"{args.checkpoint} is already sharded; merge it first")
        if args.drop_optimizer_state:
            state = _drop_optimizer(state)
        # All W files appear or none does: a full disk at shard W-1 leaves no shard 0 behind
        # to block the rerun.
        atomic_torch_save_many(list(zip(split_state(state, args.world_size), outs)))
        for out in outs:
            print(out)


def cli_main():
    # The one CLI error wrapper: one line, exit 2 for bad input, 3 for an unsafe checkpoint or
    # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, 4 for a full disk or read-only target.
    console_main("fairseq-taskmoe-merge-shards", main)


if __name__ == "__main__":
    cli_main()
