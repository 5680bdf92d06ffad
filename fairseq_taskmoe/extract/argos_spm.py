"""The package's ``sentencepiece.model``: the model's, plus its language tokens as control symbols.

argostranslate decodes a hypothesis with ``decode_pieces(tokens)`` (the forced target
prefix included), replaces every ``_`` with a space and then strips ``target_prefix`` if
the text starts with it. With the model's own spm model a language token (``__de__``, not a
sentencepiece piece) would come out literally and, after the ``_`` replacement, never be
stripped; a weak model that repeats the token would show it mid-sentence. Our API drops
language tokens from the output (as fairseq does). Listed as CONTROL pieces, the language
tokens decode to nothing, wherever they appear, while encoding is unchanged: sentencepiece
never produces a control piece from text (tests/extract/test_argos.py checks both).

The spm ``ModelProto`` keeps its pieces in repeated field 1 (``SentencePiece``: piece=1,
score=2, type=3, CONTROL = 3); a repeated field may continue anywhere in a message, so
appending serialized pieces to the file adds them with the next ids.
"""

from typing import Sequence

from fairseq_taskmoe.extract.protowire import bytes_field, float_field, int_field

CONTROL = 3


def with_control_symbols(model: bytes, symbols: Sequence[str]) -> bytes:
    """``model`` (serialized spm ModelProto) with ``symbols`` appended as control pieces."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    clash = [s for s in symbols if sp.piece_to_id(s) != sp.unk_id()]
    if clash:
        raise ValueError(f"--format argos: the sentencepiece model already has pieces {', '.join(clash)}, "
                         "the model's language tokens; cannot mark them as control symbols")
    pieces = b"".join(bytes_field(1, bytes_field(1, s) + float_field(2, 0.0) + int_field(3, CONTROL))
                      for s in symbols)
    out = model + pieces
    check = spm.SentencePieceProcessor(model_proto=out)  # loads, and the tokens decode to nothing
    assert all(check.is_control(check.piece_to_id(s)) for s in symbols)
    return out
