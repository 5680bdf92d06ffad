"""Per-sentence outputs saved next to a results JSON, so every table can be recomputed.

One gzip-compressed JSON object per line (``.jsonl.gz``), two kinds:

- ``{"kind": "references", "subset", "pair", "references": [...], "clusters": [...],
  "cluster_source": "stored" | "derived"}``: once per test set;
- ``{"kind": "hypotheses", "run", "subset", "pair", "hypotheses": [...]}``: once per scored
  model and test set.

Written atomically (a crashed run leaves the previous file) with gzip's mtime fixed at 0, so the
same outputs give the same bytes.
"""

import gzip
import io
import json
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

KINDS = ("references", "hypotheses")


def records_path(json_path) -> Path:
    """``quality.json`` -> ``quality.hyps.jsonl.gz`` (beside it)."""
    path = Path(json_path)
    return path.with_name(path.stem + ".hyps.jsonl.gz")


def write_records(path, records: Iterable[dict]) -> Path:
    from fairseq_taskmoe.checkpoints import atomic_write_bytes

    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        for record in records:
            if record.get("kind") not in KINDS:
                raise ValueError(f"record kind must be one of {', '.join(KINDS)}, got {record.get('kind')!r}")
            gz.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_records(path) -> Tuple[Dict[Tuple[str, str], dict], Dict[Tuple[str, str, str], List[str]]]:
    """(references by (subset, pair), hypotheses by (run, subset, pair)), lengths checked."""
    refs, hyps = {}, {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            record = json.loads(line)
            if record.get("kind") == "references":
                refs[(record["subset"], record["pair"])] = record
            elif record.get("kind") == "hypotheses":
                hyps[(record["run"], record["subset"], record["pair"])] = record["hypotheses"]
            else:
                raise ValueError(f"{path} line {n}: unknown record kind {record.get('kind')!r}")
    for (run, subset, pair), lines in hyps.items():
        ref = refs.get((subset, pair))
        if ref is None or len(ref["references"]) != len(lines):
            raise ValueError(f"{path}: {run} {subset} {pair} has {len(lines)} hypotheses but "
                             f"{'no' if ref is None else len(ref['references'])} references")
    return refs, hyps
