"""Sharded expert-parallel checkpoints: each rank writes its own experts.

Layout (see docs/PARALLEL.md). With W > 1 ranks a save writes

- ``checkpoint_last.pt`` (or whichever names fairseq picks), by fairseq on
  rank 0: everything but the expert tensors and their Adam moments (the
  shared part, fairseq's moe branch calls it ``-shared.pt``), plus a reference
  ``model["_expert_shards"] = {set_id, world_size, files, dir}``;
- ``experts-<set_id>-rank-<r>.pt`` beside it, by rank r: its E/W experts of
  every MoE layer and their Adam moments, keyed by parameter name.

Every save writes a new shard set and each rank syncs its file before rank 0
renames the new shared file into place, so a kill at any moment leaves the
previous checkpoint whole (fairseq's moe branch overwrites
``checkpoint_last-rank-<r>.pt`` in place, which a kill mid-save leaves as a
mix of two steps). Shard sets that no ``checkpoint*.pt`` of the directory
references any more are deleted at the next save. Copies fairseq makes
(``checkpoint_best.pt``, ``checkpoint<epoch>.pt``) reference the same shards.
"""

import glob
import os
import re
import uuid
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from fairseq_taskmoe.checkpoints import atomic_torch_save, load_checkpoint_safely

REF_KEY = "_expert_shards"  # in the shared file's model state dict
SHARD_FILE = re.compile(r"^experts-(?P<set_id>[0-9a-f]+)-rank-(?P<rank>\d+)\.pt$")


def shard_file_name(set_id: str, rank: int) -> str:
    return f"experts-{set_id}-rank-{rank}.pt"


def new_set_id() -> str:
    """A fresh id, the same on every rank (rank 0 draws it)."""
    box = [uuid.uuid4().hex[:16] if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def write_shard(save_dir: str, set_id: str, rank: int, world: int, params: Dict[str, torch.Tensor],
                moments: Dict[str, Dict[str, torch.Tensor]], num_updates=None) -> dict:
    """Write this rank's shard (atomic) and return the shared file's reference to the set."""
    os.makedirs(save_dir, exist_ok=True)
    state = {"expert_parallel": {"rank": rank, "world_size": world, "set_id": set_id,
                                 "num_updates": num_updates, "kind": "experts"},
             "model": {k: v.detach().cpu() for k, v in params.items()},
             "optimizer_state": {k: {s: (t.detach().cpu() if torch.is_tensor(t) else t)
                                     for s, t in st.items()} for k, st in moments.items()}}
    atomic_torch_save(state, os.path.join(save_dir, shard_file_name(set_id, rank)))
    return {"set_id": set_id, "world_size": world, "num_updates": num_updates,
            "files": [shard_file_name(set_id, r) for r in range(world)],
            "dir": os.path.abspath(save_dir)}


def referenced_sets(save_dir: str) -> Optional[set]:
    """Set ids referenced by the ``checkpoint*.pt`` files of ``save_dir``; None if one is unreadable."""
    ids = set()
    for path in glob.glob(os.path.join(save_dir, "checkpoint*.pt")):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # being written or copied by rank 0 right now: keep everything
            return None
        ref = state.get("model", {}).get(REF_KEY) if isinstance(state, dict) else None
        if ref:
            ids.add(ref["set_id"])
    return ids


def collect_garbage(save_dir: str, rank: int, keep: str):
    """Delete this rank's shard files of sets no checkpoint references (never ``keep``)."""
    live = referenced_sets(save_dir)
    if live is None:
        return
    for path in glob.glob(os.path.join(save_dir, f"experts-*-rank-{rank}.pt")):
        m = SHARD_FILE.match(os.path.basename(path))
        if m and m["set_id"] != keep and m["set_id"] not in live:
            os.remove(path)


def shard_ref(model_state: dict) -> Optional[dict]:
    ref = model_state.get(REF_KEY) if isinstance(model_state, dict) else None
    return ref if isinstance(ref, dict) else None


def resolve_shard_dir(ref: dict, hints: List[str]) -> str:
    """The directory holding every file of the set: the hints first, then the dir recorded at save."""
    tried = []
    for d in [*hints, ref.get("dir")]:
        if not d or d in tried:
            continue
        tried.append(d)
        if all(os.path.isfile(os.path.join(d, f)) for f in ref["files"]):
            return d
    raise FileNotFoundError(
        f"expert shards of checkpoint set {ref['set_id']} ({', '.join(ref['files'])}) not found in "
        f"{' or '.join(tried)}; keep them beside the checkpoint they belong to")


class ShardReader:
    """Reads the experts of a shard set, one rank's file at a time, cached."""

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
