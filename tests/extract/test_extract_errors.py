"""fairseq-taskmoe-extract refuses bad input with a clear message and a non-zero exit."""

import os
import pickle
import subprocess

import pytest
import torch

from fairseq_taskmoe.checkpoints import current_umask
from fairseq_taskmoe.extract import extract
from fairseq_taskmoe.extract.cli import run_main as extract_main
from fairseq_taskmoe.checkpoints import UnsafeCheckpointError
from taskmoe_testlib import BIN


def run_main(argv, capsys):
    code = extract_main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_unknown_task_lists_known_ones(token_task_ckpt, tmp_path, capsys):
    code, err = run_main([token_task_ckpt, "--tasks", "en-xx", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "--tasks en-xx" in err and "known tasks: de, en, es, fr" in err
    assert not (tmp_path / "o").exists()
    code, err = run_main([token_task_ckpt, "--tasks", "ende", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "src-tgt" in err


def test_existing_out_needs_force(token_task_ckpt, toy_data, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    argv = [token_task_ckpt, "--tasks", "en-de", "--out", out, "--data", toy_data]
    code, err = run_main(argv, capsys)
    assert code == 2 and "--force" in err and (out / "keep.txt").exists()
    # --force replaces only an earlier extract: a directory without extract.json is kept
    code, err = run_main(argv + ["--force"], capsys)
    assert code == 2 and "not an earlier extract" in err and (out / "keep.txt").exists()
    (out / "keep.txt").unlink()
    out.rmdir()
    assert run_main(argv, capsys)[0] == 0
    (out / "stale.txt").write_text("x")
    code, _ = run_main(argv + ["--force"], capsys)
    assert code == 0 and not (out / "stale.txt").exists() and (out / "checkpoint.pt").exists()
    # nothing left behind next to --out; files readable per the umask, not 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    umask = current_umask()
    assert (out / "checkpoint.pt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask


def test_stock_refused_for_token_side_and_several_tasks(token_task_ckpt, task_task_ckpt, toy_data,
                                                        tmp_path):
    with pytest.raises(ValueError, match="--format stock: encoder layers \\[1\\] are still MoE"):
        extract(str(token_task_ckpt), ["en-de"], str(tmp_path / "a"), fmt="stock", data_dir=str(toy_data))
    with pytest.raises(ValueError, match="--format stock takes exactly one task"):
        extract(str(task_task_ckpt), ["en-de", "en-fr"], str(tmp_path / "b"), fmt="stock")
    with pytest.raises(ValueError, match="--format must be one of plugin, stock"):
        extract(str(task_task_ckpt), ["en-de"], str(tmp_path / "c"), fmt="onnx")
    assert not any(tmp_path.iterdir())


def test_no_task_routed_side_refused(token_task_ckpt, tmp_path):
    state = torch.load(token_task_ckpt, weights_only=True)
    state["cfg"]["model"].moe_decoder_routing = "token"
    gate = state["model"].pop("decoder.layers.1.moe.router.task_gate.weight")  # (N, E)
    dim = state["model"]["decoder.layers.1.moe.experts.fc2_bias"].size(1)
    state["model"]["decoder.layers.1.moe.router.wg.weight"] = torch.zeros(gate.size(1), dim)  # (E, D)
    path = tmp_path / "token_only.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="no task-routed MoE layer"):
        extract(str(path), ["en-de"], str(tmp_path / "o"))


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_truncated_missing_and_malicious_files(token_task_ckpt, tmp_path, capsys):
    cut = tmp_path / "cut.pt"
    data = token_task_ckpt.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    code, err = run_main([cut, "--tasks", "en-de", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "truncated or corrupt" in err and "cut.pt" in err
    code, err = run_main([tmp_path / "nope.pt", "--tasks", "en-de", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "checkpoint not found" in err
    evil = Evil()
    evil.marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"model": {}, "payload": evil}, f)
    with pytest.raises(UnsafeCheckpointError):
        extract(str(bad), ["en-de"], str(tmp_path / "o"))
    code, err = run_main([bad, "--tasks", "en-de", "--out", tmp_path / "o"], capsys)
    assert code == 3 and "refusing to load" in err
    assert not evil.marker.exists() and not (tmp_path / "o").exists()


def test_sharded_checkpoint_hook(tmp_path):
    # A shard name goes through fairseq_taskmoe.checkpoints.shards, which names what is missing.
    shard = tmp_path / "checkpoint_last.ep0-of-2.pt"
    torch.save({"model": {}, "expert_parallel": {"rank": 0, "world_size": 2, "set_id": "x",
                                                 "num_updates": 0}}, shard)
    with pytest.raises(FileNotFoundError, match="incomplete shard set"):
        extract(str(shard), ["en-de"], str(tmp_path / "o"))


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([str(BIN / "fairseq-taskmoe-extract"), str(tmp_path / "nope.pt"), "--tasks",
                           "en-de", "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr
