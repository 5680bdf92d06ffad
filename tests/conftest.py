"""Shared fixtures. Helper functions live in ``taskmoe_testlib`` (re-exported here)."""

import logging

import pytest
import torch

import fairseq_taskmoe  # noqa: F401  (registers the plugin, installs the safe loader)
from taskmoe_testlib import (  # noqa: F401
    BIN, LANG_PAIRS, LANGS, PLUGIN_DIR, REPO, binarize, multilingual_task_args, run_cli, train_args,
    write_toy_corpus,
)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def restore_root_logging():
    """Undo ``basicConfig(force=True)`` of CLIs run in-process: their handler keeps the test's
    captured stderr, and a later test logging through it got a 'Logging error' traceback."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """Binarized en<->{de,fr,es} toy corpus for translation_multi_simple_epoch."""
    root = tmp_path_factory.mktemp("toy")
    write_toy_corpus(root / "raw")
    return binarize(root / "raw", root / "bin")

