"""Fixtures for the serving tests: one toy model with both MoE sides task-routed, its extracts.

The model trains once per session (40 updates, as tests/extract does) so that the
translations are not all one token; the extracts and exports are built once too.
"""

import pytest

from fairseq_taskmoe.extract import extract
from taskmoe_testlib import multilingual_task_args, run_cli, train_args


def train(toy_data, save_dir, enc_routing, max_update):
    run_cli("fairseq-train", [
        *multilingual_task_args(toy_data),
        *train_args(save_dir, max_update=max_update, extra=[
            "--lr", "0.005", "--max-tokens", "1000", "--disable-validation",
            "--moe-encoder-routing", enc_routing, "--moe-decoder-routing", "task"]),
    ])
    return save_dir / "checkpoint_last.pt"


@pytest.fixture(scope="session")
def serve_ckpt(toy_data, tmp_path_factory):
    """Both MoE sides task-routed (by target language): exportable to CTranslate2."""
    return train(toy_data, tmp_path_factory.mktemp("serve_task_task"), "task", 40)


@pytest.fixture(scope="session")
def serve_extracts(serve_ckpt, toy_data, tmp_path_factory):
    """en-de extracts of ``serve_ckpt``: {"plugin", "stock", "float32", "int8"} -> directory."""
    root = tmp_path_factory.mktemp("serve_extracts")
    out = {}
    for name, fmt, quant in (("plugin", "plugin", None), ("stock", "stock", None),
                             ("float32", "ctranslate2", "float32"), ("int8", "ctranslate2", "int8")):
        out[name] = root / name
        extract(str(serve_ckpt), ["en-de"], str(out[name]), fmt=fmt, data_dir=str(toy_data),
                quantization=quant)
    return out


@pytest.fixture(scope="session")
def serve_token_ckpt(toy_data, tmp_path_factory):
    """Token-routed encoder (3 updates: only its layout matters, for the refusal tests)."""
    return train(toy_data, tmp_path_factory.mktemp("serve_token_task"), "token", 3)
