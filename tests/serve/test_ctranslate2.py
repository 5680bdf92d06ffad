"""A CTranslate2 export decodes like fairseq: float32 gives fairseq-generate's hypotheses."""

import json

import sacrebleu

from fairseq_taskmoe.serve import from_pretrained
from fairseq_taskmoe.serve.cli import run_main
from serve_testlib import fairseq_cli, lines_by_id, strip_langtok
from taskmoe_testlib import N_EVAL

BEAM, LENPEN = 4, 1.3
BATCH = 4  # N_EVAL (13) is not a multiple of it: the last batch is short


def generate_test_split(data, ckpt):
    """(sources, hypotheses, references) of fairseq-generate on en-de's test split, by id."""
    out = fairseq_cli("fairseq-generate", data, ckpt, "en", "de", extra=[
        "--beam", BEAM, "--lenpen", LENPEN, "--max-tokens", "4000"])
    src, hyp, ref = (lines_by_id(out, p) for p in ("S", "H", "T"))
    assert sorted(hyp) == list(range(N_EVAL)), "fairseq-generate must cover the whole split"
    ids = sorted(hyp)
    return [strip_langtok(src[i]) for i in ids], [hyp[i] for i in ids], [ref[i] for i in ids]


def test_float32_export_equals_fairseq_generate(serve_ckpt, serve_extracts, toy_data):
    sources, expected, _ = generate_test_split(toy_data, serve_ckpt)
    model = from_pretrained(serve_extracts["float32"])
    assert model.engine == "ctranslate2" and model.quantization == "float32"
    got = model.translate(sources, "en", "de", beam=BEAM, lenpen=LENPEN, batch_size=BATCH)
    assert got == expected
    assert len(set(expected)) > 1  # a trained model, not one string for every input
    report = json.loads((serve_extracts["float32"] / "extract.json").read_text())
    assert report["format"] == "ctranslate2" and report["ctranslate2"]["pairs"] == ["en-de"]
    assert not (serve_extracts["float32"] / "checkpoint.pt").exists()  # only the converter's input


def test_int8_export_decodes(serve_ckpt, serve_extracts, toy_data, capsys):
    sources, fp32, refs = generate_test_split(toy_data, serve_ckpt)
    int8 = from_pretrained(serve_extracts["int8"]).translate(sources, "en", "de", beam=BEAM, lenpen=LENPEN)
    assert len(int8) == len(sources) and all(isinstance(h, str) and h for h in int8)
    bleu = {name: sacrebleu.corpus_bleu(hyps, [refs]).score for name, hyps in
            (("fairseq float32", fp32), ("ctranslate2 int8", int8))}
    same = sum(a == b for a, b in zip(int8, fp32))
    with capsys.disabled():
        print(f"\ntoy en-de test BLEU: {bleu}; int8 == float32 on {same}/{len(fp32)} sentences")


def test_translate_cli_reads_stdin(serve_extracts, toy_data, tmp_path):
    sources = ["new green blue", "the big big", "red small big the new green"]
    expected = from_pretrained(serve_extracts["float32"]).translate(sources, "en", "de", batch_size=2)
    out = tmp_path / "out.de"
    (tmp_path / "in.en").write_text("\n".join(sources) + "\n")
    code = run_main([str(serve_extracts["float32"]), "-s", "en", "-t", "de", "--batch-size", "2",
                     "--input", str(tmp_path / "in.en"), "--output", str(out), "--no-progress"])
    assert code == 0 and out.read_text().splitlines() == expected
