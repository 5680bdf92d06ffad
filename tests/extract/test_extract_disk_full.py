"""fairseq-taskmoe-extract onto a really full disk (tmpfs): exit 4, one line naming --out, nothing left."""
import os

import pytest

from fairseq_taskmoe.extract.cli import run_main

from disk_testlib import tiny_disk


@pytest.mark.parametrize("fmt,size_of_stock", [("stock", 0.3), ("ctranslate2", 1.5)])
def test_extract_on_a_full_disk(fmt, size_of_stock, task_task_ckpt, toy_data, tmp_path, capsys):
    """stock: torch.save runs out of space; ctranslate2 (float32): the converter's input fits, its
    model.bin does not (CTranslate2's own writer fails)."""
    probe = tmp_path / "probe"
    assert run_main([str(task_task_ckpt), "--tasks", "en-de", "--data", str(toy_data), "--out", str(probe),
                     "--format", "stock"]) == 0
    size_kb = int(os.path.getsize(probe / "checkpoint.pt") * size_of_stock / 1024)
    capsys.readouterr()
    with tiny_disk(tmp_path / "disk", size_kb) as disk:
        out = disk / "x"
        extra = ["--quantization", "float32"] if fmt == "ctranslate2" else []
        code = run_main([str(task_task_ckpt), "--tasks", "en-de", "--data", str(toy_data), "--out", str(out),
                         "--format", fmt, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 4
        assert err == [f"fairseq-taskmoe-extract: error: {out}"
                       + ("/checkpoint.pt" if fmt == "stock" else "") + ": disk full (no space left on device)"]
        assert os.listdir(disk) == []
