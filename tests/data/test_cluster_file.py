"""Cluster keys written next to every evaluation split (raw/{split}.en-xx.cluster) and read by
fairseq_taskmoe.scoring.clusters, which derives them for corpora built without the file."""

import pytest

from fairseq_taskmoe.data.binarize import binarize
from fairseq_taskmoe.data.split import cluster_key, split_pairs
from fairseq_taskmoe.scoring.clusters import cluster_keys

from .conftest import synthetic_pairs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("bin")
    splits = {lang: split_pairs(synthetic_pairs(lang), 10, 10, 500) for lang in ("de", "fr")}
    binarize(splits, str(out), vocab_size=120)
    return out, splits


def test_cluster_file_keys_the_english_side_in_every_direction(built):
    out, splits = built
    for split in ("valid", "test"):
        de, source = cluster_keys(out, split, "en", "de")
        assert source == "stored" and de == [cluster_key(src) for src, _ in splits["de"][split]]
        assert cluster_keys(out, split, "de", "en") == (de, "stored")  # xx->en: its English reference
        fr, _ = cluster_keys(out, split, "fr", "en")
        # the same English strings are held out for every language: one key, one cluster
        assert set(de) == set(fr) and len(set(de)) == len(de)


def test_clusters_are_derived_for_a_corpus_without_the_file(built, tmp_path):
    out, _ = built
    stored, _ = cluster_keys(out, "test", "en", "de")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "test.en-de.en").write_bytes((out / "raw" / "test.en-de.en").read_bytes())
    assert cluster_keys(tmp_path, "test", "de", "en") == (stored, "derived")
    (tmp_path / "raw" / "test.en-de.cluster").write_text("abc\n")
    with pytest.raises(ValueError, match="has 1 keys but .*test.en-de.en has"):
        cluster_keys(tmp_path, "test", "en", "de")
    with pytest.raises(FileNotFoundError, match="no raw/test.en-fr.en"):
        cluster_keys(tmp_path, "test", "en", "fr")
    with pytest.raises(ValueError, match="defined by the English side"):
        cluster_keys(tmp_path, "test", "de", "fr")


def test_cluster_key_folds_what_the_split_folds():
    assert len({cluster_key(s) for s in ("Save", "save", "Save.", " SAVE! ")}) == 1
    assert cluster_key("Save") != cluster_key("Save as") and len(cluster_key("x")) == 12
