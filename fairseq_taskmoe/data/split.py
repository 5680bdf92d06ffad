"""Deduplication and the train/valid/test split.

The split of a pair is a function of its *English* side only (a hash of the normalised
source), the same for every language: an English string that is in test for German is in
test for Japanese too, and never in any train set. Normalisation folds case, spacing and
punctuation so "Save", "save" and "Save." cannot straddle two splits.
"""
import hashlib
import re
from collections import Counter, OrderedDict

SPLITS = ("train", "valid", "test")
# Documentation sentences get their own evaluation splits, so UI strings and sentences are
# scored apart; their train pairs join the one train split.
DOC_SPLITS = ("valid_doc", "test_doc")
# A documentation test "sentence" has at least this many English words (help titles such as
# "Copy files" are UI-like; they train but are not scored as sentences).
DOC_MIN_EVAL_WORDS = 6
_NON_WORD = re.compile(r"[\W_]+")


def source_key(src):
    return _NON_WORD.sub(" ", src.casefold()).strip()


def _hash(key, salt):
    return int(hashlib.sha1((salt + key).encode("utf-8")).hexdigest()[:12], 16)


def cluster_key(src):
    """The evaluation cluster of an English string: 12 hex digits of a hash of its normalised form.

    Every evaluation segment whose English side (the source of en->xx, the reference of xx->en)
    normalises to the same key belongs to one cluster, across all languages: the split is a
    function of that key, so an English string is tested in every language that has it, and its
    segments are correlated. A bootstrap resamples clusters, not segments
    (fairseq_taskmoe.stats.bootstrap). Written next to each evaluation split as
    ``raw/{split}.en-xx.cluster`` (binarize.py); derivable from ``raw/{split}.en-xx.en`` for
    corpora built before the file existed.
    """
    return "%012x" % _hash(source_key(src), "cluster:")


def assign_split(src, valid_percent, test_percent):
    """'valid', 'test' or 'train' from 10,000 hash buckets of the normalised English source."""
    bucket = _hash(source_key(src), "split:") % 10000
    if bucket < valid_percent * 100:
        return "valid"
    if bucket < (valid_percent + test_percent) * 100:
        return "test"
    return "train"


def split_pairs(pairs, valid_percent=3.0, test_percent=3.0, max_eval=500, min_eval_words=0):
    """Split one language's (en, xx) pairs into {"train": [...], "valid": [...], "test": [...]}.

    train keeps every distinct (en, xx) pair; valid/test keep one reference per English
    string (its most frequent translation) and at most ``max_eval`` strings. Eval-bucket
    strings beyond the cap are dropped rather than moved to train, which would leak them, and
    so are eval-bucket strings of fewer than ``min_eval_words`` English words.
    """
    if not (0 <= valid_percent and 0 <= test_percent and valid_percent + test_percent < 100):
        raise ValueError("--valid-percent/--test-percent must be >= 0 and sum to < 100")
    out = {name: [] for name in SPLITS}
    seen = set()
    eval_targets = {"valid": OrderedDict(), "test": OrderedDict()}
    for src, tgt in pairs:
        if (src, tgt) in seen:
            continue
        seen.add((src, tgt))
        split = assign_split(src, valid_percent, test_percent)
        if split == "train":
            out["train"].append((src, tgt))
        elif len(src.split()) >= min_eval_words:
            eval_targets[split].setdefault(src, Counter())[tgt] += 1
    for split, by_src in eval_targets.items():
        chosen = [(src, counts.most_common(1)[0][0]) for src, counts in by_src.items()]
        # Cap by a second hash, not by order, so the kept subset does not favour one package.
        chosen.sort(key=lambda p: _hash(source_key(p[0]) + "\x00" + p[0], "cap:"))
        out[split] = chosen[:max_eval]
    return out


def split_kinds(pairs_by_kind, valid_percent=3.0, test_percent=3.0, max_eval=500, with_doc=False):
    """One language's ``(splits, train_doc)`` from ``{"ui": [...], "doc": [...]}``.

    train = ui train + doc train; valid/test hold UI strings only; with ``with_doc``,
    valid_doc/test_doc hold documentation sentences (possibly none for this language). Both
    kinds use the same English-side hash, so no English string is in train and in any eval
    split, whichever kind it came from. ``train_doc`` counts the doc pairs in train.
    """
    ui = split_pairs(pairs_by_kind.get("ui", ()), valid_percent, test_percent, max_eval)
    out = {"train": ui["train"], "valid": ui["valid"], "test": ui["test"]}
    if with_doc:
        doc = split_pairs(pairs_by_kind.get("doc", ()), valid_percent, test_percent, max_eval,
                          min_eval_words=DOC_MIN_EVAL_WORDS)
        seen = set(out["train"])
        out["train"] = out["train"] + [p for p in doc["train"] if p not in seen]
        out["valid_doc"], out["test_doc"] = doc["valid"], doc["test"]
        return out, len(doc["train"])
    return out, 0
