"""The hypothesis records that results carry: compressed, reproducible, checked on reading."""

import gzip

import pytest

from fairseq_taskmoe.scoring.records import read_records, records_path, write_records


def test_records_roundtrip_compressed_and_reproducible(tmp_path):
    path = records_path(tmp_path / "quality.json")
    assert path.name == "quality.hyps.jsonl.gz"
    records = [{"kind": "references", "subset": "test", "pair": "en-ja", "references": ["猫", "犬"],
                "clusters": ["k1", "k2"], "cluster_source": "stored"},
               {"kind": "hypotheses", "run": "task-moe.s1", "subset": "test", "pair": "en-ja", "hypotheses": ["猫", ""]}]
    write_records(path, records)
    first = path.read_bytes()
    write_records(path, records)
    assert path.read_bytes() == first and gzip.decompress(first).count(b"\n") == 2
    refs, hyps = read_records(path)
    assert refs[("test", "en-ja")]["clusters"] == ["k1", "k2"]
    assert hyps == {("task-moe.s1", "test", "en-ja"): ["猫", ""]}
    write_records(path, records[1:] + [{**records[0], "references": ["猫"]}])
    with pytest.raises(ValueError, match="has 2 hypotheses but 1 references"):
        read_records(path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="record kind must be one of"):
        write_records(path, [{"kind": "scores"}])
    assert path.read_bytes() == before  # a failed write leaves the last file
