"""fairseq-generate / -train command lines checked against the checkpoint (issue 23), one row per case.

Rows run the task's ``setup_task`` in-process with fairseq's own parsers (what the CLIs call
first); two rows run the real fairseq-generate to pin the one-line error and its status.
"""

import argparse
import os
import shutil
import subprocess

import pytest
import torch

from fairseq_taskmoe.checkpoints.cli import UsageError
from fairseq_taskmoe.extract import extract
from fairseq_taskmoe.tasks.checkpoint_flags import CheckpointFlags, reconcile
from taskmoe_testlib import BIN, LANG_PAIRS, PLUGIN_DIR, multilingual_task_args, run_cli, setup_task, train_args

CKPT_LANGS = ["de", "en", "es", "fr"]  # sorted: the model was trained without --langs
LANGTOK = ["--encoder-langtok", "src", "--decoder-langtok"]


def flags(**kw):
    base = dict(path="c.pt", langs=CKPT_LANGS, lang_pairs=["en-de", "de-en"], encoder_langtok="src",
                decoder_langtok=True, lang_tok_style="multilingual", lang_tok_replacing_bos_eos=False)
    base.update(kw)
    return CheckpointFlags(**base)


def cmd(**kw):
    base = dict(langs=None, lang_dict=None, lang_pairs=["en-de"], encoder_langtok="src", decoder_langtok=True,
                lang_tok_style="multilingual", lang_tok_replacing_bos_eos=False, source_lang="en",
                target_lang="de")
    base.update(kw)
    return argparse.Namespace(**base)


# (row, command line, checkpoint, expected: list of langs the task will use, or an error fragment)
RECONCILE_ROWS = [
    ("no --langs, subset of pairs: the checkpoint's list", cmd(), flags(), CKPT_LANGS),
    ("same --langs", cmd(langs=CKPT_LANGS), flags(), CKPT_LANGS),
    ("permuted --langs", cmd(langs=["en", "de", "es", "fr"]), flags(),
     "Pass --langs de,en,es,fr, or leave --langs out"),
    ("no langtok flags", cmd(encoder_langtok=None, decoder_langtok=False), flags(),
     "Pass exactly: --encoder-langtok src --decoder-langtok"),
    ("langtok flags the model lacks", cmd(), flags(encoder_langtok=None, decoder_langtok=False),
     "Pass exactly: neither --encoder-langtok nor --decoder-langtok"),
    ("--encoder-langtok tgt for a src model", cmd(encoder_langtok="tgt"), flags(),
     "the command line has --encoder-langtok tgt --decoder-langtok"),
    ("unknown target language", cmd(target_lang="xx"), flags(),
     "-t/--target-lang xx: not a language of the checkpoint c.pt; its languages: de, en, es, fr"),
    ("unknown language in --lang-pairs", cmd(lang_pairs=["en-de", "en-it"]), flags(),
     "--lang-pairs en-it: it is not a language"),
    ("other --lang-tok-style", cmd(lang_tok_style="mbart"), flags(), "pass --lang-tok-style multilingual"),
]


@pytest.mark.parametrize("row", RECONCILE_ROWS, ids=[r[0] for r in RECONCILE_ROWS])
def test_reconcile_rows(row):
    _, args, ckpt, expected = row
    if isinstance(expected, list):
        reconcile(args, ckpt)
        assert args.langs == expected
    else:
        with pytest.raises(UsageError) as info:
            reconcile(args, ckpt)
        assert expected in str(info.value)


@pytest.fixture(scope="module")
def ckpts(toy_data, tmp_path_factory):
    """A 2-update task-MoE model (both sides task-routed), its stock en-de extract and broken copies."""
    root = tmp_path_factory.mktemp("flags")
    run_cli("fairseq-train", [*multilingual_task_args(toy_data), *train_args(root / "ckpt", max_update=2, extra=[
        "--disable-validation", "--moe-encoder-routing", "task", "--moe-decoder-routing", "task"])])
    good = root / "ckpt" / "checkpoint_last.pt"
    extract(str(good), ["en-de"], str(root / "stock"), fmt="stock", data_dir=str(toy_data))
    state = torch.load(good, weights_only=True)
    gate = next(k for k in state["model"] if k.endswith("moe.router.task_gate.weight"))
    nan = dict(state, model=dict(state["model"], **{gate: torch.full_like(state["model"][gate], float("nan"))}))
    torch.save(nan, root / "nan.pt")
    huge = dict(state, cfg=dict(state["cfg"]))
    huge["cfg"]["model"] = argparse.Namespace(**vars(state["cfg"]["model"]))
    huge["cfg"]["model"].moe_layout = '{"encoder": {"1": {"experts": 100000000}}, "decoder": {"1": {"experts": 100000000}}}'
    torch.save(huge, root / "huge.pt")
    (root / "empty.pt").write_bytes(b"")
    return {"good": good, "stock": root / "stock" / "checkpoint.pt", "nan": root / "nan.pt",
            "huge": root / "huge.pt", "empty": root / "empty.pt", "missing": root / "missing.pt"}


# (row, checkpoint, extra generate flags, expected: None = works, or an error fragment)
GENERATE_ROWS = [
    ("subset of --lang-pairs", "good", ["--lang-pairs", "en-de,de-en"], None),
    ("permuted --langs", "good", ["--langs", "en,de,es,fr"], "Pass --langs de,en,es,fr"),
    ("unknown language", "good", ["-t", "xx"], "-t/--target-lang xx: not a language"),
    ("stock extract asked for another target", "stock", ["-t", "fr"],
     "task 'fr' (--moe-task-by target_lang) is not in this extract"),
    ("stock extract, its own pair", "stock", ["--lang-pairs", "en-de"], None),
    ("NaN task gates", "nan", [], "holds NaN or infinite weights"),
    ("layout claiming 10^8 experts", "huge", [], "need (100000000,"),
    ("zero-byte checkpoint", "empty", [], "truncated or corrupt"),
    ("missing checkpoint", "missing", [], "no such checkpoint file"),
]


@pytest.mark.parametrize("row", GENERATE_ROWS, ids=[r[0] for r in GENERATE_ROWS])
def test_generate_rows(row, ckpts, toy_data):
    _, name, extra, expected = row
    opts = {"--lang-pairs": LANG_PAIRS, "-s": "en", "-t": "de"}
    for i in range(0, len(extra), 2):
        opts[extra[i]] = extra[i + 1]
    generate = ["--path", str(ckpts[name]), *[x for kv in opts.items() for x in kv]]
    if expected is not None:
        with pytest.raises(UsageError) as info:
            setup_task(toy_data, generate=generate)
        assert expected in str(info.value)
        return
    from fairseq import checkpoint_utils

    task = setup_task(toy_data, generate=generate)
    assert task.langs == CKPT_LANGS
    models, _ = checkpoint_utils.load_model_ensemble([str(ckpts[name])], task=task)  # no size mismatch
    full = setup_task(toy_data, generate=["--path", str(ckpts[name]), "-s", "en", "-t", "de"])
    assert task.source_dictionary.symbols == full.source_dictionary.symbols  # same token ids


def test_train_rows(toy_data, tmp_path):
    # --restore-file naming no file: refused (fairseq would train from scratch); the default is fine.
    for restore, fragment in ((tmp_path / "nope.pt", "no such file"), (tmp_path, "is a directory, not a checkpoint file")):
        with pytest.raises(UsageError, match=f"--restore-file .*: {fragment}; fairseq-train would start"):
            setup_task(toy_data, extra=["--save-dir", str(tmp_path / "s"), "--restore-file", str(restore)])
    setup_task(toy_data, extra=["--save-dir", str(tmp_path / "s")])
    # a --lang-pairs entry without data files: the files are named (fairseq: KeyError 'main:en-fr').
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in toy_data.iterdir():
        if f.name.startswith("dict.") or ".en-de." in f.name:
            shutil.copy(f, partial / f.name)
    task = setup_task(partial, extra=["--lang-pairs", "en-de,en-fr"])
    with pytest.raises(UsageError, match=r"--lang-pairs en-fr: no train data in .*partial \(looked for "
                                         r"train\.en-fr\.en\.idx and train\.fr-en\.en\.idx"):
        task.load_dataset("train")


def _generate(data, ckpt, extra, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_FORCE")}
    env.update(OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([str(BIN / "fairseq-generate"), str(data), "--user-dir", str(PLUGIN_DIR), "--task",
                           "translation_multi_simple_epoch_taskmoe", "--lang-pairs", LANG_PAIRS, *LANGTOK,
                           "-s", "en", "-t", "de", "--path", str(ckpt), *extra],
                          capture_output=True, text=True, timeout=600, env=env)


def test_fairseq_generate_one_line_errors(ckpts, toy_data):
    proc = _generate(toy_data, ckpts["good"], ["--langs", "en,de,es,fr"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("fairseq-generate: error: --langs gives the languages")
    assert "Traceback" not in proc.stderr
    proc = _generate(toy_data, ckpts["good"], [], {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "fairseq-generate: error: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 is set" in proc.stderr
