"""Shared sentencepiece model + fairseq binarisation in translation_multi_simple_epoch layout.

Layout written to ``out``::

    spm.model, spm.vocab                 one model for every language
    dict.txt, dict.{lang}.txt            the same joined dictionary under every name
    {split}.en-xx.{en,xx}.{bin,idx}      one binarised pair per language; fairseq's
                                         MultilingualDatasetManager also reads it for xx-en
    raw/{split}.en-xx.{en,xx}            detokenised text of every split but train, for BLEU
    raw/{split}.en-xx.cluster            the English side's cluster key per line (split.cluster_key)

Splits are train, valid, test, and with documentation sources valid_doc, test_doc.
"""
import errno
import logging
import os
import random
import shutil
from pathlib import Path

from .split import cluster_key

logger = logging.getLogger(__name__)

SRC = "en"


def pair_file(data, split, src, tgt, lang):
    """The binarized prefix holding ``lang`` of direction src->tgt (either direction's files:
    the layout above stores en-xx once); FileNotFoundError if there is none."""
    for a, b in ((src, tgt), (tgt, src)):
        prefix = Path(data) / f"{split}.{a}-{b}.{lang}"
        if prefix.with_suffix(prefix.suffix + ".idx").is_file():
            return prefix
    raise FileNotFoundError(f"no binarized {split} data for {src}-{tgt} in {data}")


def train_spm(texts, model_prefix, vocab_size, max_sentences=300_000, seed=1):
    """Train a unigram model on unique strings; input is sampled to keep 2-core runs short."""
    import sentencepiece as spm

    uniq = sorted(set(texts))
    random.Random(seed).shuffle(uniq)
    uniq = uniq[:max_sentences]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(uniq),
        model_prefix=model_prefix,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=0.9995,  # CJK: keep rare ideographs as <unk> rather than blow the vocab
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        num_threads=os.cpu_count() or 1,
        # fairseq's Dictionary adds <s> <pad> </s> <unk> itself; ids here do not matter.
        bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1,
        hard_vocab_limit=False,  # small languages sets: do not fail if fewer pieces exist
        minloglevel=2,
    )
    return model_prefix + ".model"


def _spm_io(fn, out):
    """Run a sentencepiece call; a failure on a full disk becomes OSError(ENOSPC, path).

    sentencepiece reports a short write as RuntimeError ("basic_ios::clear", "could not parse
    ModelProto"), which names neither the cause nor the file.
    """
    try:
        return fn()
    except (RuntimeError, OSError) as exc:
        if shutil.disk_usage(out).free < (1 << 20):
            raise OSError(errno.ENOSPC, "No space left on device", out) from exc
        raise


def write_fairseq_dict(spm_vocab_path, dict_path):
    """fairseq dict from the spm vocab: every piece, count 1 (fairseq only needs the order)."""
    with open(spm_vocab_path, encoding="utf-8") as fin, open(dict_path, "w", encoding="utf-8") as fout:
        for line in fin:
            piece = line.split("\t")[0]
            if piece in ("<unk>", "<s>", "</s>", "<pad>"):
                continue
            fout.write("%s 1\n" % piece)


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line.replace("\n", " ") + "\n")


def binarize(splits_by_lang, out, vocab_size, workers=1, progress=None):
    """Encode and binarise ``{lang: {split: [(en, xx), ...]}}`` into ``out``.

    Splits are "train", "valid", "test" and optionally more evaluation splits (e.g. "test_doc").
    Returns ``(spm model path, pieces in the model)``: sentencepiece stops below ``vocab_size``
    when the training text has fewer distinct pieces, and the caller must report the real size.
    """
    import sentencepiece as spm

    tok_dir = os.path.join(out, "tok")
    raw_dir = os.path.join(out, "raw")
    os.makedirs(tok_dir, exist_ok=True)
    os.makedirs(raw_dir, exist_ok=True)
    train_text = [s for pairs in splits_by_lang.values() for pair in pairs["train"] for s in pair]
    model = _spm_io(lambda: train_spm(train_text, os.path.join(out, "spm"), vocab_size), out)
    sp = _spm_io(lambda: spm.SentencePieceProcessor(model_file=model), out)
    n_pieces = sp.get_piece_size()
    if n_pieces < vocab_size:
        logger.warning("--vocab-size %d: the training text only yields %d sentencepiece pieces, so the "
                       "vocabulary has %d (the data card records both)", vocab_size, n_pieces, n_pieces)
    dict_path = os.path.join(out, "dict.txt")
    write_fairseq_dict(os.path.join(out, "spm.vocab"), dict_path)

    langs = sorted(splits_by_lang)
    for lang in (progress(langs, desc="binarize", unit="pair") if progress else langs):
        pair = "%s-%s" % (SRC, lang)
        prefixes = {}
        for split, pairs in splits_by_lang[lang].items():
            for side, idx in ((SRC, 0), (lang, 1)):
                texts = [p[idx] for p in pairs]
                pieces = sp.encode(texts, out_type=str)
                _write_lines(os.path.join(tok_dir, "%s.%s.%s" % (split, pair, side)), (" ".join(p) for p in pieces))
                if split != "train":
                    _write_lines(os.path.join(raw_dir, "%s.%s.%s" % (split, pair, side)), texts)
                    if side == SRC:  # the bootstrap's clusters: segments sharing an English string
                        _write_lines(os.path.join(raw_dir, "%s.%s.cluster" % (split, pair)), map(cluster_key, texts))
            prefixes[split] = os.path.join(tok_dir, "%s.%s" % (split, pair))
        _run_preprocess(SRC, lang, prefixes, dict_path, out, workers)
    shutil.copyfile(dict_path, os.path.join(out, "dict.%s.txt" % SRC))
    shutil.rmtree(tok_dir)
    return model, n_pieces


def _run_preprocess(src, tgt, prefixes, dict_path, destdir, workers):
    from fairseq import options
    from fairseq_cli import preprocess

    # fairseq-preprocess names the k-th comma-separated valid/test prefix valid{k} / test{k};
    # extra evaluation splits ("valid_doc") ride along and are renamed afterwards.
    extra = {kind: sorted(s for s in prefixes if s.startswith(kind + "_")) for kind in ("valid", "test")}
    argv = [
        "--source-lang", src, "--target-lang", tgt, "--trainpref", prefixes["train"],
        "--validpref", ",".join(prefixes[s] for s in ["valid"] + extra["valid"]),
        "--testpref", ",".join(prefixes[s] for s in ["test"] + extra["test"]),
        "--srcdict", dict_path, "--tgtdict", dict_path,
        "--destdir", destdir, "--workers", str(workers), "--dataset-impl", "mmap",
    ]
    args = options.get_preprocessing_parser().parse_args(argv)
    plog = preprocess.logger
    before = list(plog.handlers)
    try:
        preprocess.main(args)
    finally:
        # preprocess.main adds a FileHandler for preprocess.log on every call; do not stack them.
        for handler in plog.handlers[:]:
            if handler not in before:
                plog.removeHandler(handler)
                handler.close()
    for kind, names in extra.items():
        for k, split in enumerate(names, start=1):
            for lang in (src, tgt):
                for ext in ("bin", "idx"):
                    os.replace(os.path.join(destdir, "%s%d.%s-%s.%s.%s" % (kind, k, src, tgt, lang, ext)),
                               os.path.join(destdir, "%s.%s-%s.%s.%s" % (split, src, tgt, lang, ext)))
