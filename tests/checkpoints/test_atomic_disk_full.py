"""Atomic writers on a really full disk (tmpfs): ENOSPC naming the path, nothing left behind."""
import errno
import os

import pytest
import torch

from fairseq_taskmoe.checkpoints import atomic_torch_save
from fairseq_taskmoe.checkpoints.atomic import atomic_torch_save_many

from disk_testlib import tiny_disk

BIG = {"w": torch.zeros(512 * 1024)}  # 2 MiB of float32
SMALL = {"w": torch.zeros(16)}


def test_torch_save_on_a_full_disk_names_the_file(tmp_path):
    with tiny_disk(tmp_path / "disk", 256) as disk:
        with pytest.raises(OSError) as info:
            atomic_torch_save(BIG, disk / "ckpt.pt")  # torch alone: RuntimeError "unexpected pos"
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(disk / "ckpt.pt")
        assert os.listdir(disk) == []


def test_a_set_is_written_whole_or_not_at_all(tmp_path):
    with tiny_disk(tmp_path / "disk", 256) as disk:
        with pytest.raises(OSError) as info:
            atomic_torch_save_many([(SMALL, disk / "s.ep0-of-2.pt"), (BIG, disk / "s.ep1-of-2.pt")])
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(disk / "s.ep1-of-2.pt")
        assert os.listdir(disk) == []  # shard 0 is not left to block a rerun
        atomic_torch_save_many([(SMALL, disk / "a.pt"), (SMALL, disk / "b.pt")])
        assert sorted(os.listdir(disk)) == ["a.pt", "b.pt"]
        assert torch.equal(torch.load(disk / "b.pt", weights_only=True)["w"], SMALL["w"])
