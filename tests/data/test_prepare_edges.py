"""prepare-data edges (issue 23): --docs that yields nothing, and a kill that leaves no temp dir."""
import os
import signal

import pytest

from fairseq_taskmoe.checkpoints.cli import Terminated, exit_on_signals
from fairseq_taskmoe.data import binarize as binarize_mod
from fairseq_taskmoe.data.prepare import _check_doc_splits, cli_main

from .test_prepare_cli import _argv


def _splits(**doc_counts):
    return {lang: {"valid_doc": ["s"] * v, "test_doc": ["s"] * t} for lang, (v, t) in doc_counts.items()}


# (row, splits, languages, doc pairs read, expected error fragment or None)
DOC_ROWS = [
    ("no pages at all", _splits(de=(0, 0)), ["de"], 0, "yielded no translated pages"),
    ("pages, but no eval sentence in any language", _splits(de=(0, 0), fr=(3, 0)), ["de", "fr"], 50,
     "gave no evaluation sentences (valid_doc/test_doc) for any of de,fr"),
    ("one language without eval sentences: a warning", _splits(de=(2, 2), fr=(0, 0)), ["de", "fr"], 50, None),
]


@pytest.mark.parametrize("row", DOC_ROWS, ids=[r[0] for r in DOC_ROWS])
def test_doc_split_rows(row, caplog):
    _, splits, langs, pairs, fragment = row
    if fragment:
        with pytest.raises(ValueError, match="--docs: ") as info:
            _check_doc_splits(splits, langs, ["fakehelp"], pairs)
        assert fragment in str(info.value)
    else:
        _check_doc_splits(splits, langs, ["fakehelp"], pairs)
        assert "fr gets 0 valid_doc and 0 test_doc sentences" in caplog.text


def test_sigterm_unwinds_and_leaves_no_temp_dir(fake_wheel_cache, tmp_path, capsys, monkeypatch):
    previous = exit_on_signals("t")
    try:
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises in this (main) thread
    finally:
        signal.signal(signal.SIGTERM, previous)

    def killed(*args, **kwargs):  # a SIGTERM arriving while the corpus is being binarized
        raise Terminated()

    monkeypatch.setattr(binarize_mod, "_write_lines", killed)
    assert cli_main(_argv(fake_wheel_cache, tmp_path / "o")) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("fairseq-taskmoe-prepare-data: terminated")
    assert os.listdir(tmp_path) == ["cache"]  # no .o.tmp-* left
    assert signal.getsignal(signal.SIGTERM) is previous  # the in-process call restored the handler
