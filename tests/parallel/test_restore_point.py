"""Every rank resumes from the same point, or the run is refused at model build: with a
node-local --save-dir, a rank lacking checkpoint_last.pt would train from scratch while the
others resume (fairseq only logs "No existing checkpoint found")."""

import argparse
import json

import torch.distributed as dist
import torch.multiprocessing as mp

from fairseq_taskmoe.checkpoints.args import restore_checkpoint_path
from fairseq_taskmoe.parallel.sharding import expert_parallel_from_args
from parallel import ep_harness as H


def _args(save_dir, restore_file="checkpoint_last.pt"):
    return argparse.Namespace(ddp_backend="legacy_ddp", optimizer="adam_ep",
                              load_checkpoint_on_all_dp_ranks=True, save_dir=str(save_dir),
                              restore_file=restore_file)


def _worker(rank, world, port, root, out):
    H.init_gloo(rank, world, port)
    try:
        results = {}
        for rank1_has_checkpoint in (False, True):  # one spawn for both cases: spawns are slow
            save_dir = root / f"case{int(rank1_has_checkpoint)}" / f"node{rank}"
            save_dir.mkdir(parents=True)
            if rank == 0 or rank1_has_checkpoint:
                (save_dir / "checkpoint_last.pt").write_bytes(b"x")
            dist.barrier()
            try:
                results[str(rank1_has_checkpoint)] = f"ok world {expert_parallel_from_args(_args(save_dir)).world}"
            except ValueError as e:
                results[str(rank1_has_checkpoint)] = str(e)
        (out / f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_ranks_must_agree_on_the_restore_point(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(_worker, args=(2, H.free_port(), tmp_path, out), nprocs=2, join=True)
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for r in results:  # rank 1 lacks checkpoint_last.pt: refused on every rank
        assert "exists on some ranks but not on rank 1" in r["False"], r
        assert "would train from scratch" in r["False"]
    assert [r["True"] for r in results] == ["ok world 2", "ok world 2"]


def test_restore_point_is_the_file_fairseq_would_load(tmp_path):
    """What each rank reports: fairseq's own choice (checkpoints.args.restore_checkpoint_path)."""
    assert restore_checkpoint_path(_args(tmp_path)) is None  # first launch: from scratch
    (tmp_path / "checkpoint_last.pt").write_bytes(b"x")
    assert restore_checkpoint_path(_args(tmp_path)) == str(tmp_path / "checkpoint_last.pt")
    assert restore_checkpoint_path(_args(tmp_path, "/x/ckpt.pt")) == "/x/ckpt.pt"
    assert restore_checkpoint_path(argparse.Namespace(path="m.pt")) is None  # generate: not training args
