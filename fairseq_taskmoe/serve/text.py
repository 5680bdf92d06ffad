"""Text in and out of the translators: sentencepiece (when the model has one) and finding files.

Both engines use fairseq's own ``SentencepieceBPE`` so that their pieces, and
hence their outputs, are those of ``fairseq-interactive --bpe sentencepiece``.
Without a sentencepiece model the input is taken as already tokenized
(whitespace-separated dictionary entries), as ``fairseq-interactive`` does.
"""

import glob
import os
from typing import List, Optional


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
    if isinstance(sentences, str):
        raise TypeError("translate() takes a list of sentences; wrap a single sentence in a list")
    return [str(s) for s in sentences]
