"""Sharded expert-parallel checkpoints: writing shard sets and collecting stale ones.

Layout (see docs/PARALLEL.md; reading a set: ``checkpoints/shards.py``). With
W > 1 ranks a save writes

- ``checkpoint_last.pt`` (or whichever names fairseq picks), by fairseq on
  rank 0: everything but the expert tensors and their Adam moments, plus a
  reference ``model["_expert_shards"] = {set_id, world_size, files, dir}``;
- ``experts-<set_id>-rank-<r>.pt`` in rank r's ``--save-dir``: its E/W experts
  of every MoE layer and their Adam moments, keyed by parameter name.

One save (:func:`save_shard_set`, collective, from ``adam_ep``'s
``consolidate_state_dict`` on every rank right before rank 0 writes):

1. rank 0 draws the new set id and decides which existing sets are live (those
   a checkpoint file in *its* save dir references); one broadcast gives every
   rank the same decision. Only rank 0 writes checkpoint files, so a rank on
   another node with a node-local ``--save-dir`` sees none and must not judge
   from its own directory.
2. every rank writes its shard atomically, catching a failure;
3. an all-gather of the outcomes stands where a barrier was: if any rank
   failed, every rank removes its new file and raises the same error naming
   the failing ranks. Rank 0 then never writes the checkpoint file, so nothing
   references the new set and the previous checkpoint stays whole;
4. every rank deletes its own files of dead sets, and files of ranks >= W
   (left by a run at a larger world size) that it sees.

Saves that write no set (W = 1, ``--moe-gather-checkpoint``) still collect
(:func:`collect_stale_sets`): a W = 1 run in a directory of W = 2 sets deletes
every rank's files of the sets no checkpoint references any more, since one
process owns the directory.
"""

import glob
import logging
import os
import uuid
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.distributed as dist

from fairseq_taskmoe.checkpoints import atomic_torch_save
from fairseq_taskmoe.checkpoints.shards import SHARD_FILE, shard_file_name, shard_ref

logger = logging.getLogger(__name__)

# Files that may reference a set: fairseq's checkpoint*.pt (last, best, epoch, update,
# best_<metric>_<score>, any --checkpoint-suffix) and the crash.pt its trainer saves on an error.
REFERRING_FILES = ("checkpoint*.pt", "crash.pt")


class ShardSaveError(RuntimeError):
    """A rank could not write its expert shard: the save is abandoned on every rank."""


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


def referenced_sets(save_dir: str) -> Tuple[set, List[Tuple[str, str]]]:
    """(set ids the checkpoint files of ``save_dir`` reference, [(unreadable file, error)])."""
    ids, unreadable = set(), []
    paths = sorted({p for pattern in REFERRING_FILES for p in glob.glob(os.path.join(save_dir, pattern))})
    for path in paths:
        try:
            # mmap: only the small reference dict is read, not the shared weights
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except FileNotFoundError:
            continue  # removed since the glob (fairseq's --keep-* rotation): references nothing
        except Exception as err:  # noqa: BLE001  (any reason: see live_sets)
            first = (str(err).strip().splitlines() or [""])[0]
            unreadable.append((path, f"{type(err).__name__}: {first}"))
            continue
        ref = shard_ref(state.get("model")) if isinstance(state, dict) else None
        if ref:
            ids.add(ref["set_id"])
    return ids, unreadable


def _set_times(save_dir: str) -> Dict[str, float]:
    """Set id -> the oldest modification time of its shard files in ``save_dir``."""
    times = {}
    for path in glob.glob(os.path.join(save_dir, "experts-*-rank-*.pt")):
        m = SHARD_FILE.match(os.path.basename(path))
        try:
            t = os.stat(path).st_mtime
        except OSError:
            continue
        if m:
            times[m["set_id"]] = min(t, times.get(m["set_id"], t))
    return times


def live_sets(save_dir: str) -> set:
    """Sets to keep, judged from ``save_dir`` alone (rank 0's decision).

    A checkpoint file that cannot be read is warned about and may reference any
    set written before it; those are kept, later ones are still collected.
    Why that is safe: a set is always on disk before a file references it (every
    rank has written its shard before rank 0 writes the checkpoint, and fairseq's
    copies to checkpoint_best.pt / checkpoint<epoch>.pt come later still), so an
    unreadable file can only reference a set at least as old as itself. Such a
    file is usually one rank 0 is still writing: with
    --write-checkpoints-asynchronously fairseq writes straight to the final name
    from a background thread, and that file references the previous save's set,
    which must survive. (Synchronous saves go through ``NAME.pt.tmp`` and a
    rename, which the pattern ``checkpoint*.pt`` never sees half-written.) A
    file that stays corrupt only pins the sets older than it, so collection goes
    on and the stale storage is bounded. Treating it as referencing nothing
    would delete the set of the checkpoint being written asynchronously.
    """
    ids, unreadable = referenced_sets(save_dir)
    if not unreadable:
        return ids
    newest = 0.0
    for path, error in unreadable:
        try:
            newest = max(newest, os.stat(path).st_mtime)
        except OSError:
            newest = float("inf")  # vanished: cannot date it, keep every set
        logger.warning("expert shards: cannot read %s (%s); keeping the shard sets written before it, "
                       "which it may reference. Delete or repair the file to let them be collected",
                       path, error)
    return ids | {s for s, t in _set_times(save_dir).items() if t <= newest}


def collect_garbage(save_dir: str, rank: int, world: int, keep: Optional[str],
                    live: Optional[Iterable[str]]):
    """Delete the shard files in ``save_dir`` of sets not in ``live`` (never ``keep``) that
    this rank owns: its own rank's, and those of ranks >= ``world`` (no live rank owns them;
    at W = 1 that is every other rank's). Files another rank may still own are its business.
    ``live`` None: no decision could be made, keep everything. A file that cannot be
    deleted is warned about; the save goes on."""
    if live is None:
        return
    live = set(live) | ({keep} if keep else set())
    for path in glob.glob(os.path.join(save_dir, "experts-*-rank-*.pt")):
        m = SHARD_FILE.match(os.path.basename(path))
        if not m or m["set_id"] in live:
            continue
        owner = int(m["rank"])
        if owner != rank and owner < world:
            continue
        try:
            os.remove(path)
        except FileNotFoundError:
            pass  # another rank sharing the directory deleted it (files of ranks >= W)
        except OSError as err:
            logger.warning("expert shards: cannot delete stale shard file %s (%s)", path, err)


def _decide(save_dir: str, rank: int, world: int, fresh_id: bool):
    """(new set id or None, live set ids): rank 0 decides from its save dir, every rank gets it."""
    decision = None
    if rank == 0:
        try:
            live = sorted(live_sets(save_dir))
        except Exception as err:  # noqa: BLE001  (the other ranks wait for the broadcast)
            logger.warning("expert shards: cannot tell which shard sets %s still needs (%s); "
                           "deleting none this time", save_dir, err)
            live = None
        decision = (uuid.uuid4().hex[:16] if fresh_id else None, live)
    if world > 1:
        box = [decision]
        dist.broadcast_object_list(box, src=0)
        decision = box[0]
    return decision


def collect_stale_sets(save_dir: Optional[str], rank: int, world: int):
    """Collective when W > 1: delete shard sets no checkpoint in rank 0's save dir references
    (saves that write no set: W = 1, --moe-gather-checkpoint)."""
    _, live = _decide(save_dir or "", rank, world, fresh_id=False)
    if save_dir:
        collect_garbage(save_dir, rank, world, None, live)


def save_shard_set(save_dir: str, rank: int, world: int, params: Dict[str, torch.Tensor],
                   moments: Dict[str, Dict[str, torch.Tensor]], num_updates=None) -> dict:
    """Collective on all W ranks: write this rank's shard of a new set, agree that every
    rank's is on disk, collect stale sets; returns the reference rank 0's file will carry.

    Raises :class:`ShardSaveError` on every rank when any rank failed to write (see the
    module docstring, steps 1-4).
    """
    set_id, live = _decide(save_dir, rank, world, fresh_id=True)
    path = os.path.join(save_dir, shard_file_name(set_id, rank))
    ref, error = None, None
    try:
        ref = write_shard(save_dir, set_id, rank, world, params, moments, num_updates)
    except Exception as err:  # noqa: BLE001  (reported on every rank below)
        error = " ".join(f"{type(err).__name__}: {err}".split())
    outcomes = [None] * world
    if world > 1:
        dist.all_gather_object(outcomes, error)
    else:
        outcomes = [error]
    failed = {r: e for r, e in enumerate(outcomes) if e is not None}
    if failed:
        if ref is not None:  # this rank's file of a set nothing will reference
            try:
                os.remove(path)
            except OSError:
                pass
        raise ShardSaveError(
            "expert parallel: checkpoint not saved: "
            + "; ".join(f"rank {r} could not write its expert shard ({e})" for r, e in failed.items())
            + ". The previous checkpoint is unchanged; free space or fix --save-dir on the failing "
              "rank's node and resume")
    collect_garbage(save_dir, rank, world, set_id, live)
    return ref
