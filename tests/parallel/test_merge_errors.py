"""fairseq-taskmoe-merge-shards through the one CLI error wrapper: a real full disk (tmpfs) and a
read-only target give one line and exit 4, a split leaves no partial set behind, and the unsafe
torch environment variable is refused."""

import os
import subprocess

import torch

from fairseq_taskmoe.checkpoints.cli import run
from fairseq_taskmoe.parallel.merge import main

from disk_testlib import tiny_disk

PROG = "fairseq-taskmoe-merge-shards"


def _complete_checkpoint(path, experts=4, d=64):
    model = {f"encoder.layers.1.moe_layer.experts.{n}": torch.randn(experts, d, d)
             for n in ("fc1_weight", "fc2_weight")}
    model["encoder.embed_tokens.weight"] = torch.randn(8, d)
    torch.save({"model": model, "args": None}, path)
    return path


def test_split_onto_a_full_disk_leaves_no_shard(tmp_path, capsys):
    ckpt = _complete_checkpoint(tmp_path / "checkpoint_last.pt")
    # room for about one of the two ~66 KB shards: the second write fails
    with tiny_disk(tmp_path / "disk", 96) as disk:
        code = run(PROG, main, ["split", str(ckpt), "--world-size", "2", "--out-dir", str(disk)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 4, err
        assert len(err) == 1 and err[0].startswith(f"{PROG}: error: {disk}/") and "disk full" in err[0]
        assert os.listdir(disk) == []  # no shard 0 left to block the rerun


def test_split_onto_a_read_only_target_is_one_line(tmp_path, capsys):
    ckpt = _complete_checkpoint(tmp_path / "checkpoint_last.pt")
    with tiny_disk(tmp_path / "ro", 256) as disk:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)  # a real EROFS
        code = run(PROG, main, ["split", str(ckpt), "--world-size", "2", "--out-dir", str(disk)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 4, err
        assert len(err) == 1 and err[0].startswith(f"{PROG}: error: {disk}") and "read-only" in err[0], err
        assert os.listdir(disk) == []


def test_merge_shards_refuses_the_unsafe_environment(tmp_path, capsys, monkeypatch):
    ckpt = _complete_checkpoint(tmp_path / "checkpoint_last.pt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    assert run(PROG, main, ["split", str(ckpt), "--world-size", "2"]) == 3
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_last.pt"]
