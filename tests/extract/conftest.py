"""Fixtures for the extraction tests: tiny trained models, in-process forward passes.

Each routing setup is trained once per session (40 updates at lr 0.005, a few
seconds) so the gates are trained and the translations are not all one token.
"""

import pytest

from taskmoe_testlib import multilingual_task_args, run_cli, train_args


def _train(toy_data, save_dir, enc_routing, dec_routing, extra=()):
    run_cli("fairseq-train", [
        *multilingual_task_args(toy_data),
        *train_args(save_dir, max_update=40, extra=[
            "--lr", "0.005", "--max-tokens", "1000", "--disable-validation",
            "--moe-encoder-routing", enc_routing, "--moe-decoder-routing", dec_routing, *extra]),
    ])
    return save_dir / "checkpoint_last.pt"


@pytest.fixture(scope="session")
def token_task_ckpt(toy_data, tmp_path_factory):
    """Token-routed encoder, task-routed decoder (the paper's best mix)."""
    return _train(toy_data, tmp_path_factory.mktemp("tok_task"), "token", "task")


@pytest.fixture(scope="session")
def task_task_ckpt(toy_data, tmp_path_factory):
    """Both sides task-routed: extractable to a stock transformer."""
    return _train(toy_data, tmp_path_factory.mktemp("task_task"), "task", "task")
