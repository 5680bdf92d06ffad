"""fairseq_taskmoe.evaluate: output parsing, the sentence-count guard, scoring against the raw
reference text with sacrebleu signatures, the paired bootstrap, and bad inputs refused before
any decoding. fairseq-generate is faked here (its real run is covered by tests/bench)."""

import argparse
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from sacrebleu.metrics import BLEU

from fairseq_taskmoe import evaluate
from taskmoe_testlib import LANG_PAIRS, N_EVAL, run_cli


def fake_generate_stdout(n, hyps=None, refs=None):
    lines = []
    for i in reversed(range(n)):  # fairseq prints in batch order, not id order
        h = hyps[i] if hyps else f"hyp {i}"
        t = refs[i] if refs else f"ref {i}"
        lines += [f"S-{i}\tsrc {i}", f"T-{i}\t{t}", f"H-{i}\t-0.5\t{h}", f"D-{i}\t-0.5\t{h}"]
    return "\n".join(lines) + "\n"


def fake_run(calls, hyps=None, refs=None, n=N_EVAL):
    def run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=fake_generate_stdout(n, hyps, refs), stderr="")
    return run


def no_run(cmd, **kwargs):
    raise AssertionError(f"fairseq-generate must not run for a bad input: {cmd}")


@pytest.fixture
def scored_data(toy_data, tmp_path):
    """toy_data plus raw/ references for en-de whose text differs from the binarized (T-) text.

    Returns (data dir, raw German references, T- lines as fairseq would print them)."""
    data = tmp_path / "data"
    data.mkdir()
    for path in toy_data.iterdir():
        if path.name != "raw":
            (data / path.name).symlink_to(path)
    toy_raw = toy_data.parent / "raw"
    t_lines = (toy_raw / "test.en-de.de").read_text().splitlines()
    # What prepare-data keeps and the dictionary loses: casing, punctuation, rare characters.
    raw_refs = [f"{line.capitalize()}, «ok»!" for line in t_lines]
    (data / "raw").mkdir()
    (data / "raw" / "test.en-de.de").write_text("".join(r + "\n" for r in raw_refs))
    (data / "raw" / "test.en-de.en").write_text((toy_raw / "test.en-de.en").read_text())
    return data, raw_refs, t_lines


def fake_checkpoint(path, task_args):
    torch.save({"cfg": {"task": task_args, "model": None}, "model": {}}, path)
    return path


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    monkeypatch.setattr(evaluate.subprocess, "run", fake_run(calls, n=translated))
    if translated < N_EVAL:
        with pytest.raises(RuntimeError, match=f"translated {translated} of the {N_EVAL} sentences"):
            evaluate.generate("ckpt.pt", toy_data, "en", "de", "en-de")
    else:
        hyps, refs, _ = evaluate.generate("ckpt.pt", toy_data, "en", "de", "en-de")
        assert len(hyps) == N_EVAL
    i = calls[0].index("--required-batch-size-multiple")
    assert calls[0][i + 1] == "1"


def test_scores_are_against_the_raw_references_not_the_T_lines(scored_data, monkeypatch):
    data, raw_refs, t_lines = scored_data
    # The system outputs exactly the raw references: 100 against them, less against T- lines.
    monkeypatch.setattr(evaluate.subprocess, "run", fake_run([], hyps=raw_refs, refs=t_lines))
    raw = evaluate.evaluate("ckpt.pt", data, ["en-de"], log=lambda s: None)["en-de"]
    t = evaluate.evaluate("ckpt.pt", data, ["en-de"], log=lambda s: None, references="generate")["en-de"]
    assert raw["references"] == str(data / "raw" / "test.en-de.de") and t["references"] == "T- lines"
    assert raw["bleu"] == raw["chrf"] == raw["chrf++"] == 100.0
    assert t["bleu"] < 60 and t["chrf"] < 100
    assert raw["sentences"] == N_EVAL and raw["hypotheses"] == raw_refs
    assert "tok:13a" in raw["signatures"]["bleu"] and "nw:2" in raw["signatures"]["chrf++"]


def test_raw_references_of_another_length_are_refused_before_decoding(scored_data, monkeypatch):
    data, raw_refs, _ = scored_data
    (data / "raw" / "test.en-de.de").write_text("".join(r + "\n" for r in raw_refs[:-1]))
    monkeypatch.setattr(evaluate.subprocess, "run", no_run)
    with pytest.raises(ValueError, match=f"has {N_EVAL - 1} lines but the binarized test en-de split has {N_EVAL}"):
        evaluate.evaluate("ckpt.pt", data, ["en-de"])
    (data / "raw" / "test.en-de.de").write_text("".join(r + "\n" for r in raw_refs))
    (data / "raw" / "test.en-de.en").unlink()  # de-en's references: the English side
    with pytest.raises(FileNotFoundError, match="no raw reference text for test de-en.*test.en-de.en.*"
                                                "--references generate"):
        evaluate.evaluate("ckpt.pt", data, ["en-de", "de-en"])  # checked before en-de is decoded


@pytest.mark.parametrize("task_args", [{"lang_pairs": LANG_PAIRS}, argparse.Namespace(lang_pairs=LANG_PAIRS)])
def test_main_reads_lang_pairs_from_the_checkpoint_and_writes_signatures(scored_data, tmp_path, monkeypatch,
                                                                         capsys, task_args):
    data, raw_refs, t_lines = scored_data
    ckpt = fake_checkpoint(tmp_path / "model.pt", task_args)
    calls = []
    monkeypatch.setattr(evaluate.subprocess, "run", fake_run(calls, hyps=raw_refs, refs=t_lines))
    out = evaluate.main([str(ckpt), "--data", str(data), "--pairs", "en-de", "--json", str(tmp_path / "s.json")])
    cmd = calls[0]
    # the model's six pairs, not --pairs (fewer pairs would change its language-token dictionary)
    assert cmd[cmd.index("--lang-pairs") + 1] == LANG_PAIRS
    assert cmd[cmd.index("--user-dir") + 1] == str(evaluate.PLUGIN_DIR)
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["avg_bleu"] == 100.0 and saved["lang_pairs"] == LANG_PAIRS == out["lang_pairs"]
    assert saved["signatures"]["bleu"] == [saved["pairs"]["en-de"]["signatures"]["bleu"]]
    assert set(saved["signatures"]) == {"bleu", "chrf", "chrf++"}
    printed = capsys.readouterr().out
    assert "[1/1] en-de: translating 13 sentences" in printed
    for sig in ("bleu", "chrf", "chrf++"):
        assert f"{sig} signature: {saved['signatures'][sig][0]}" in printed
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name or ".evaluate-probe" in p.name]


def bad_cases(tmp_path, data):
    """(checkpoint, [(argv, exit status, message)])."""
    ckpt = fake_checkpoint(tmp_path / "model.pt", {"lang_pairs": LANG_PAIRS})
    no_pairs = fake_checkpoint(tmp_path / "old.pt", {"data": str(data)})
    base = [str(ckpt), "--data", str(data)]
    cases = [
        (base + ["--pairs", ","], 2, "--pairs ',' names no language pair"),
        (base + ["--pairs", "ende"], 2, "'ende' is not a pair SRC-TGT"),
        (base + ["--pairs", "en-de", "--lang-pairs", "en-"], 2, "--lang-pairs: 'en-' is not a pair"),
        (base + ["--pairs", "en-de", "--json", "/proc/s.json"], 2, "--json /proc/s.json: "),
        (base + ["--pairs", "en-de", "--json", str(tmp_path)], 2, f"--json {tmp_path}: is a directory"),
        (base + ["--pairs", "en-xx"], 2, "--pairs en-xx: no binarized test split"),
        ([str(tmp_path / "nosuch.pt"), "--data", str(data), "--pairs", "en-de"], 2, "checkpoint not found"),
        ([str(no_pairs), "--data", str(data), "--pairs", "en-de"], 2, "records no --lang-pairs"),
        ([str(ckpt), "--data", str(tmp_path / "nodata"), "--pairs", "en-de"], 2, "not a binarized data dir"),
    ]
    if os.geteuid() != 0:  # root writes into a 0500 directory anyway (the /proc case covers it)
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        cases.append((base + ["--pairs", "en-de", "--json", str(ro / "s.json")], 4, "permission denied"))
    return ckpt, cases


def test_bad_inputs_fail_with_one_line_before_any_decoding(scored_data, tmp_path, monkeypatch, capsys):
    data, _, _ = scored_data
    ckpt, cases = bad_cases(tmp_path, data)
    before = sha(ckpt)
    monkeypatch.setattr(evaluate.subprocess, "run", no_run)
    for argv, status, message in cases:
        monkeypatch.setattr(sys, "argv", ["fairseq-taskmoe-evaluate", *argv])
        with pytest.raises(SystemExit) as exit_info:
            evaluate.cli_main()
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == status, argv
        assert len(err) == 1 and err[0].startswith("fairseq-taskmoe-evaluate: error: ") and message in err[0], err
    assert sha(ckpt) == before
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_a_failing_fairseq_generate_is_one_line(scored_data, tmp_path, monkeypatch, capsys):
    data, _, _ = scored_data
    ckpt = fake_checkpoint(tmp_path / "model.pt", {"lang_pairs": LANG_PAIRS})

    def failing(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="Traceback ...\nTypeError: unexpected keyword")

    monkeypatch.setattr(evaluate.subprocess, "run", failing)
    monkeypatch.setattr(sys, "argv", ["fairseq-taskmoe-evaluate", str(ckpt), "--data", str(data), "--pairs", "en-de"])
    with pytest.raises(SystemExit) as exit_info:
        evaluate.cli_main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert err == ["fairseq-taskmoe-evaluate: error: fairseq-generate failed for en-de: ... "
                   "TypeError: unexpected keyword"]


def test_console_script_reports_a_bad_input_without_traceback(scored_data, tmp_path):
    data, _, _ = scored_data
    with pytest.raises(AssertionError) as failed:  # run_cli raises on a non-zero exit, with the output
        run_cli("fairseq-taskmoe-evaluate", [tmp_path / "nosuch.pt", "--data", data, "--pairs", ","])
    assert "(2)" in str(failed.value) and "Traceback" not in str(failed.value)
    assert "fairseq-taskmoe-evaluate: error: --pairs ',' names no language pair" in str(failed.value)


def test_paired_bootstrap_identical_better_and_per_language_tokenization():
    refs = [f"the {w} cat sees a big dog number {i}" for i, w in enumerate("red blue green old new".split() * 8)]
    bad = [f"dog {i}" for i in range(len(refs))]
    langs = ["de"] * len(refs)
    same = evaluate.paired_bootstrap(bad, bad, refs, langs, names=("a", "b"), n_samples=200)
    assert same["BLEU"]["p_value"] == 1.0 and same["chrF"]["p_value"] == 1.0  # sacrebleu alone: 1/201
    better = evaluate.paired_bootstrap(bad, refs, refs, langs, names=("a", "b"), n_samples=200)
    assert better["BLEU"]["b"] == 100.0 and better["BLEU"]["a"] < 20 and better["BLEU"]["p_value"] < 0.05
    assert "bs:200" in better["BLEU"]["signature"] and "tok-per-segment:de=13a" in better["BLEU"]["signature"]
    # a concatenation scores each segment with its target language's tokenizer: on one language
    # it equals sacrebleu's own corpus BLEU with that tokenizer
    ja_refs = ["猫が犬を見る", "大きな赤い家", "古い木と新しい木"] * 5
    ja_hyp = ["猫が犬を見た", "大きな家", "古い木と新しい木"] * 5
    mixed = evaluate.paired_bootstrap(ja_refs, ja_hyp, ja_refs, ["ja"] * 15, names=("a", "b"), n_samples=50)
    assert mixed["BLEU"]["b"] == round(BLEU(tokenize="char").corpus_score(ja_hyp, [ja_refs]).score, 2)
    with pytest.raises(ValueError, match="equal, non-zero lengths"):
        evaluate.paired_bootstrap(bad, refs[:-1], refs, langs)


def test_evaluate_counts_looping_hypotheses(scored_data, monkeypatch):
    data, raw_refs, t_lines = scored_data
    hyps = ["Sie Sie Sie Sie eine"] * 3 + raw_refs[3:]  # three loops, the rest the references
    monkeypatch.setattr(evaluate.subprocess, "run", fake_run([], hyps=hyps, refs=t_lines))
    result = evaluate.evaluate("ckpt.pt", data, ["en-de"], log=lambda s: None)["en-de"]
    assert result["loops"] == 3 and evaluate.has_loop(hyps[0], "de")


def test_main_passes_decoding_options_to_fairseq_generate(scored_data, tmp_path, monkeypatch):
    data, raw_refs, t_lines = scored_data
    ckpt = fake_checkpoint(tmp_path / "model.pt", {"lang_pairs": LANG_PAIRS})
    calls = []
    monkeypatch.setattr(evaluate.subprocess, "run", fake_run(calls, hyps=raw_refs, refs=t_lines))
    out = evaluate.main([str(ckpt), "--data", str(data), "--pairs", "en-de", "--no-repeat-ngram-size", "3",
                         "--max-len-b", "5"])
    cmd = calls[0]
    last = lambda flag: cmd[len(cmd) - 1 - cmd[::-1].index(flag) + 1]  # noqa: E731  argparse: the last one wins
    assert last("--no-repeat-ngram-size") == "3" and last("--max-len-b") == "5" and last("--max-len-a") == "1.2"
    assert out["decoding"] == {"beam": 4, "no_repeat_ngram_size": 3, "max_len_a": 1.2, "max_len_b": 5}
    with pytest.raises(ValueError, match="--no-repeat-ngram-size must be >= 0"):
        evaluate.main([str(ckpt), "--data", str(data), "--pairs", "en-de", "--no-repeat-ngram-size", "-1"])
