"""The shard-set lifecycle of sharded expert-parallel saves (parallel/shards.py), on 2 gloo
ranks and in one process:

- each rank's --save-dir on its own "node" (rank 1's differs from rank 0's, and only rank 0's
  holds checkpoint files): several saves with fairseq's copies and --keep-last-epochs
  rotation keep every set a checkpoint references on both nodes; once the files are
  gathered beside the checkpoint, every referenced checkpoint loads at W = 2 and W = 1;
- a rank whose shard write fails: every rank raises the same error naming it, at once, the
  new set leaves no file behind and the previous checkpoint still loads;
- collection at W = 1 and after a world-size change, and despite an unreadable checkpoint.
"""

import glob
import logging
import os
import shutil
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from parallel import ep_harness as H
from fairseq_taskmoe.checkpoints import REF_KEY
from fairseq_taskmoe.parallel.optimizer import ExpertParallelAdam
from fairseq_taskmoe.parallel.shards import ShardSaveError, live_sets, write_shard

SAVES = 6
BEST_EPOCH = 2  # the validation loss is best here, so checkpoint_best.pt stays at epoch 2
KEEP_LAST_EPOCHS = 2
STALE_W4, KEPT_W4 = "4444" * 4, "5555" * 4  # sets of an earlier run at W = 4


def _sets(directory, rank=None):
    pattern = f"experts-*-rank-{'*' if rank is None else rank}.pt"
    return {os.path.basename(p).split("-")[1] for p in glob.glob(os.path.join(directory, pattern))}


def _ref(path):
    return torch.load(path, weights_only=True)["model"][REF_KEY]


def _fairseq_save(save_dir, epoch, state):
    """What fairseq's save_checkpoint does on rank 0 (no_epoch_checkpoints off): write
    checkpoint<epoch>.pt through NAME.tmp + rename, copy it to checkpoint_best.pt (when best)
    and checkpoint_last.pt, then remove epoch checkpoints beyond --keep-last-epochs."""
    first = os.path.join(save_dir, f"checkpoint{epoch}.pt")
    torch.save(state, first + ".tmp")
    os.replace(first + ".tmp", first)
    for name in (["checkpoint_best.pt"] if epoch == BEST_EPOCH else []) + ["checkpoint_last.pt"]:
        shutil.copyfile(first, os.path.join(save_dir, name))
    for old in range(1, epoch - KEEP_LAST_EPOCHS + 1):
        if os.path.lexists(os.path.join(save_dir, f"checkpoint{old}.pt")):
            os.remove(os.path.join(save_dir, f"checkpoint{old}.pt"))


def _full_state(model, opt, world):
    """Every param and Adam moment as W = 1 holds them (rank 0; gathers on all ranks)."""
    params = {n: H.full(n, p, world) for n, p in model.named_parameters()}
    moments = {n: H.full(n, opt.state[p]["exp_avg"], world) for n, p in model.named_parameters()}
    return params, moments


def _rotation_worker(rank, world, port, root):
    H.init_gloo(rank, world, port)
    try:
        save_dir = root / f"node{rank}"  # node-local: rank 1 never sees rank 0's files
        model = H.build(save_dir=save_dir, gather=False)
        opt = ExpertParallelAdam(model.parameters(), lr=0.01)
        expected, seen = {}, []
        for epoch in range(1, SAVES + 1):
            model.zero_grad()
            H.train_step(model, opt, rank, world)
            full = _full_state(model, opt, world)
            opt.consolidate_state_dict()  # every rank: its shard; rank 0 decides what is live
            if rank == 0:
                expected[epoch] = full
                _fairseq_save(str(save_dir), epoch, {"model": model.state_dict(),
                                                     "last_optimizer_state": opt.state_dict()})
            seen.append(sorted(_sets(save_dir)))
        if rank == 0:
            torch.save(expected, root / "expected.pt")
        torch.save(seen, root / f"seen{rank}.pt")
    finally:
        dist.destroy_process_group()


def _load_worker(rank, world, port, root, names):
    """W = 2 from the gathered directory: each rank loads its rows of every checkpoint."""
    H.init_gloo(rank, world, port)
    try:
        expected = torch.load(root / "expected.pt", weights_only=True)
        for name, epoch in names.items():
            state = torch.load(root / "node0" / name, weights_only=True)
            model = H.build(seed=99, save_dir=root / "node0", gather=False)
            model.load_state_dict(state["model"])
            opt = ExpertParallelAdam(model.parameters(), lr=0.01)
            opt.load_state_dict(state["last_optimizer_state"])
            params, moments = _full_state(model, opt, world)
            if rank == 0:
                for n in params:
                    torch.testing.assert_close(params[n], expected[epoch][0][n], msg=f"{name} {n}")
                    torch.testing.assert_close(moments[n], expected[epoch][1][n], msg=f"{name} {n}")
    finally:
        dist.destroy_process_group()


def _plant_w4_sets(root):
    """An earlier W = 4 run left a set no checkpoint references and one that one does."""
    for rank in range(4):
        for set_id in (STALE_W4, KEPT_W4):
            node = root / ("node1" if rank % 2 else "node0")
            write_shard(str(node), set_id, rank, 4, {}, {})
    write_shard(str(root / "node0"), STALE_W4, 1, 4, {}, {})  # a stray copy of rank 1's file
    ref = {"set_id": KEPT_W4, "world_size": 4, "files": [], "dir": str(root / "node0")}
    torch.save({"model": {REF_KEY: ref}}, root / "node0" / "checkpoint_w4.pt")


def test_node_local_save_dirs_keep_every_referenced_set(tmp_path):
    torch.set_num_threads(1)
    _plant_w4_sets(tmp_path)
    mp.spawn(_rotation_worker, args=(2, H.free_port(), tmp_path), nprocs=2, join=True)
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    names = {"checkpoint_best.pt": BEST_EPOCH, "checkpoint_last.pt": SAVES,
             **{f"checkpoint{e}.pt": e for e in range(SAVES - KEEP_LAST_EPOCHS + 1, SAVES + 1)}}
    assert sorted(p.name for p in node0.glob("checkpoint*.pt")) == sorted([*names, "checkpoint_w4.pt"])
    assert not list(node1.glob("checkpoint*.pt"))  # only rank 0 writes checkpoint files
    referenced = {_ref(node0 / n)["set_id"] for n in names}
    assert len(referenced) == 3  # best (epoch 2), epoch 5, epoch 6 (= last)
    # The decision of save 6 was taken before it: checkpoint4.pt still referenced the set
    # of epoch 4, so at most that one unreferenced set is left, on both nodes alike.
    on0, on1 = _sets(node0, 0) - {KEPT_W4}, _sets(node1, 1) - {KEPT_W4}
    assert on0 == on1 and referenced <= on0 and len(on0 - referenced) <= 1, (on0, on1, referenced)
    seen0, seen1 = torch.load(tmp_path / "seen0.pt"), torch.load(tmp_path / "seen1.pt")
    # (with each rank judging from its own dir, rank 1 kept only the newest set: best was lost)
    planted = {KEPT_W4, STALE_W4}
    assert all(len(set(s) - planted) >= 2 for s in seen1[1:]), seen1
    assert [set(s) - planted for s in seen0] == [set(s) - planted for s in seen1]
    # The W = 4 run's sets: the unreferenced one is gone from both dirs (every rank's file,
    # ranks 2 and 3 by whichever rank saw them), the referenced one is whole.
    assert STALE_W4 not in _sets(node0, 0) | _sets(node0, 2) | _sets(node1)
    assert _sets(node0, 1) == {STALE_W4}  # a copy of rank 1's file in rank 0's dir: rank 1's business
    assert {KEPT_W4} <= _sets(node0, 0) & _sets(node0, 2) & _sets(node1, 1) & _sets(node1, 3)

    # Gather (docs/PARALLEL.md): rank 1's shard files go beside the checkpoint files.
    for f in node1.glob("experts-*.pt"):
        shutil.copy2(f, node0 / f.name)
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    for name, epoch in names.items():  # W = 1, every referenced checkpoint
        state = torch.load(node0 / name, weights_only=True)
        single = H.build(seed=7)
        single.load_state_dict(state["model"])
        opt = ExpertParallelAdam(single.parameters(), lr=0.01)
        opt.load_state_dict(state["last_optimizer_state"])
        for n, p in single.named_parameters():
            torch.testing.assert_close(p.detach(), expected[epoch][0][n], msg=f"{name} {n}")
            torch.testing.assert_close(opt.state[p]["exp_avg"], expected[epoch][1][n], msg=f"{name} {n}")
    mp.spawn(_load_worker, args=(2, H.free_port(), tmp_path, names), nprocs=2, join=True)


def _failing_worker(rank, world, port, root):
    H.init_gloo(rank, world, port)
    try:
        model = H.build(save_dir=root / f"node{rank}", gather=False)
        opt = ExpertParallelAdam(model.parameters(), lr=0.01)
        H.train_step(model, opt, rank, world)
        opt.consolidate_state_dict()
        params = _full_state(model, opt, world)[0]
        if rank == 0:
            torch.save({"model": model.state_dict(), "last_optimizer_state": opt.state_dict()},
                       root / "node0" / "checkpoint_last.pt")
            torch.save(params, root / "expected.pt")
        model.zero_grad()
        H.train_step(model, opt, rank, world)
        if rank == 1:  # the next save's directory cannot be written (a file stands in the way)
            (root / "blocker").write_text("")
            H.plan_of(model).save_dir = str(root / "blocker" / "node1")
        start = time.monotonic()
        try:
            opt.consolidate_state_dict()
            outcome = "saved"
        except ShardSaveError as err:
            outcome = str(err)
        plan = H.plan_of(model)
        torch.save({"outcome": outcome, "seconds": time.monotonic() - start,
                    "pending": plan.pending_ref}, root / f"outcome{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_a_failed_shard_write_fails_every_rank_and_keeps_the_previous_checkpoint(tmp_path):
    torch.set_num_threads(1)
    ctx = mp.spawn(_failing_worker, args=(2, H.free_port(), tmp_path), nprocs=2, join=False)
    deadline = time.monotonic() + 120  # a hang (the old barrier) fails here, not at CI's timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("a rank is still waiting after another rank's shard write failed")
    outcomes = [torch.load(tmp_path / f"outcome{r}.pt", weights_only=True) for r in range(2)]
    for o in outcomes:
        assert o["outcome"].startswith("expert parallel: checkpoint not saved: rank 1 could not "
                                       "write its expert shard (")
        assert "blocker" in o["outcome"] and "rank 0 could not" not in o["outcome"]
        assert "previous checkpoint is unchanged" in o["outcome"]
        assert o["seconds"] < 30  # the brief's bound; it is one all-gather after the write
        assert o["pending"] is None  # rank 0 has nothing to put in a checkpoint file
    node0 = tmp_path / "node0"
    previous = _ref(node0 / "checkpoint_last.pt")["set_id"]
    assert _sets(node0) == {previous} and _sets(tmp_path / "node1") == {previous}  # rank 0's new file removed
    shutil.copy2(tmp_path / "node1" / f"experts-{previous}-rank-1.pt", node0)
    single = H.build(seed=5)
    single.load_state_dict(torch.load(node0 / "checkpoint_last.pt", weights_only=True)["model"])
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    for n, p in single.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], msg=n)


def _stamp(path, t):
    os.utime(path, (t, t))


def test_w1_collects_every_rank_file_of_unreferenced_sets(tmp_path):
    """A W = 1 run (adam_ep) in a directory of W = 2 and W = 4 sets: its save deletes all
    files of the sets no checkpoint references; the referenced set stays whole."""
    for set_id, world in (("aa" * 8, 2), ("bb" * 8, 2), ("cc" * 8, 4)):
        for rank in range(world):
            write_shard(str(tmp_path), set_id, rank, world, {}, {})
    ref = {"set_id": "bb" * 8, "world_size": 2, "files": [], "dir": str(tmp_path)}
    torch.save({"model": {REF_KEY: ref}}, tmp_path / "checkpoint_last.pt")
    model = H.build(save_dir=tmp_path)
    opt = ExpertParallelAdam(model.parameters(), lr=0.01)
    H.train_step(model, opt, 0, 1)
    opt.consolidate_state_dict()  # fairseq calls it right before every save, at W = 1 too
    assert sorted(p.name for p in tmp_path.glob("experts-*")) == [
        f"experts-{'bb' * 8}-rank-0.pt", f"experts-{'bb' * 8}-rank-1.pt"]
    assert "_expert_shards" not in model.state_dict()  # W = 1 still saves a complete model


def test_an_unreadable_checkpoint_is_reported_and_pins_only_older_sets(tmp_path, caplog):
    old, new = "01" * 8, "02" * 8
    now = time.time()
    write_shard(str(tmp_path), old, 0, 1, {}, {})
    _stamp(tmp_path / f"experts-{old}-rank-0.pt", now - 300)
    (tmp_path / "checkpoint_best.pt").write_bytes(b"PK\x03\x04 truncated by a full disk")
    _stamp(tmp_path / "checkpoint_best.pt", now - 200)  # may reference `old`, never `new`
    write_shard(str(tmp_path), new, 0, 1, {}, {})
    _stamp(tmp_path / f"experts-{new}-rank-0.pt", now - 100)
    with caplog.at_level(logging.WARNING, logger="fairseq_taskmoe.parallel.shards"):
        live = live_sets(str(tmp_path))
    assert live == {old}
    assert "checkpoint_best.pt" in caplog.text and "cannot read" in caplog.text
    model = H.build(save_dir=tmp_path)
    opt = ExpertParallelAdam(model.parameters(), lr=0.01)
    opt.consolidate_state_dict()
    assert _sets(tmp_path) == {old}  # collection went on for the newer set
    os.remove(tmp_path / "checkpoint_best.pt")  # repaired / deleted: the old set goes too
    opt.consolidate_state_dict()
    assert _sets(tmp_path) == set()
