"""--no-repeat-ngram-size on CPU: fairseq 0.12's Python n-gram blocker reads the end of the
padded token buffer and bans nothing; the plugin task's generator bans the repeats."""

import argparse
import math

import torch
from fairseq.ngram_repeat_block import NGramRepeatBlock

from fairseq_taskmoe.tasks.ngram_block import PrefixNGramRepeatBlock
from taskmoe_testlib import setup_task

PAD, V = 1, 12


def _buffer():
    """One hypothesis at step 5, ``2 5 6 7 5 6`` (BOS 2), in fairseq's padded (1, 12) buffer: the
    last 2-gram (5, 6) was followed by 7, so with n = 3 the next 7 must be banned."""
    tokens = torch.full((1, 12), PAD)
    tokens[0, :6] = torch.tensor([2, 5, 6, 7, 5, 6])
    return tokens


def _banned(blocker):
    blocker.use_extension = False  # the Python path (CPU, or no compiled CUDA extension)
    lprobs = blocker(_buffer(), torch.zeros(1, V), bsz=1, beam_size=1, step=5)
    return [t for t in range(V) if lprobs[0, t] == -math.inf]


def test_fairseqs_cpu_blocker_bans_nothing_ours_bans_the_repeat():
    assert _banned(NGramRepeatBlock(3)) == []  # the bug: it compared padding with padding
    assert _banned(PrefixNGramRepeatBlock(3)) == [7]
    assert _banned(PrefixNGramRepeatBlock(2)) == [7]  # the last token, 6, was followed by 7
    assert _banned(PrefixNGramRepeatBlock(4)) == []  # (7, 5, 6) never occurred before


def test_the_task_generator_uses_the_working_blocker(toy_data):
    task = setup_task(toy_data)
    task.args.source_lang, task.args.target_lang = "en", "de"  # as fairseq-generate -s en -t de
    model = task.build_model(task.args)
    gen_args = argparse.Namespace(beam=2, no_repeat_ngram_size=3)
    generator = task.build_generator([model], gen_args)
    assert type(generator.repeat_ngram_blocker) is PrefixNGramRepeatBlock
    assert generator.repeat_ngram_blocker.no_repeat_ngram_size == 3
    assert task.build_generator([model], argparse.Namespace(beam=2)).repeat_ngram_blocker is None
