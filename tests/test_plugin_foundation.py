"""Issue 2: the plugin loads through --user-dir and installed; checkpoints load safely."""

import argparse
import os
import pickle
import subprocess
import sys

import pytest
import torch
from fairseq import checkpoint_utils, utils

from fairseq_taskmoe.safe_load import UnsafeCheckpointError, load_checkpoint_safely
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
