"""At initialisation the upcycled model is the dense model: log-probs (1e-5) and fairseq-generate.

Grid: routing (task, sentence, token: every side), top-1 and top-2, pre- and
post-norm, for a stock ``transformer`` trained with ``translation_multi_simple_epoch``
and language tokens; token and sentence routing for a bilingual ``translation``
model (pre-norm, separate dictionaries; a one-pair model has one task, so task
routing is refused: test_bad_input.py). Every layer is an MoE layer
(``--moe-freq 1``). The comparison loads both checkpoints through fairseq's own
loader, independently of the tool's built-in check.
"""

import json
import subprocess
import sys

import pytest
import torch

from fairseq_taskmoe.upcycle import UpcycleOptions, upcycle
from taskmoe_testlib import PLUGIN_DIR, run_cli
from taskmoe_testlib import hypotheses
from upcycle_testlib import ATOL, ML_PAIRS, max_logprob_diff

GRID = [(norm, routing, k) for norm in ("post", "pre") for routing in ("task", "sentence", "token")
        for k in (1, 2)]


def _options(routing, k, **extra):
    return UpcycleOptions(expert_count=4, freq=1, top_k=k, encoder_routing=routing,
                          decoder_routing=routing, **extra)


@pytest.mark.parametrize("norm,routing,k", GRID)
def test_multilingual_exact(dense, toy_data, tmp_path, norm, routing, k):
    out = tmp_path / "init.pt"
    report = upcycle(str(dense[f"ml_{norm}"]), str(out), _options(routing, k))
    assert [(l["side"], l["layer"]) for l in report["layers"]] == [
        ("encoder", 0), ("encoder", 1), ("decoder", 0), ("decoder", 1)]
    state = torch.load(out, weights_only=True)
    assert state["cfg"]["model"].moe_task_names == "de,en,fr"
    for pair in ("en-de", "de-en"):  # two tasks: different task-gate rows
        assert max_logprob_diff(dense[f"ml_{norm}"], out, toy_data, pair) <= ATOL


@pytest.mark.parametrize("routing,k", [(r, k) for r in ("sentence", "token") for k in (1, 2)])
def test_bilingual_exact(dense, bi_data, tmp_path, routing, k):
    out = tmp_path / "init.pt"
    upcycle(str(dense["bi"]), str(out), _options(routing, k))
    state = torch.load(out, weights_only=True)
    assert state["cfg"]["task"].task == "translation"
    # separate dictionaries: the encoder embedding stays its own tensor
    assert not torch.equal(state["model"]["encoder.embed_tokens.weight"],
                           state["model"]["decoder.embed_tokens.weight"])
    assert max_logprob_diff(dense["bi"], out, bi_data, "en-de") <= ATOL


def test_ours_without_moe_layers_exact(dense, toy_data, tmp_path):
    out = tmp_path / "init.pt"
    upcycle(str(dense["ours_freq0"]), str(out), _options("task", 1, data=str(toy_data)))
    assert max_logprob_diff(dense["ours_freq0"], out, toy_data, "en-fr") <= ATOL


def _generate(data, ckpt, task_flags):
    out = run_cli("fairseq-generate", [data, *task_flags, "--path", ckpt, "--beam", "4",
                                       "--num-workers", "0", "--max-tokens", "4000",
                                       "--required-batch-size-multiple", "1"])
    return hypotheses(out.stdout)


def _assert_same(a, b):
    assert a.keys() == b.keys() and len(a) > 0
    for sid in a:
        assert a[sid][0] == b[sid][0], sid
        assert abs(a[sid][1] - b[sid][1]) < 1e-4, sid


def test_generate_multilingual_via_cli(dense, toy_data, tmp_path):
    """The console module with --data (the built-in check passes), then fairseq-generate on both."""
    out = tmp_path / "init.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "fairseq_taskmoe.upcycle", str(dense["ml_post"]), "--out", str(out),
         "--data", str(toy_data), "--moe-expert-count", "4", "--moe-top-k", "1",
         "--moe-encoder-routing", "token", "--moe-decoder-routing", "task"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["check"]["same_hypotheses"] == summary["check"]["sentences"] == 12  # 3 pairs x 4
    assert "check passed" in proc.stderr and "--finetune-from-model" in proc.stderr
    common = ["--lang-pairs", ML_PAIRS, "--encoder-langtok", "src", "--decoder-langtok", "-s", "en",
              "-t", "fr"]
    # (--user-dir for the dense model too: only the plugin lets torch >= 2.6 load an argparse
    # checkpoint safely; the task and model stay stock)
    stock = _generate(toy_data, dense["ml_post"], ["--user-dir", PLUGIN_DIR, "--task",
                                                   "translation_multi_simple_epoch", *common])
    moe = _generate(toy_data, out, ["--user-dir", PLUGIN_DIR, "--task",
                                    "translation_multi_simple_epoch_taskmoe", *common])
    _assert_same(stock, moe)


def test_generate_bilingual(dense, bi_data, tmp_path):
    out = tmp_path / "init.pt"
    upcycle(str(dense["bi"]), str(out), _options("token", 2, data=str(bi_data)))
    task = ["--task", "translation", "-s", "en", "-t", "de"]
    _assert_same(_generate(bi_data, dense["bi"], ["--user-dir", PLUGIN_DIR, *task]),
                 _generate(bi_data, out, ["--user-dir", PLUGIN_DIR, *task]))


@pytest.mark.parametrize("stored_as", ["legacy-args", "plain-dicts"])
def test_other_ways_to_store_the_args(dense, toy_data, tmp_path, stored_as):
    """Old checkpoints keep one ``args`` Namespace; dataclass-style ones keep plain dicts."""
    state = torch.load(dense["ml_post"], weights_only=True)
    if stored_as == "legacy-args":
        state["args"], state["cfg"] = state["cfg"]["model"], None
    else:
        state["cfg"]["model"] = dict(vars(state["cfg"]["model"]))
        state["cfg"]["task"] = dict(vars(state["cfg"]["task"]))
    source = tmp_path / "dense.pt"
    torch.save(state, source)
    out = tmp_path / "init.pt"
    upcycle(str(source), str(out), _options("task", 1, data=str(toy_data)))
    assert max_logprob_diff(dense["ml_post"], out, toy_data, "en-fr") <= ATOL
