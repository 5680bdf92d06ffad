"""A view of a corpus with a small sample of an evaluation split, for quick scoring.

    python -m fairseq_taskmoe.data.sample --data data/loc8 --out demo/data --split test --n 100

``--out`` links every file of ``--data`` and adds ``{split}_sample{n}``: the first ``n``
sentences of each pair of ``split``, binarized and raw (``raw/{name}.en-xx.{en,xx}``, and the
cluster keys ``raw/{name}.en-xx.cluster`` where the split has them), so
``python -m fairseq_taskmoe.evaluate ... --data OUT --subset {name}`` scores the sample
against raw references like the whole split. The splits are ordered by a hash of the English
source (split.py), so the first ``n`` sentences are a random sample, the same one for every
direction of a pair and across runs. The corpus itself is never modified.
"""
import argparse
import sys
from pathlib import Path

from fairseq_taskmoe.checkpoints import atomic_dir


def sample_name(split, n):
    return "%s_sample%d" % (split, n)


def _pairs(data, split):
    """Language pairs (``en-xx``) that have a binarized ``split``."""
    return sorted({p.name.split(".")[1] for p in Path(data).glob("%s.*-*.*.idx" % split)})


def _write_subset(src_prefix, dst_prefix, n):
    from fairseq.data import indexed_dataset

    ds = indexed_dataset.MMapIndexedDataset(str(src_prefix))
    # Same token dtype as the source (fairseq-preprocess picked it from the vocabulary size).
    builder = indexed_dataset.MMapIndexedDatasetBuilder(str(dst_prefix) + ".bin", dtype=ds._index.dtype)
    for i in range(min(n, len(ds))):
        builder.add_item(ds[i])
    builder.finalize(str(dst_prefix) + ".idx")
    return min(n, len(ds))


def make_sample_view(data, out, split="test", n=100):
    """Build the view in ``out`` (replaced if it exists); returns ``{pair: sentences}``."""
    data, out = Path(data).resolve(), Path(out)
    pairs = _pairs(data, split)
    if not pairs:
        raise ValueError("--split %s: no binarized %s split in %s" % (split, split, data))
    if n < 1:
        raise ValueError("--n must be >= 1, got %d" % n)
    name = sample_name(split, n)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ValueError("--out %s exists and is not a directory; give a directory to (re)create" % out)
    if data == out.resolve() or out.resolve() in data.parents:
        raise ValueError("--out %s would replace --data %s; give a separate directory" % (out, data))
    # Built in a hidden sibling temp dir (umask mode), then swapped in: a reader never sees half a view.
    with atomic_dir(out, replace=True) as tmp:
        tmp = Path(tmp)
        (tmp / "raw").mkdir()
        for entry in data.iterdir():
            if entry.name != "raw":
                (tmp / entry.name).symlink_to(entry)
        for entry in (data / "raw").iterdir():
            (tmp / "raw" / entry.name).symlink_to(entry)
        counts = {}
        for pair in pairs:
            for lang in pair.split("-"):
                counts[pair] = _write_subset(data / ("%s.%s.%s" % (split, pair, lang)),
                                             tmp / ("%s.%s.%s" % (name, pair, lang)), n)
                raw = (data / "raw" / ("%s.%s.%s" % (split, pair, lang))).read_text(encoding="utf-8")
                lines = raw.splitlines(keepends=True)[: counts[pair]]
                (tmp / "raw" / ("%s.%s.%s" % (name, pair, lang))).write_text("".join(lines), encoding="utf-8")
            clusters = data / "raw" / ("%s.%s.cluster" % (split, pair))  # prepare-data's cluster keys
            if clusters.is_file():
                lines = clusters.read_text(encoding="utf-8").splitlines(keepends=True)[: counts[pair]]
                (tmp / "raw" / ("%s.%s.cluster" % (name, pair))).write_text("".join(lines), encoding="utf-8")
    return counts


def cli_main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fairseq_taskmoe.data.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="corpus built by fairseq-taskmoe-prepare-data")
    p.add_argument("--out", required=True, help="view directory to (re)create; links to --data plus the sample")
    p.add_argument("--split", default="test", help="evaluation split to sample (test, test_doc, ...)")
    p.add_argument("--n", type=int, default=100, help="sentences per language pair")
    args = p.parse_args(argv)
    try:
        counts = make_sample_view(args.data, args.out, args.split, args.n)
    except (ValueError, OSError) as exc:
        print("fairseq_taskmoe.data.sample: error: %s" % exc, file=sys.stderr)
        return 2
    print("%s: %s in %s (%d sentences)" % (sample_name(args.split, args.n), ",".join(sorted(counts)), args.out,
                                           sum(counts.values())))
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
