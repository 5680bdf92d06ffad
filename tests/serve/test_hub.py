"""from_pretrained(...).translate() equals fairseq-interactive for the full model and both extracts."""

import argparse

import pytest

from fairseq_taskmoe.serve import from_pretrained
from serve_testlib import fairseq_cli, lines_by_id
from taskmoe_testlib import REPO

SOURCES = ["new green blue", "the big big", "red small big the new green", "cat dog",
           "a house sees the old tree", "blue"]


def interactive(data, ckpt, src, tgt, plugin=True):
    out = fairseq_cli("fairseq-interactive", data, ckpt, src, tgt, plugin=plugin,
                      extra=["--beam", "4", "--buffer-size", "3", "--batch-size", "3"],
                      input_text="\n".join(SOURCES) + "\n")
    hyps = lines_by_id(out, "H")
    return [hyps[i] for i in range(len(SOURCES))]


@pytest.mark.parametrize("kind", ["full", "plugin", "stock"])
def test_translate_equals_fairseq_interactive(kind, serve_ckpt, serve_extracts, toy_data):
    if kind == "full":
        model = from_pretrained(serve_ckpt, data=toy_data)
        ckpt = serve_ckpt
    else:
        model = from_pretrained(serve_extracts[kind])
        ckpt = serve_extracts[kind] / "checkpoint.pt"
    expected = interactive(toy_data, ckpt, "en", "de", plugin=kind != "stock")
    got = model.translate(SOURCES, src="en", tgt="de", beam=4, batch_size=4)
    assert got == expected
    assert not any(w.startswith("__") for line in got for w in line.split())  # no language tags
    if kind == "full":  # one loaded model serves every pair: the language comes from the call
        assert model.translate(SOURCES, src="en", tgt="fr", beam=4) == interactive(toy_data, ckpt, "en", "fr")


def test_plugin_task_build_generator_takes_fairseq_kwargs(serve_extracts):
    # fairseq's GeneratorHubInterface passes prefix_allowed_tokens_fn (the parent task drops it).
    model = from_pretrained(serve_extracts["plugin"])
    model.task.args.source_lang, model.task.args.target_lang = "en", "de"
    gen = model.task.build_generator(model.models, argparse.Namespace(beam=2),
                                     prefix_allowed_tokens_fn=None)
    tag = model.task.data_manager.get_decoder_langtok("de", "tgt")
    assert tag in gen.symbols_to_strip_from_output


def test_import_without_ctranslate2(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['ctranslate2'] = None\n"
            "import fairseq_taskmoe, fairseq_taskmoe.serve, fairseq_taskmoe.extract\n"
            "from fairseq_taskmoe.serve.ctranslate2_export import check_quantization\n"
            "try:\n    check_quantization('int8')\nexcept ValueError as e:\n    print('ERR', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ERR --format ctranslate2 needs the ctranslate2 package" in proc.stdout
