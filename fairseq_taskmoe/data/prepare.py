"""fairseq-taskmoe-prepare-data: build an English-centric multilingual corpus offline.

    python -m fairseq_taskmoe.data.prepare --out data/loc8

Packages are downloaded once into --cache-dir (never installed); their gettext catalogs
are parsed, cleaned, split by English source hash, encoded with one shared sentencepiece
model and binarised for fairseq's translation_multi_simple_epoch task. See docs/DATA.md.
"""
import argparse
import datetime
import errno
import logging
import os
import re
import shutil
import signal
import sys
import time

from fairseq_taskmoe.checkpoints import atomic_dir, recover_dir
from fairseq_taskmoe.checkpoints.cli import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, exit_on_signals

from .binarize import binarize
from .card import summary_table, write_card
from .clean import normalize_lang
from .corpus import Corpus
from .sources import (DEFAULT_DEBIAN, DEFAULT_DOCS, DEFAULT_PACKAGES, FetchError, describe, fetch_debian,
                      fetch_pypi, refuse_reserved)
from .split import DOC_MIN_EVAL_WORDS, DOC_SPLITS, SPLITS, split_kinds

logger = logging.getLogger("fairseq_taskmoe.data.prepare")

# The eight languages with the most clean training pairs from DEFAULT_PACKAGES (measured).
DEFAULT_LANGS = ("de", "es", "fr", "it", "ja", "ko", "pt_BR", "zh_Hans")


def get_parser():
    p = argparse.ArgumentParser(prog="fairseq-taskmoe-prepare-data", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="data/loc8", help="output directory (built in a sibling temp dir, then renamed)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--langs", default=",".join(DEFAULT_LANGS),
                   help="comma-separated target languages (English is always the hub), or 'all' for every "
                        "language reaching --min-pairs")
    p.add_argument("--min-pairs", type=int, default=5000, help="minimum training pairs per language")
    p.add_argument("--vocab-size", type=int, default=8000, help="shared sentencepiece vocabulary size")
    p.add_argument("--packages", default=",".join(DEFAULT_PACKAGES),
                   help="comma-separated pip requirement specs (NAME or NAME==VERSION) to mine")
    p.add_argument("--debian", action=argparse.BooleanOptionalAction, default=False,
                   help="also mine Debian packages' .mo files (apt-get download + dpkg-deb -x)")
    p.add_argument("--debian-packages", default=",".join(DEFAULT_DEBIAN), help="Debian packages for --debian")
    p.add_argument("--docs", action=argparse.BooleanOptionalAction, default=False,
                   help="also mine sentence-length pairs from the translated desktop help in --doc-packages "
                        "(Debian, apt-get download); adds valid_doc/test_doc splits")
    p.add_argument("--doc-packages", default=",".join(DEFAULT_DOCS),
                   help="Debian packages whose usr/share/help pages --docs aligns (LibreOffice is refused)")
    p.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "fairseq_taskmoe", "packages"),
                   help="where downloaded archives are kept")
    p.add_argument("--offline", action="store_true", help="never download; fail if a package is not cached")
    p.add_argument("--valid-percent", type=float, default=3.0, help="hash buckets (%% of English strings) for valid")
    p.add_argument("--test-percent", type=float, default=3.0, help="hash buckets (%% of English strings) for test")
    p.add_argument("--max-eval-pairs", type=int, default=500, help="cap on valid and on test pairs per language")
    p.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                   help="fairseq-preprocess workers")
    return p


def _requested_langs(value):
    if value.strip().lower() == "all":
        return None
    langs = []
    for code in filter(None, (c.strip() for c in value.split(","))):
        lang = normalize_lang(code)
        if lang is None or lang == "en":
            raise ValueError("--langs: %r is not a language code we can use; give codes like de, pt_BR, "
                             "zh_Hans, sr_Latn (English is the hub, not a target)" % code)
        langs.append(lang)
    if not langs:
        raise ValueError("--langs is empty; give e.g. --langs de,fr or --langs all")
    return sorted(set(langs))


_DEB_NAME = re.compile(r"[a-z0-9][a-z0-9+.\-]+")


def _package_list(value, flag, debian):
    names = [s.strip() for s in value.split(",") if s.strip()]
    for name in names:
        refuse_reserved(name, flag)
        if debian and not _DEB_NAME.fullmatch(name):
            raise ValueError("%s: %r is not a Debian package name (lower case, digits, + - .)" % (flag, name))
    return names


def _validate(args):
    if args.vocab_size < 100:
        raise ValueError("--vocab-size must be >= 100, got %d" % args.vocab_size)
    if args.min_pairs < 1:
        raise ValueError("--min-pairs must be >= 1, got %d" % args.min_pairs)
    if args.max_eval_pairs < 1:
        raise ValueError("--max-eval-pairs must be >= 1, got %d" % args.max_eval_pairs)
    # A --force run killed between its two renames left the old corpus aside: put it back first.
    for note in recover_dir(args.out, lambda path: os.path.isfile(os.path.join(path, "data_card.json"))):
        logger.warning(note)
    if os.path.exists(args.out) and not args.force:
        raise ValueError("--out %s already exists; pass --force to replace it" % args.out)
    return _requested_langs(args.langs)


def _select(splits, requested, min_pairs, explicit):
    """Languages to keep; an explicitly requested language that is missing or small is an error."""
    available = {lang: s["train"] for lang, s in splits.items()}
    listing = ", ".join("%s (%d)" % (l, len(p)) for l, p in sorted(available.items(), key=lambda x: -len(x[1])))
    if requested is None:
        return [l for l in sorted(available) if len(available[l]) >= min_pairs]
    keep = []
    for lang in requested:
        n = len(available.get(lang, ()))
        if n >= min_pairs:
            keep.append(lang)
        elif explicit:
            raise ValueError("--langs: %s has %d training pairs (< --min-pairs %d). Available languages "
                             "(training pairs): %s" % (lang, n, min_pairs, listing))
        else:
            logger.warning("dropping %s: %d training pairs < --min-pairs %d", lang, n, min_pairs)
    return keep


def _check_doc_splits(splits, langs, doc_packages, doc_pairs):
    """--docs must give documentation sentences: refuse when there are none at all, warn per
    language whose valid_doc / test_doc would be empty (its doc scores would silently be missing)."""
    if not doc_pairs:
        raise ValueError("--docs: the help packages (--doc-packages %s) yielded no translated pages; "
                         "valid_doc/test_doc would be empty. Check the package names (they must ship "
                         "translated help), or leave --docs out" % ",".join(doc_packages))
    empty = [l for l in langs if not splits[l]["valid_doc"] or not splits[l]["test_doc"]]
    if len(empty) == len(langs):
        raise ValueError("--docs: the help packages (--doc-packages %s) gave no evaluation sentences "
                         "(valid_doc/test_doc) for any of %s; add help packages that are translated "
                         "into them, or leave --docs out" % (",".join(doc_packages), ",".join(langs)))
    for lang in empty:
        logger.warning("--docs: %s gets %d valid_doc and %d test_doc sentences; its documentation "
                       "scores will be missing", lang, len(splits[lang]["valid_doc"]),
                       len(splits[lang]["test_doc"]))


def build(args, progress):
    start = time.time()
    requested = _validate(args)
    explicit = args.langs != get_parser().get_default("langs")
    specs = _package_list(args.packages, "--packages", debian=False)
    debs = _package_list(args.debian_packages, "--debian-packages", debian=True) if args.debian else []
    docs = _package_list(args.doc_packages, "--doc-packages", debian=True) if args.docs else []
    if not specs and not debs and not docs:
        raise ValueError("--packages is empty and --debian/--docs are off: nothing to mine")

    sources = []
    deb_cache = os.path.join(args.cache_dir, "debian")
    for spec in progress(specs, desc="fetch", unit="pkg"):
        sources.append(describe(fetch_pypi(spec, args.cache_dir, args.offline), spec.split("==")[0]))
    for deb in progress(debs, desc="fetch (debian)", unit="pkg"):
        sources.append(describe(fetch_debian(deb, deb_cache, args.offline), deb))
    for deb in progress(docs, desc="fetch (docs)", unit="pkg"):
        src = describe(fetch_debian(deb, deb_cache, args.offline), deb)
        src.kind = "doc"
        sources.append(src)

    corpus = Corpus()
    source_rows = []
    for src in progress(sources, desc="read catalogs and help", unit="pkg"):
        read, corrupt = corpus.add_archive(src)
        source_rows.append(dict(name=src.name, version=src.version, licence=src.licence, kind=src.kind,
                                archive=os.path.basename(src.archive), catalogs=read, corrupt=corrupt,
                                pairs_by_lang=dict(sorted(corpus.added[src.name].items()))))

    with_doc = bool(docs)
    all_langs = set(corpus.pairs["ui"]) | set(corpus.pairs["doc"])
    splits, train_doc = {}, {}
    for lang in sorted(all_langs):
        splits[lang], train_doc[lang] = split_kinds(
            {kind: corpus.pairs[kind].get(lang, ()) for kind in corpus.pairs},
            args.valid_percent, args.test_percent, args.max_eval_pairs, with_doc=with_doc)
    langs = _select(splits, requested, args.min_pairs, explicit)
    if not langs:
        raise ValueError("no language reaches --min-pairs %d; lower it or add --packages" % args.min_pairs)
    if with_doc:
        _check_doc_splits(splits, langs, docs, sum(len(p) for p in corpus.pairs["doc"].values()))

    out = os.path.abspath(args.out)
    # Built in a hidden sibling temp dir (umask mode), renamed into place; with --force the old
    # tree is pushed aside and removed only once the new one is there. Nothing is left on failure.
    with atomic_dir(out, replace=args.force) as tmp:
        chosen = {lang: splits[lang] for lang in langs}
        _, vocab = binarize(chosen, tmp, args.vocab_size, workers=args.workers, progress=progress)
        for lang in langs:
            shutil.copyfile(os.path.join(tmp, "dict.txt"), os.path.join(tmp, "dict.%s.txt" % lang))
        with open(os.path.join(tmp, "langs.txt"), "w") as fh:
            fh.write("\n".join(["en"] + langs) + "\n")
        with open(os.path.join(tmp, "lang_pairs.txt"), "w") as fh:
            fh.write(",".join(p for l in langs for p in ("en-" + l, l + "-en")) + "\n")
        names = SPLITS + (DOC_SPLITS if with_doc else ())
        counts = {l: dict({s: len(chosen[l][s]) for s in names}, **({"train_doc": train_doc[l]} if with_doc else {}))
                  for l in langs}
        card = dict(  # "languages" are the targets; English is the hub
            name=os.path.basename(out), languages=langs, counts=counts, sources=source_rows,
            dropped=dict(corpus.dropped), corrupt_files=corpus.corrupt_files,
            unnamed_catalog_langs=dict(corpus.skipped_langs),
            all_languages_train_pairs={l: len(s["train"]) for l, s in sorted(splits.items())},
            valid_percent=args.valid_percent, test_percent=args.test_percent, max_eval=args.max_eval_pairs,
            vocab_size=vocab, vocab_size_requested=args.vocab_size, min_pairs=args.min_pairs,
            splits=list(names), doc_min_eval_words=DOC_MIN_EVAL_WORDS if with_doc else None,
            built_at=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            seconds=time.time() - start, command=" ".join(["fairseq-taskmoe-prepare-data"] + sys.argv[1:]),
        )
        write_card(tmp, card)
    return out, counts, source_rows, time.time() - start


_IO_REASONS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
               errno.EACCES: "not writable (permission denied)", errno.EPERM: "not writable (not permitted)",
               errno.ENOTDIR: "a path component is not a directory"}


def io_error_message(exc, out):
    """One line for an OSError while building: what happened and the path (or --out)."""
    path = exc.filename or out
    reason = _IO_REASONS.get(exc.errno, exc.strerror or str(exc))
    return "cannot write %s: %s (--out %s; nothing was written there)" % (path, reason, out)


def cli_main(argv=None):
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO, force=True)
    # `kill` (SIGTERM) unwinds like ctrl-C: the hidden .OUT.tmp-* directory is removed, not left behind.
    previous = exit_on_signals("fairseq-taskmoe-prepare-data")
    try:
        return _cli(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _cli(argv):
    args = get_parser().parse_args(argv)
    try:
        from tqdm import tqdm as progress
    except ImportError:  # progress bars are a nicety
        def progress(it, **_):
            return it
    try:
        out, counts, sources, seconds = build(args, progress)
    except (ValueError, FetchError) as exc:
        print("fairseq-taskmoe-prepare-data: error: %s" % exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print("fairseq-taskmoe-prepare-data: error: %s" % io_error_message(exc, args.out), file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # the temp output is gone (atomic_dir's finally)
        killed = isinstance(exc, Terminated)
        print("fairseq-taskmoe-prepare-data: %s; --out %s was not written" % (
            "terminated" if killed else "interrupted", args.out), file=sys.stderr)
        return EXIT_TERMINATED if killed else EXIT_INTERRUPTED
    print()
    print(summary_table(counts))
    print("\n%d packages: %s" % (len(sources), ", ".join("%s %s (%s)" % (s["name"], s["version"], s["licence"]) for s in sources)))
    print("wrote %s in %.0f s; fairseq: --lang-pairs $(cat %s/lang_pairs.txt)" % (out, seconds, out))
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
