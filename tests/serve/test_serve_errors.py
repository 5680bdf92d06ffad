"""Bad input to the serving paths: a clear one-line error, and nothing written."""

import shutil
import subprocess

import pytest

from fairseq_taskmoe.extract import extract
from fairseq_taskmoe.serve import from_pretrained
from fairseq_taskmoe.serve.cli import run_main
from taskmoe_testlib import BIN


def test_not_a_ctranslate2_model(serve_extracts, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="neither a CTranslate2 model directory .* nor a fairseq"):
        from_pretrained(empty)
    half = tmp_path / "half"
    half.mkdir()
    (half / "model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match=r"not a CTranslate2 model directory \(config.json missing\)"):
        from_pretrained(half)
    broken = tmp_path / "broken"
    shutil.copytree(serve_extracts["int8"], broken)
    (broken / "model.bin").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="CTranslate2 cannot load the model"):
        from_pretrained(broken)
    out = tmp_path / "out.txt"
    code = run_main([str(half), "-s", "en", "-t", "de", "--input", str(half / "model.bin"),
                     "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("fairseq-taskmoe-translate: error: ") and not out.exists()


def test_unknown_pair_of_an_export(serve_extracts, tmp_path, capsys):
    model = from_pretrained(serve_extracts["int8"])
    with pytest.raises(ValueError, match="en-fr: task 'fr' .* is not in this export"):
        model.translate(["a cat"], "en", "fr")
    (tmp_path / "in").write_text("a cat\n")
    out = tmp_path / "out"
    code = run_main([str(serve_extracts["int8"]), "-s", "en", "-t", "fr", "--input", str(tmp_path / "in"),
                     "--output", str(out), "--no-progress"])
    assert code == 2 and "is not in this export" in capsys.readouterr().err and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no temp file left


def test_unknown_quantization_writes_nothing(serve_ckpt, toy_data, tmp_path):
    out = tmp_path / "o"
    proc = subprocess.run([str(BIN / "fairseq-taskmoe-extract"), str(serve_ckpt), "--tasks", "en-de",
                           "--format", "ctranslate2", "--quantization", "int4", "--data", str(toy_data),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--quantization must be one of int8, int8_float32" in proc.stderr and "got 'int4'" in proc.stderr
    with pytest.raises(ValueError, match="--quantization is for --format ctranslate2"):
        extract(str(serve_ckpt), ["en-de"], str(out), fmt="plugin", quantization="int8")
    assert not any(tmp_path.iterdir())


def test_token_routed_encoder_refused_with_what_works(serve_token_ckpt, toy_data, tmp_path):
    with pytest.raises(ValueError) as info:
        extract(str(serve_token_ckpt), ["en-de"], str(tmp_path / "o"), fmt="ctranslate2",
                data_dir=str(toy_data))
    msg = str(info.value)
    assert msg.startswith("--format ctranslate2: encoder layers [1] are still MoE layers")
    assert "CTranslate2 has no MoE layer" in msg and "--format plugin" in msg
    assert "--moe-encoder-routing task" in msg
    with pytest.raises(ValueError, match="--format ctranslate2 takes exactly one task"):
        extract(str(serve_token_ckpt), ["en-de", "en-fr"], str(tmp_path / "o"), fmt="ctranslate2",
                data_dir=str(toy_data))
    assert not any(tmp_path.iterdir())
