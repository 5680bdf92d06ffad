"""``--no-repeat-ngram-size`` that works on CPU.

fairseq 0.12's ``SequenceGenerator`` calls its ``NGramRepeatBlock`` with the whole
token buffer, (bsz*beam, max_len + 2), padded beyond ``step``. The CUDA kernel
reads the buffer up to ``step``; the Python fallback (CPU, or a GPU without the
compiled extension) takes the n-gram to check from the *end of the buffer*,
which is padding, so it never bans anything: the flag is a silent no-op there
(fairseq issue #5206; ``tests/tasks/test_ngram_block.py`` shows it). The task's
``build_generator`` gives its generator this blocker instead, which hands the
fallback the tokens generated so far, ``tokens[:, : step + 1]``, and leaves the
CUDA kernel as it is.
"""

from fairseq.ngram_repeat_block import NGramRepeatBlock


class PrefixNGramRepeatBlock(NGramRepeatBlock):
    """fairseq's blocker, given the generated prefix on its Python path."""

    def forward(self, tokens, lprobs, bsz: int, beam_size: int, step: int):
        if not self.use_extension:
            tokens = tokens[:, : step + 1]  # (bsz*beam, step+1): BOS + the tokens so far
        return super().forward(tokens, lprobs, bsz, beam_size, step)


def fix_ngram_blocker(generator):
    """Give ``generator`` (a fairseq ``SequenceGenerator``, possibly wrapped) the working
    blocker when it has fairseq's; returns it."""
    for gen in (generator, getattr(generator, "generator", None)):
        blocker = getattr(gen, "repeat_ngram_blocker", None)
        if type(blocker) is NGramRepeatBlock:
            fixed = PrefixNGramRepeatBlock(blocker.no_repeat_ngram_size)
            fixed.use_extension = blocker.use_extension
            gen.repeat_ngram_blocker = fixed
    return generator
