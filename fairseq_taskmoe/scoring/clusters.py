"""The evaluation cluster of every test segment: segments that share an English string.

An en->xx segment belongs to the cluster of its English source, an xx->en segment to the
cluster of its English reference. prepare-data writes the key of each line of
``raw/{split}.en-xx.en`` to ``raw/{split}.en-xx.cluster`` (``data.split.cluster_key``); for a
corpus built before that file existed (or a ``data.sample`` view) the key is derived from the
English file by the same function, so both give the same clusters.
"""

from pathlib import Path
from typing import List, Tuple

from fairseq_taskmoe.data.split import cluster_key

STORED, DERIVED = "stored", "derived"


def _lines(path) -> List[str]:
    # read as fairseq_taskmoe.evaluate.read_lines reads references, so the counts agree
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def _prefix(data, subset, src, tgt) -> Path:
    """``raw/{subset}.en-xx`` of the pair (either order on disk); FileNotFoundError if absent."""
    for a, b in ((src, tgt), (tgt, src)):
        prefix = Path(data) / "raw" / f"{subset}.{a}-{b}"
        if prefix.with_name(prefix.name + ".en").is_file() or prefix.with_name(prefix.name + ".cluster").is_file():
            return prefix
    raise FileNotFoundError(f"no raw/{subset}.{src}-{tgt}.en (nor .cluster) in {data}: the English side "
                            "of the pair is needed for its cluster keys")


def cluster_keys(data, subset, src, tgt) -> Tuple[List[str], str]:
    """(one cluster key per segment of ``subset`` of ``src-tgt``, "stored" or "derived")."""
    if "en" not in (src, tgt):
        raise ValueError(f"{src}-{tgt}: clusters are defined by the English side; the pair has none")
    prefix = _prefix(data, subset, src, tgt)
    stored = prefix.with_name(prefix.name + ".cluster")
    english = prefix.with_name(prefix.name + ".en")
    if stored.is_file():
        keys = _lines(stored)
        if english.is_file():
            n = len(_lines(english))
            if n != len(keys):
                raise ValueError(f"{stored} has {len(keys)} keys but {english} has {n} lines")
        return keys, STORED
    return [cluster_key(line) for line in _lines(english)], DERIVED
