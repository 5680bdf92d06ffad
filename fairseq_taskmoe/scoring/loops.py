"""Degenerate output: does a hypothesis loop?

A hypothesis *loops* when a token 3-gram occurs 3 or more times in it (overlapping occurrences
count), or one token occurs 4 or more times in a row. Tokens are whitespace-separated words in
languages written with spaces (Latin scripts, Korean, ...).

Japanese and Chinese have no spaces. Their tokens are characters: every CJK character (Han,
kana, CJK and full-width punctuation) is one token, and a run of other non-space characters (a
Latin word, a number, a placeholder such as ``%s``) is one token, so "10000" is not four zeros.
Characters rather than sentencepiece pieces, so the rule does not depend on a model's
vocabulary (and pieces flag placeholder-heavy references in every language). A word is taken
as two characters, so the rule reads: a character 6-gram occurs 3+ times, or a unit of 1-3
characters repeats 4 times in a row ("のののの", "設定設定設定設定"). The literal character
3-gram rule flags 10 of the 460 Japanese test references of data/loc8 (loanwords such as
カテゴリー repeated three times in a long sentence); this rule flags 2 of them (a 6-character
loanword, ネットワーク, three times) and no Chinese one, and no reference of the other 14
directions is flagged (docs/EVALUATION.md).
"""

import re
from collections import Counter
from typing import Dict, Iterable, List, Sequence

UNSPACED = ("ja", "zh")  # language codes (and their variants: zh_Hans, zh-TW) tokenized by character
# (n-gram length, occurrences, longest repeating unit, repeats in a row) per kind of tokens
WORDS, CHARACTERS = (3, 3, 1, 4), (6, 3, 3, 4)
_CJK = ("\u2e80-\u2fdf\u3000-\u303f\u3040-\u309f\u30a0-\u30ff\u3100-\u312f\u31f0-\u31ff"
        "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef")
_CJK_TOKENS = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def unspaced(lang: str) -> bool:
    return re.split("[_-]", lang)[0] in UNSPACED


def tokens(text: str, lang: str) -> List[str]:
    """The loop detector's tokens of ``text`` in language ``lang`` (see the module docstring)."""
    return _CJK_TOKENS.findall(text) if unspaced(lang) else text.split()


def _repeats_in_row(toks, longest, repeats):
    """True if a unit of 1..``longest`` tokens occurs ``repeats`` times back to back."""
    for k in range(1, longest + 1):
        for i in range(len(toks) - k * repeats + 1):
            unit = toks[i:i + k]
            if all(toks[i + j * k:i + (j + 1) * k] == unit for j in range(1, repeats)):
                return True
    return False


def has_loop(text: str, lang: str) -> bool:
    """True if ``text`` loops: see the module docstring for the rule of ``lang``."""
    n, occurrences, longest, repeats = CHARACTERS if unspaced(lang) else WORDS
    toks = tokens(text, lang)
    if _repeats_in_row(toks, longest, repeats):
        return True
    grams = Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
    return any(count >= occurrences for count in grams.values())


def loop_count(hypotheses: Iterable[str], lang: str) -> int:
    return sum(has_loop(h, lang) for h in hypotheses)


def loop_shares(hypotheses_by_pair: Dict[str, Sequence[str]]) -> Dict[str, dict]:
    """Loop counts of every pair ("src-tgt"; the hypotheses are in ``tgt``) and of the groups.

    Returns ``{"pairs": {pair: row}, "out-of-English": row, "into-English": row, "all": row}``
    with rows ``{"loops", "sentences", "share"}``; a group pools its pairs' segments and is left
    out when it has no pair.
    """
    pairs = {pair: {"loops": loop_count(hyps, pair.split("-")[1]), "sentences": len(hyps)}
             for pair, hyps in hypotheses_by_pair.items()}
    out = {"pairs": pairs}
    groups = {"out-of-English": [p for p in pairs if p.split("-")[0] == "en"],
              "into-English": [p for p in pairs if p.split("-")[1] == "en"], "all": list(pairs)}
    for name, members in groups.items():
        if members:
            out[name] = {"loops": sum(pairs[p]["loops"] for p in members),
                         "sentences": sum(pairs[p]["sentences"] for p in members)}
    for row in [*pairs.values(), *(out[g] for g in groups if g in out)]:
        row["share"] = row["loops"] / row["sentences"] if row["sentences"] else 0.0
    return out
