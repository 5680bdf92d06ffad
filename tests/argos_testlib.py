"""A toy model with a sentencepiece vocabulary, for the Argos Translate / LibreTranslate tests.

Argos packages need a sentencepiece model, and the CTranslate2 vocabulary must be the
sentencepiece pieces (as in ``make demo``'s corpus), so the word-level toy corpus of
``taskmoe_testlib`` does not do. This one is built with the corpus pipeline's own
``binarize`` (one spm model, dictionary = its pieces) over en <-> {de, pt_BR}: ``pt_BR``
has an underscore, as the demo's ``pt_BR`` / ``zh_Hans`` do, which the Argos packaging
must handle (language codes and language tokens).

A unique module name (tests/ is on sys.path); fixtures live in the test modules.
"""

import random
from pathlib import Path

from taskmoe_testlib import multilingual_task_args, run_cli, train_args

ARGOS_LANGS = ("de", "pt_BR")
ARGOS_PAIRS = ",".join(f"en-{l},{l}-en" for l in ARGOS_LANGS)
WORDS = "the a cat dog house tree runs big small red blue green eats sees old new".split()
SUFFIX = {"de": "en", "pt_BR": "inho"}


def toy_pairs(lang, n, seed):
    """(English, toy translation) sentences: capitalised, with a final full stop."""
    rng = random.Random(f"{lang}-{seed}")
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
        src = " ".join(words).capitalize() + "."
        tgt = " ".join(w + SUFFIX[lang] for w in words).capitalize() + "."
        out.append((src, tgt))
    return out


def build_spm_data(dest: Path, vocab_size: int = 120) -> Path:
    """Binarized en <-> ARGOS_LANGS corpus with spm.model (translation_multi_simple_epoch layout)."""
    from fairseq_taskmoe.data.binarize import binarize

    splits = {lang: {"train": toy_pairs(lang, 300, 0), "valid": toy_pairs(lang, 13, 1),
                     "test": toy_pairs(lang, 13, 2)} for lang in ARGOS_LANGS}
    binarize(splits, str(dest), vocab_size=vocab_size)
    return dest


def train_toy(data: Path, save_dir: Path, enc_routing: str = "task", max_update: int = 60) -> Path:
    """A transformer_taskmoe_tiny, decoder routed by target language (9 tasks -> 3 here)."""
    run_cli("fairseq-train", [
        *multilingual_task_args(data, lang_pairs=ARGOS_PAIRS),
        *train_args(save_dir, max_update=max_update, extra=[
            "--lr", "0.005", "--max-tokens", "1000", "--disable-validation",
            "--moe-encoder-routing", enc_routing, "--moe-decoder-routing", "task",
            "--moe-task-by", "target_lang"]),
    ])
    return save_dir / "checkpoint_last.pt"


def held_out_sentences(lang: str, n: int = 6):
    """Held-out sentences in ``lang`` (the test split's side of that language)."""
    if lang == "en":
        return [s for s, _ in toy_pairs(ARGOS_LANGS[0], n, 2)]
    return [t for _, t in toy_pairs(lang, n, 2)]
