"""Reading expert shard sets: the per-rank files that hold a checkpoint's experts.

Two kinds of set exist (writing them lives in ``fairseq_taskmoe.parallel``):

- a *training* set: fairseq's ``checkpoint*.pt`` (the shared part, written by
  rank 0) holds ``model["_expert_shards"] = {set_id, world_size, files, dir}``
  and each rank r wrote ``experts-<set_id>-rank-<r>.pt`` with its E/W experts
  and their Adam moments, keyed by parameter name (``parallel/shards.py``);
- a *split* set: ``NAME.ep<r>-of-<W>.pt``, each a complete fairseq checkpoint
  but for the experts, of which it holds rank r's rows, plus
  ``expert_parallel = {rank, world_size, set_id, num_updates}``
  (``fairseq-taskmoe-merge-shards split``).

:func:`load_merged_state` turns either (or a complete checkpoint) into the state
dict a single-process checkpoint would be. Shard files are looked for beside
the checkpoint file first, then in the directories a caller knows, then in the
directory recorded at save time.
"""

import copy
import os
import re
from typing import Dict, List, Optional

import torch

from fairseq_taskmoe.checkpoints.safe_load import load_checkpoint_safely

REF_KEY = "_expert_shards"  # in the shared file's model state dict (and its optimizer state)
SHARD_FILE = re.compile(r"^experts-(?P<set_id>[0-9a-f]+)-rank-(?P<rank>\d+)\.pt$")
SPLIT_FILE = re.compile(r"^(?P<stem>.+)\.ep(?P<rank>\d+)-of-(?P<world>\d+)\.pt$")
# Names of a StackedExperts' params (E leading rows each) in a model state dict.
EXPERT_PARAM_NAMES = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")


def shard_file_name(set_id: str, rank: int) -> str:
    return f"experts-{set_id}-rank-{rank}.pt"


def split_path(stem_path: str, rank: int, world: int) -> str:
    return f"{stem_path}.ep{rank}-of-{world}.pt"


def is_expert_key(key: str) -> bool:
    return ".experts." in key and key.rsplit(".", 1)[-1] in EXPERT_PARAM_NAMES


def shard_ref(model_state: dict) -> Optional[dict]:
    """The shard-set reference of a shared file's model state, or None (a complete checkpoint)."""
    ref = model_state.get(REF_KEY) if isinstance(model_state, dict) else None
    return ref if isinstance(ref, dict) else None


def resolve_shard_dir(ref: dict, hints: List[str]) -> str:
    """The directory holding every file of the set: the hints in order, then the dir recorded
    at save. Set ids are unique per save, so a set found in any of them is the one referenced
    (``ShardReader.shard`` checks each file's own id and rank)."""
    tried = []
    for d in [*hints, ref.get("dir")]:
        if not d or d in tried:
            continue
        tried.append(d)
        if all(os.path.isfile(os.path.join(d, f)) for f in ref["files"]):
            return d
    raise FileNotFoundError(
        f"expert shards of checkpoint set {ref['set_id']} ({', '.join(ref['files'])}) not found in "
        f"{' or '.join(tried)}; keep them beside the checkpoint they belong to (after training with "
        "a node-local --save-dir, copy every node's experts-*.pt files there, see docs/PARALLEL.md)")


class ShardReader:
    """Reads the experts of a training shard set, one rank's file at a time, cached."""

    def __init__(self, ref: dict, directory: str):
        self.ref, self.dir = ref, directory
        self.world = int(ref["world_size"])
        self._cache = {}

    def shard(self, rank: int) -> dict:
        if rank not in self._cache:
            path = os.path.join(self.dir, self.ref["files"][rank])
            state = load_checkpoint_safely(path)
            meta = state.get("expert_parallel", {}) if isinstance(state, dict) else {}
            if meta.get("set_id") != self.ref["set_id"] or meta.get("rank") != rank:
                raise ValueError(f"{path}: not rank {rank}'s shard of set {self.ref['set_id']}")
            self._cache[rank] = state
        return self._cache[rank]

    def rows(self, pick, lo: int, hi: int, what: str) -> torch.Tensor:
        """Rows ``lo:hi`` of the full (E, ...) tensor whose rank-r piece is ``pick(shard(r))``."""
        first = pick(self.shard(0))
        per = first.size(0)
        total = per * self.world
        if not 0 <= lo < hi <= total:
            raise ValueError(f"{what}: the checkpoint has {total} experts ({self.world} shards of "
                             f"{per}), this run needs rows {lo}..{hi - 1}; check --moe-expert-count")
        parts = []
        for r in range(lo // per, (hi - 1) // per + 1):
            t = pick(self.shard(r))
            a, b = max(lo - r * per, 0), min(hi - r * per, per)
            parts.append(t[a:b])
        return torch.cat(parts, 0).clone()

    def full_model(self, name: str) -> torch.Tensor:
        return torch.cat([self.shard(r)["model"][name] for r in range(self.world)], 0)

    def names(self) -> List[str]:
        return list(self.shard(0)["model"])

    def moment_names(self) -> Dict[str, List[str]]:
        return {n: list(st) for n, st in self.shard(0)["optimizer_state"].items()}


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


def merge_shared_state(state: dict, path: str, hints=()) -> dict:
    """Shared file of a sharded save + its ``experts-*-rank-*.pt`` -> one complete state
    (shards looked for beside ``path`` first, then in ``hints``)."""
    ref = shard_ref(state["model"])
    reader = ShardReader(ref, resolve_shard_dir(ref, [os.path.dirname(os.path.abspath(path)), *hints]))
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


def optimizer_expert_indices(state):
    """Indices of the expert entries of a checkpoint's optimizer state (None: no optimizer state)."""
    opt = state.get("last_optimizer_state")
    if opt is None:
        return None
    if "expert_param_indices" not in opt:
        raise ValueError("the optimizer state does not say which entries are experts (checkpoint "
                         "not written by --optimizer adam_ep); use --drop-optimizer-state")
    return set(opt["expert_param_indices"])


def split_set_paths(path: str):
    """All paths of the split set that ``path`` (one of its shards) belongs to; missing ones raise."""
    m = SPLIT_FILE.match(os.path.basename(path))
    if m is None:
        raise ValueError(f"{path}: not a shard name (expected NAME.ep<rank>-of-<world>.pt)")
    world = int(m["world"])
    stem = os.path.join(os.path.dirname(path), m["stem"])
    paths = [split_path(stem, r, world) for r in range(world)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"incomplete shard set: missing {', '.join(missing)}")
    return paths


def merge_split_states(shards):
    """Split-shard states (any order) -> one complete checkpoint; validates the set."""
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
    indices = optimizer_expert_indices(ordered[0])
    if indices is not None:
        opt = dict(ordered[0]["last_optimizer_state"])
        opt["state"] = {
            i: ({k: (torch.cat([s["last_optimizer_state"]["state"][i][k] for s in ordered], 0)
                     if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in st.items()}
                if i in indices else st)
            for i, st in opt["state"].items()}
        merged["last_optimizer_state"] = opt
    return merged


def load_merged_state(path: str, hints=()):
    """A complete checkpoint state dict (all E experts) from a checkpoint, the shared file of a
    sharded save, or any shard of a split set.

    This is what ``torch.load`` of a single-process checkpoint returns.
    """
    state = load_checkpoint_state(path)
    if is_sharded_checkpoint(state):
        return merge_shared_state(state, path, hints)
    if "expert_parallel" not in state:
        return state
    return merge_split_states([state] + [load_checkpoint_state(p) for p in split_set_paths(path)
                                         if os.path.abspath(p) != os.path.abspath(path)])
