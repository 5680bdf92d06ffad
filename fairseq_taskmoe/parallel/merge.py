"""``fairseq-taskmoe-merge-shards``: per-rank expert shards <-> one checkpoint.

Expert-parallel training (W > 1) writes sharded checkpoints: fairseq's
``checkpoint_*.pt`` holds the shared part and names the per-rank
``experts-<set>-rank-<r>.pt`` files beside it (shards.py). Every tool of the
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
merging refuses missing ranks and shards of another set. Writes go to a temp
file then ``os.replace``; an existing output is refused without ``--force``.
"""

import argparse
import copy
import os
import re
import sys
import uuid

import torch

from fairseq_taskmoe.checkpoints import atomic_torch_save, load_checkpoint_safely
from fairseq_taskmoe.parallel.checkpoint import EXPERT_PARAM_NAMES
from fairseq_taskmoe.parallel.shards import REF_KEY, ShardReader, resolve_shard_dir, shard_ref

SHARD_RE = re.compile(r"^(?P<stem>.+)\.ep(?P<rank>\d+)-of-(?P<world>\d+)\.pt$")


def is_expert_key(key: str) -> bool:
    return ".experts." in key and key.rsplit(".", 1)[-1] in EXPERT_PARAM_NAMES


def shard_path(stem_path: str, rank: int, world: int) -> str:
    return f"{stem_path}.ep{rank}-of-{world}.pt"


def _optimizer_expert_indices(state):
    opt = state.get("last_optimizer_state")
    if opt is None:
        return None
    if "expert_param_indices" not in opt:
        raise ValueError("the optimizer state does not say which entries are experts (checkpoint "
                         "not written by --optimizer adam_ep); use --drop-optimizer-state")
    return set(opt["expert_param_indices"])


def _map_experts(state, fn):
    """Copy of ``state`` with ``fn`` applied to every expert tensor (model and Adam moments)."""
    out = dict(state)
    out["model"] = {k: fn(v) if is_expert_key(k) else v for k, v in state["model"].items()}
    indices = _optimizer_expert_indices(state)
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


def merge_states(shards):
    """Shard states (any order) -> one complete checkpoint; validates the set."""
    metas = [s.get("expert_parallel") for s in shards]
    if any(m is None for m in metas):
        raise ValueError("not an expert-parallel shard (no 'expert_parallel' entry); a complete "
                         "checkpoint needs no merge")
    world = metas[0]["world_size"]
    for m in metas:
        if m["set_id"] != metas[0]["set_id"] or m["world_size"] != world:
            raise ValueError(f"shard of rank {m['rank']} belongs to another shard set "
                             f"(set {m['set_id'][:8]}, world {m['world_size']}) than rank "
                             f"{metas[0]['rank']} (set {metas[0]['set_id'][:8]}, world {world})")
    ranks = sorted(m["rank"] for m in metas)
    missing = sorted(set(range(world)) - set(ranks))
    if missing or len(ranks) != world:
        raise ValueError(f"incomplete shard set: world size {world}, missing rank(s) {missing}")
    ordered = [s for _, s in sorted(zip([m["rank"] for m in metas], shards), key=lambda x: x[0])]
    merged = copy.copy(ordered[0])
    del merged["expert_parallel"]
    merged["model"] = {k: (torch.cat([s["model"][k] for s in ordered], 0) if is_expert_key(k) else v)
                       for k, v in ordered[0]["model"].items()}
    indices = _optimizer_expert_indices(ordered[0])
    if indices is not None:
        opt = dict(ordered[0]["last_optimizer_state"])
        opt["state"] = {
            i: ({k: (torch.cat([s["last_optimizer_state"]["state"][i][k] for s in ordered], 0)
                     if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in st.items()}
                if i in indices else st)
            for i, st in opt["state"].items()}
        merged["last_optimizer_state"] = opt
    return merged


def _num_updates(state):
    history = state.get("optimizer_history") or [{}]
    return history[-1].get("num_updates")


def shard_set_paths(path: str):
    """All paths of the set that ``path`` (a shard) belongs to; missing ones raise."""
    m = SHARD_RE.match(os.path.basename(path))
    if m is None:
        raise ValueError(f"{path}: not a shard name (expected NAME.ep<rank>-of-<world>.pt)")
    world = int(m["world"])
    stem = os.path.join(os.path.dirname(path), m["stem"])
    paths = [shard_path(stem, r, world) for r in range(world)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"incomplete shard set: missing {', '.join(missing)}")
    return paths


def load_checkpoint_state(path: str) -> dict:
    """A fairseq checkpoint's state, or a clear error for anything else."""
    state = load_checkpoint_safely(path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        kind = type(state).__name__ if not isinstance(state, dict) else "a dict without 'model'"
        raise ValueError(f"{path}: not a fairseq checkpoint (found {kind}; expected a dict whose "
                         "'model' entry is the model's state dict)")
    return state


def is_sharded_checkpoint(state) -> bool:
    """True for the shared file of a sharded expert-parallel save (its experts are beside it)."""
    return isinstance(state, dict) and shard_ref(state.get("model")) is not None


def merge_shared_state(state: dict, path: str) -> dict:
    """Shared file of a sharded save + its ``experts-*-rank-*.pt`` -> one complete state."""
    ref = shard_ref(state["model"])
    reader = ShardReader(ref, resolve_shard_dir(ref, [os.path.dirname(os.path.abspath(path))]))
    out = dict(state)
    model = {k: v for k, v in state["model"].items() if k != REF_KEY}
    for name in reader.names():
        model[name] = reader.full_model(name)
    out["model"] = model
    opt = state.get("last_optimizer_state")
    if isinstance(opt, dict) and REF_KEY in opt:
        opt = {k: v for k, v in opt.items() if k != REF_KEY}
        st = dict(opt["state"])
        for i, name in opt.get("expert_param_names", {}).items():
            saved = reader.shard(0)["optimizer_state"][name]
            st[i] = {k: (torch.cat([reader.shard(r)["optimizer_state"][name][k]
                                    for r in range(reader.world)], 0)
                         if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in saved.items()}
        opt["state"] = st
        out["last_optimizer_state"] = opt
    return out


def load_merged_state(path: str):
    """A complete checkpoint state dict (all E experts) from a checkpoint, the shared file of a
    sharded save, or any shard of a split set.

    This is what ``torch.load`` of a single-process checkpoint returns.
    """
    state = load_checkpoint_state(path)
    if is_sharded_checkpoint(state):
        return merge_shared_state(state, path)
    if "expert_parallel" not in state:
        return state
    return merge_states([state] + [load_checkpoint_state(p) for p in shard_set_paths(path)
                                   if os.path.abspath(p) != os.path.abspath(path)])


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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fairseq-taskmoe-merge-shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="shard set -> one checkpoint")
    m.add_argument("shard", help="any shard of a split set (NAME.ep<r>-of-<W>.pt), or the "
                                 "checkpoint_*.pt of a sharded training save")
    m.add_argument("--out", help="output checkpoint (default: NAME.pt beside the shards)")
    s = sub.add_parser("split", help="one checkpoint -> W shards")
    s.add_argument("checkpoint")
    s.add_argument("--world-size", type=int, required=True)
    s.add_argument("--out-dir", help="default: beside the checkpoint")
    for p in (m, s):
        p.add_argument("--force", action="store_true", help="overwrite existing outputs")
        p.add_argument("--drop-optimizer-state", action="store_true",
                       help="leave the optimizer state out (needed for checkpoints not written by "
                            "--optimizer adam_ep)")
    args = parser.parse_args(argv)
    if args.cmd == "merge":
        sm = SHARD_RE.match(os.path.basename(args.shard))
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
        shards = [load_checkpoint_state(p) for p in shard_set_paths(args.shard)]
        if args.drop_optimizer_state:
            shards = [_drop_optimizer(x) for x in shards]
        atomic_save(merge_states(shards), out, args.force)
        print(out)
    else:
        if args.world_size < 1:
            raise ValueError(f"--world-size must be >= 1, got {args.world_size}")
        stem = os.path.splitext(os.path.basename(args.checkpoint))[0]
        stem_path = os.path.join(args.out_dir or os.path.dirname(args.checkpoint), stem)
        outs = [shard_path(stem_path, r, args.world_size) for r in range(args.world_size)]
        existing = [o for o in outs if os.path.exists(o)]
        if existing and not args.force:
            raise FileExistsError(f"{', '.join(existing)} exist(s); pass --force to overwrite")
        state = load_checkpoint_state(args.checkpoint)
        if "expert_parallel" in state or is_sharded_checkpoint(state):
            raise ValueError(f"{args.checkpoint} is already sharded; merge it first")
        if args.drop_optimizer_state:
            state = _drop_optimizer(state)
        for shard, out in zip(split_state(state, args.world_size), outs):
            atomic_save(shard, out, args.force)
            print(out)


def cli_main():
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"fairseq-taskmoe-merge-shards: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli_main()
