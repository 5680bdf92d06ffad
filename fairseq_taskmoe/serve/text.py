"""Text in and out of the translators: sentencepiece (when the model has one), finding files,
and the checks every engine shares (decoding arguments, empty and over-long sentences).

Both engines use fairseq's own ``SentencepieceBPE`` so that their pieces, and
hence their outputs, are those of ``fairseq-interactive --bpe sentencepiece``.
Without a sentencepiece model the input is taken as already tokenized
(whitespace-separated dictionary entries), as ``fairseq-interactive`` does.

Empty (or whitespace-only) sentences are not sent to the model: a transformer
given only a language token and ``</s>`` invents words, so an empty line comes
back empty. A sentence longer than the model's source positions is refused with
its index (``SentenceError``), never cut: fairseq's inference batching would drop
it and CTranslate2 truncates it silently, and a split at an arbitrary piece
boundary would translate half-sentences that the caller cannot see; where to
split (sentences, clauses) is the caller's decision.
"""

import glob
import os
from typing import List, Optional, Sequence


def find_spm(*dirs: Optional[str]) -> Optional[str]:
    """``spm.model`` in (or next to) the first directory that has one."""
    for d in dirs:
        if not d:
            continue
        for cand in (os.path.join(d, "spm.model"), os.path.join(os.path.dirname(os.path.abspath(d)), "spm.model")):
            if os.path.isfile(cand):
                return cand
    return None


def has_dicts(d: Optional[str]) -> bool:
    return bool(d) and bool(glob.glob(os.path.join(d, "dict.*.txt")))


class SentenceError(ValueError):
    """A problem with one input sentence; ``index`` is its 0-based position in the call."""

    def __init__(self, index: int, problem: str):
        super().__init__(f"sentences[{index}]: {problem}")
        self.index, self.problem = index, problem


class Pieces:
    """Sentencepiece encode/decode, or the identity when ``spm_model`` is None."""

    def __init__(self, spm_model: Optional[str]):
        self.spm_model = spm_model
        self.bpe = None
        if spm_model:
            from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE, SentencepieceConfig

            self.bpe = SentencepieceBPE(SentencepieceConfig(sentencepiece_model=spm_model))

    def encode(self, line: str) -> str:
        line = line.strip()
        return self.bpe.encode(line) if self.bpe else line

    def decode(self, pieces: str) -> str:
        return self.bpe.decode(pieces) if self.bpe else pieces


def check_sentences(sentences) -> List[str]:
    if isinstance(sentences, (str, bytes)):
        raise TypeError("translate() takes a list of sentences; wrap a single sentence in a list")
    out = []
    for i, s in enumerate(sentences):
        if isinstance(s, bytes):
            try:
                s = s.decode("utf-8")
            except UnicodeDecodeError as err:
                raise SentenceError(i, f"not UTF-8 text ({err.reason} at byte {err.start})") from err
        s = str(s)
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as err:  # lone surrogates, e.g. bytes read with surrogateescape
            raise SentenceError(i, f"not valid Unicode text ({err.reason} at character {err.start})") from err
        out.append(s)
    return out


def check_decoding(beam: int, batch_size: int, max_len_b: int, min_len: int = 1) -> None:
    """What both engines and the CLI accept (the CLI's flag names in the message)."""
    for name, value, low in (("beam", beam, 1), ("batch_size", batch_size, 1), ("max_len_b", max_len_b, 1),
                             ("min_len", min_len, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{name} ({flag}) must be an integer >= {low}; got {value!r}")
    if min_len > max_len_b:
        raise ValueError(f"min_len ({min_len}) must be <= max_len_b ({max_len_b})")


def non_empty(sentences: Sequence[str]) -> List[int]:
    """Indices of the sentences that hold something to translate (not empty, not only spaces)."""
    return [i for i, s in enumerate(sentences) if s.strip()]


def check_length(index: int, pieces: int, limit: int, extra: int) -> None:
    """Refuse sentence ``index`` when its ``pieces`` + ``extra`` tokens (language token, </s>)
    exceed the model's ``limit`` source positions."""
    if pieces + extra > limit:
        raise SentenceError(index, f"{pieces} tokens, but the model takes at most {limit - extra} "
                            f"per sentence ({limit} source positions, {extra} for the language token "
                            "and </s>); split the sentence and translate the parts")
