"""fairseq_taskmoe.evaluate: parsing fairseq-generate output and the sentence-count guard."""

import subprocess

import pytest

from fairseq_taskmoe import evaluate
from taskmoe_testlib import N_EVAL


def fake_generate_stdout(n):
    lines = []
    for i in reversed(range(n)):  # fairseq prints in batch order, not id order
        lines += [f"S-{i}\tsrc {i}", f"T-{i}\tref {i}", f"H-{i}\t-0.5\thyp {i}", f"D-{i}\t-0.5\thyp {i}"]
    return "\n".join(lines) + "\n"


def test_parse_generate_output_orders_by_sample_id():
    hyps, refs = evaluate.parse_generate_output(fake_generate_stdout(3))
    assert hyps == ["hyp 0", "hyp 1", "hyp 2"] and refs == ["ref 0", "ref 1", "ref 2"]


def test_split_size_reads_the_binarized_split_in_either_direction(toy_data):
    assert evaluate.split_size(toy_data, "test", "en", "de") == N_EVAL
    assert evaluate.split_size(toy_data, "test", "de", "en") == N_EVAL  # files are named en-de
    assert evaluate.split_size(toy_data, "test", "en", "xx") is None


@pytest.mark.parametrize("translated", [N_EVAL - 5, N_EVAL])
def test_generate_refuses_a_partial_translation_of_the_split(toy_data, monkeypatch, translated):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=fake_generate_stdout(translated), stderr="")

    monkeypatch.setattr(evaluate.subprocess, "run", fake_run)
    if translated < N_EVAL:
        with pytest.raises(RuntimeError, match=f"translated {translated} of the {N_EVAL} sentences"):
            evaluate.generate("ckpt.pt", toy_data, "en", "de", "en-de")
    else:
        hyps, refs, _ = evaluate.generate("ckpt.pt", toy_data, "en", "de", "en-de")
        assert len(hyps) == N_EVAL
    i = calls[0].index("--required-batch-size-multiple")
    assert calls[0][i + 1] == "1"
