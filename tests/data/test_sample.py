import os

import pytest
from fairseq.data import indexed_dataset

from fairseq_taskmoe.data.binarize import binarize
from fairseq_taskmoe.data.sample import cli_main, make_sample_view
from fairseq_taskmoe.data.split import split_pairs

from .conftest import synthetic_pairs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    binarize({lang: split_pairs(synthetic_pairs(lang), 10, 10, 500) for lang in ("de", "fr")}, str(out), 120)
    return out


def _snapshot(d):
    return {p: os.stat(os.path.join(r, p)).st_mtime_ns for r, _, fs in os.walk(d) for p in fs}


def test_sample_view_holds_the_first_n_sentences_and_leaves_the_corpus_alone(corpus, tmp_path):
    before = _snapshot(corpus)
    counts = make_sample_view(corpus, tmp_path / "view", "test", 7)
    assert counts == {"en-de": 7, "en-fr": 7}
    view = tmp_path / "view"
    for lang in ("en", "de"):
        full = indexed_dataset.MMapIndexedDataset(str(corpus / ("test.en-de.%s" % lang)))
        part = indexed_dataset.MMapIndexedDataset(str(view / ("test_sample7.en-de.%s" % lang)))
        assert len(part) == 7 and all((part[i] == full[i]).all() for i in range(7))
        raw = (corpus / "raw" / ("test.en-de.%s" % lang)).read_text(encoding="utf-8").splitlines()
        assert (view / "raw" / ("test_sample7.en-de.%s" % lang)).read_text(encoding="utf-8").splitlines() == raw[:7]
    assert (view / "train.en-de.de.bin").resolve() == (corpus / "train.en-de.de.bin").resolve()
    # the sample keeps its segments' cluster keys (what the cluster bootstrap resamples)
    from fairseq_taskmoe.scoring.clusters import cluster_keys

    keys = (corpus / "raw" / "test.en-de.cluster").read_text(encoding="utf-8").splitlines()
    assert cluster_keys(view, "test_sample7", "en", "de") == (keys[:7], "stored")
    assert _snapshot(corpus) == before
    # n beyond the split keeps the whole split; rebuilding replaces the view
    assert make_sample_view(corpus, view, "test", 10_000)["en-de"] == len(raw)


def test_sample_cli_errors(corpus, tmp_path, capsys):
    assert cli_main(["--data", str(corpus), "--out", str(tmp_path / "v"), "--split", "nosuch"]) == 2
    assert "--split nosuch" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()
    (tmp_path / "f").write_text("keep")
    assert cli_main(["--data", str(corpus), "--out", str(tmp_path / "f")]) == 2
    assert "is not a directory" in capsys.readouterr().err and (tmp_path / "f").read_text() == "keep"
    for out in (corpus, corpus.parent):
        assert cli_main(["--data", str(corpus), "--out", str(out)]) == 2
        assert "would replace --data" in capsys.readouterr().err and (corpus / "dict.txt").exists()
