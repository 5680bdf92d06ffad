"""Issue 2: the plugin loads through --user-dir and installed; checkpoints load safely."""

import argparse
import os
import pickle
import subprocess
import sys

import pytest
import torch
from fairseq import checkpoint_utils, utils

from fairseq_taskmoe.checkpoints import UnsafeCheckpointError, load_checkpoint_safely
from taskmoe_testlib import PLUGIN_DIR, run_cli


def test_user_dir_and_installed_import_coexist():
    import fairseq_taskmoe

    # Installed (editable) and --user-dir point at the same package: fairseq must
    # recognise it instead of registering everything twice.
    assert os.path.dirname(fairseq_taskmoe.__file__) == str(PLUGIN_DIR)
    utils.import_user_module(argparse.Namespace(user_dir=str(PLUGIN_DIR)))
    utils.import_user_module(argparse.Namespace(user_dir=str(PLUGIN_DIR)))
    from fairseq.models import ARCH_MODEL_REGISTRY

    assert ARCH_MODEL_REGISTRY["transformer_taskmoe_tiny"].__name__ == "TransformerTaskMoEModel"


@pytest.fixture(scope="module")
def stock_checkpoint(toy_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("stock_ckpt")
    run_cli("fairseq-train", [
        toy_data, "--user-dir", PLUGIN_DIR, "--task", "translation_multi_simple_epoch",
        "--lang-pairs", "en-de,de-en", "--arch", "transformer_tiny", "--optimizer", "adam",
        "--lr", "1e-3", "--max-tokens", "400", "--max-update", "2", "--save-dir", save,
        "--num-workers", "0", "--no-progress-bar", "--no-epoch-checkpoints"])
    return save / "checkpoint_last.pt"


def test_user_dir_training_checkpoint_loads_with_fairseq_loader(stock_checkpoint):
    state = checkpoint_utils.load_checkpoint_to_cpu(str(stock_checkpoint))
    assert state["optimizer_history"][-1]["num_updates"] == 2
    assert any(k.startswith("encoder.layers.0") for k in state["model"])


def test_checkpoint_loads_in_fresh_process_without_env_override(stock_checkpoint):
    code = ("import fairseq_taskmoe; from fairseq import checkpoint_utils; "
            f"s = checkpoint_utils.load_checkpoint_to_cpu({str(stock_checkpoint)!r}); print('LOADED', len(s['model']))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_FORCE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOADED" in out.stdout


def test_without_plugin_torch_refuses_namespace(stock_checkpoint):
    # Documents why the plugin is needed: torch's default allowlist lacks Namespace.
    code = ("import torch; torch.load(%r, map_location='cpu')" % str(stock_checkpoint))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_FORCE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode != 0 and "Namespace" in out.stderr


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = Evil()
    evil.marker = marker
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": {}, "payload": evil}, f)
    # fairseq's own loader (torch.load default weights_only=True + our allowlist)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    # the plugin's loader, used by its tools, names the file and the reason
    with pytest.raises(UnsafeCheckpointError, match="refusing to load .*evil.pt"):
        load_checkpoint_safely(str(path))
    assert not marker.exists(), "pickle code ran"


def test_truncated_and_missing_checkpoint_errors(stock_checkpoint, tmp_path):
    data = stock_checkpoint.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint_safely(str(cut))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint_safely(str(tmp_path / "nope.pt"))


def test_refusal_names_the_blocked_global(tmp_path):
    evil = Evil()
    evil.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"payload": evil}, f)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint_safely(str(path))
    message = str(info.value)
    assert "system" in message and "the file is refused" in message and str(path) in message
    assert "weights_only=False" not in message and "\n" not in message
    assert not evil.marker.exists()


def test_unsafe_torch_env_warns_on_import_and_tools_refuse(monkeypatch):
    from fairseq_taskmoe.checkpoints import (
        EXIT_UNSAFE, UnsafeEnvironmentError, install_safe_globals, refuse_unsafe_torch_env, run,
    )

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.warns(RuntimeWarning, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 is set.*unset it"):
        install_safe_globals()
    with pytest.raises(UnsafeEnvironmentError):
        refuse_unsafe_torch_env()
    assert run("tool", lambda argv: 0) == EXIT_UNSAFE
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0")  # torch reads "0" as unset
    refuse_unsafe_torch_env()


def test_atomic_writes_honour_umask_and_leave_nothing_on_failure(tmp_path):
    import json

    from fairseq_taskmoe.checkpoints import atomic_dir, atomic_torch_save, atomic_write_json

    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_torch_save({"t": torch.ones(2)}, tmp_path / "b.pt")
        with atomic_dir(tmp_path / "d") as d:
            atomic_write_json(os.path.join(d, "c.json"), [1])
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.pt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    with pytest.raises(TypeError):  # not JSON-serialisable: the old file stays
        atomic_write_json(tmp_path / "a.json", {"x": object()})
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d", replace=True) as d:
            atomic_write_json(os.path.join(d, "c.json"), [2])
            raise RuntimeError("killed")
    with pytest.raises(FileExistsError):
        with atomic_dir(tmp_path / "d"):
            pass
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert json.loads((tmp_path / "d" / "c.json").read_text()) == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.pt", "d"]


def test_interrupted_swap_is_recovered_and_leftovers_reported(tmp_path):
    from fairseq_taskmoe.checkpoints import recover_dir

    (tmp_path / ".out.old-1234abcd").mkdir()
    (tmp_path / ".out.old-1234abcd" / "f").write_text("old")
    (tmp_path / ".out.tmp-5678abcd").mkdir()
    notes = recover_dir(tmp_path / "out")
    assert (tmp_path / "out" / "f").read_text() == "old"
    assert any("restored" in n for n in notes) and any(".out.tmp-5678abcd" in n for n in notes)


def test_cli_error_messages_name_the_path():
    import errno

    from fairseq_taskmoe.checkpoints import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, classify

    assert classify(OSError(errno.ENOSPC, "No space left on device", "/x/o.pt")) == (
        EXIT_ENVIRONMENT, "/x/o.pt: disk full (no space left on device)")
    assert classify(OSError(errno.EROFS, "Read-only file system", "/ro/o")) == (
        EXIT_ENVIRONMENT, "/ro/o: not writable (read-only file system)")
    assert classify(ValueError("--flag: bad\nvalue")) == (EXIT_BAD_INPUT, "--flag: bad value")
    assert classify(KeyError("bug")) is None  # unknown failures keep their traceback
