"""Extracted sub-networks reproduce the full model: logits and fairseq-generate output."""

import json
import subprocess
import sys

import pytest
import torch

from extract_testlib import decoder_logits, load, pair_batches
from taskmoe_testlib import hypotheses
from fairseq_taskmoe.extract import extract
from taskmoe_testlib import LANG_PAIRS, N_EVAL, PLUGIN_DIR, run_cli

ATOL = 1e-5


def assert_same_logits(full_path, sub_path, data, pair, stock=False):
    """Decoder logits of the full and the extracted model agree on ``pair``'s test set."""
    full, full_task = load(full_path, data, pair)
    sub, sub_task = load(sub_path, data, pair if not stock else None)
    src, tgt = pair.split("-")
    sub_row = None if stock else sub_task.task_id(src, tgt)
    checked = 0
    for net_input in pair_batches(full_task):
        assert net_input["task_ids"].eq(full_task.task_id(src, tgt)).all()
        real = net_input["prev_output_tokens"].ne(full_task.target_dictionary.pad())  # (B, T)
        a = decoder_logits(full, net_input, full_task.task_id(src, tgt))[real]
        b = decoder_logits(sub, net_input, sub_row)[real]
        assert (a - b).abs().max().item() <= ATOL
        checked += int(real.sum())
    assert checked > 0


def generate(data, ckpt, src, tgt, plugin=True):
    # Stock fairseq drops the last (n mod 8) sentences of the split unless told otherwise
    # (docs/EXTRACT.md); the plugin task batches evaluation splits with a multiple of 1 itself.
    task = (["--user-dir", PLUGIN_DIR, "--task", "translation_multi_simple_epoch_taskmoe"] if plugin
            else ["--task", "translation_multi_simple_epoch", "--required-batch-size-multiple", "1"])
    out = run_cli("fairseq-generate", [
        data, *task, "--lang-pairs", LANG_PAIRS, "--encoder-langtok", "src", "--decoder-langtok",
        "-s", src, "-t", tgt, "--path", ckpt, "--beam", "4", "--num-workers", "0",
        "--max-tokens", "4000"])
    return hypotheses(out.stdout)


def assert_same_hypotheses(full, sub):
    assert full.keys() == sub.keys() and len(full) == N_EVAL
    for sid in full:
        assert full[sid][0] == sub[sid][0], sid  # same tokens
        assert abs(full[sid][1] - sub[sid][1]) < 1e-4, sid  # score equal up to fp32 rounding


def test_plugin_single_task_logits_and_generate(token_task_ckpt, toy_data, tmp_path):
    out = tmp_path / "de"
    proc = run_cli("fairseq-taskmoe-extract", [token_task_ckpt, "--tasks", "en-de", "--out", out,
                                                    "--data", toy_data])
    report = json.loads((out / "extract.json").read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1])["tasks"] == ["de"]
    # token encoder kept whole, task decoder fused to one FFN of 2 experts' width
    assert report["moe_layout"] == {"encoder": {"1": {"experts": 4}}, "decoder": {"1": {"ffn_dim": 256}}}
    assert report["decoder_experts_kept_fraction"] == 0.5
    assert report["params_after"]["decoder"] < report["params_before"]["decoder"]
    assert {"dict.en.txt", "dict.de.txt", "checkpoint.pt"} <= {p.name for p in out.iterdir()}
    assert_same_logits(token_task_ckpt, out / "checkpoint.pt", toy_data, "en-de")
    assert_same_hypotheses(generate(toy_data, token_task_ckpt, "en", "de"),
                           generate(toy_data, out / "checkpoint.pt", "en", "de"))


def test_multi_task_exact_for_each_task(token_task_ckpt, toy_data, tmp_path):
    out = tmp_path / "multi"
    report = extract(str(token_task_ckpt), ["en-de", "en-fr"], str(out), data_dir=str(toy_data))
    assert report["tasks"] == ["de", "fr"]
    dec = report["moe_layout"]["decoder"]["1"]
    union = sorted({e for t in report["layers"][1]["per_task"] for e in t["experts"]})
    assert dec == {"experts": len(union)} and report["layers"][1]["kept"] == union
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["cfg"]["model"].moe_task_names == "de,fr"
    assert state["model"]["decoder.layers.1.moe.router.task_gate.weight"].shape == (2, len(union))
    for pair in ("en-de", "en-fr", "fr-en"):  # fr-en is task "en": not kept, so refused below
        if pair == "fr-en":
            with pytest.raises(ValueError, match="known tasks: de, fr"):
                assert_same_logits(token_task_ckpt, out / "checkpoint.pt", toy_data, pair)
        else:
            assert_same_logits(token_task_ckpt, out / "checkpoint.pt", toy_data, pair)


def test_stock_format_exact_and_decodes_without_plugin(task_task_ckpt, toy_data, tmp_path):
    out = tmp_path / "stock"
    report = extract(str(task_task_ckpt), ["en-de"], str(out), fmt="stock", data_dir=str(toy_data))
    assert report["format"] == "stock"
    assert report["stock_overhead"]["decoder"]["ffn_width"] == 256
    assert report["stock_overhead"]["ffn_flops_overhead_pct"] > 0
    ckpt = out / "checkpoint.pt"
    # A fresh process that never imports the plugin: torch's default weights_only
    # load and fairseq's loader both accept it, and the cfg names stock components.
    code = (
        "import sys, torch; from fairseq import checkpoint_utils\n"
        f"s = torch.load({str(ckpt)!r}, map_location='cpu')\n"
        "assert s['cfg']['common']['user_dir'] is None\n"
        "assert s['cfg']['task']['_name'] == 'translation_multi_simple_epoch', s['cfg']['task']['_name']\n"
        f"m, cfg, t = checkpoint_utils.load_model_ensemble_and_task([{str(ckpt)!r}], "
        f"arg_overrides={{'data': {str(toy_data)!r}}})\n"
        "assert type(m[0]).__name__ == 'TransformerModel', type(m[0])\n"
        "assert not any(k.startswith('fairseq_taskmoe') for k in sys.modules)\n"
        "print('OK')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd="/", env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
    assert_same_logits(task_task_ckpt, ckpt, toy_data, "en-de", stock=True)
    full = generate(toy_data, task_task_ckpt, "en", "de")
    assert_same_hypotheses(full, generate(toy_data, ckpt, "en", "de", plugin=False))
    # the plugin task decodes it too (it used to pass src_lang_id to the stock encoder: TypeError)
    assert_same_hypotheses(full, generate(toy_data, ckpt, "en", "de", plugin=True))


def test_plugin_format_of_task_task_model_fuses_both_sides(task_task_ckpt, toy_data, tmp_path):
    out = tmp_path / "fr"
    report = extract(str(task_task_ckpt), [], str(out), target_langs=["fr"], data_dir=str(toy_data))
    assert report["tasks"] == ["fr"] and report["pairs"] == ["en-fr"]
    assert report["moe_layout"] == {"encoder": {"1": {"ffn_dim": 256}}, "decoder": {"1": {"ffn_dim": 256}}}
    assert_same_logits(task_task_ckpt, out / "checkpoint.pt", toy_data, "en-fr")


def test_prune_token_experts(token_task_ckpt, toy_data, tmp_path):
    out = tmp_path / "pruned"
    report = extract(str(token_task_ckpt), ["en-de"], str(out), prune_token_experts=2,
                     data_dir=str(toy_data), prune_split="valid")  # --prune-data defaults to --data
    enc = report["layers"][0]
    assert enc["side"] == "encoder" and len(enc["kept"]) == 2
    counts = enc["routing_counts"]
    assert sum(counts) > 0 and min(counts[e] for e in enc["kept"]) >= max(
        c for e, c in enumerate(counts) if e not in enc["kept"])
    assert report["moe_layout"]["encoder"] == {"1": {"experts": 2}}
    model, task = load(out / "checkpoint.pt", toy_data)  # builds and loads strictly
    assert model.encoder.layers[1].moe.router.wg.weight.shape[0] == 2
    with pytest.raises(ValueError, match="--prune-token-experts must be >= --moe-top-k"):
        extract(str(token_task_ckpt), ["en-de"], str(tmp_path / "bad"), prune_token_experts=1,
                data_dir=str(toy_data))
