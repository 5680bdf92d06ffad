"""The bench/ scripts and fairseq-taskmoe-routing run at toy size and write well-formed JSON.

Checks keys and finite numbers only: speed is measured by the scripts, never asserted here.
"""

import importlib.util
import json
import math
import subprocess
import sys

import pytest

from taskmoe_testlib import REPO, run_cli

BENCH = REPO / "bench"


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_finite(value, where):
    assert isinstance(value, (int, float)) and math.isfinite(value), f"{where}: {value!r}"


@pytest.fixture(scope="module")
def quality(toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("quality")
    load_script("quality").main(["--smoke", "--data", str(toy_data), "--out", str(out), "--jobs", "2"])
    return out


def test_bench_decode_throughput_json(toy_data, tmp_path):
    out, png = tmp_path / "d.json", tmp_path / "d.png"
    load_script("decode_throughput").main([
        "--data", str(toy_data), "--embed-dim", "16", "--ffn-dim", "32", "--layers", "2", "--heads", "2",
        "--experts", "4", "--batch-sizes", "1,2", "--src-len", "4", "--tgt-len", "3", "--repeats", "1",
        "--out", str(out), "--plot", str(png)])
    result = json.loads(out.read_text())
    names = {"dense", "dense-active", "token-moe", "task-moe", "task-moe-plugin", "task-moe-stock"}
    assert {r["model"] for r in result["rows"]} == names
    for r in result["rows"]:
        assert_finite(r["tokens_per_s"], r)
        assert r["target_tokens"] == r["batch"] * 4  # forced length: tgt-len + EOS
    assert {"task-moe/token-moe@beam4", "task-moe-plugin/dense-active@beam1"} <= set(result["ratios"])
    for key, v in result["ratios"].items():
        assert_finite(v, key)
    assert result["random_init_weights"] is True and png.stat().st_size > 0
    # extraction shrinks the model to the dense model of the same active size
    assert result["params"]["task-moe-plugin"] == result["params"]["dense-active"]


def test_bench_moe_layer_json(tmp_path):
    out = tmp_path / "m.json"
    # A subprocess: fairscale needs a process group, which must not leak into other tests.
    subprocess.run([sys.executable, str(BENCH / "moe_layer.py"), "--embed-dim", "16", "--ffn-dim", "32",
                    "--experts", "4", "--tokens", "64,128", "--dtypes", "fp32", "--repeats", "1", "--threads", "1",
                    "--out", str(out)], check=True, capture_output=True, timeout=120)
    rows = json.loads(out.read_text())["rows"]
    assert [r["tokens"] for r in rows] == [64, 128]
    for r in rows:
        for key in ("ours_ms", "fairscale_ms", "dense-2F_ms", "ours_vs_fairscale", "ours_vs_dense-2F"):
            assert_finite(r[key], key)


def test_bench_quality_json(quality):
    result = json.loads((quality / "quality.json").read_text())
    assert result["pairs"] == ["en-de", "de-en"]
    models = {r["model"] for r in result["rows"]}
    assert models == {"dense", "token-moe", "task-moe", "student", "task-moe-extracted"}
    for r in result["rows"]:
        for key in ("avg BLEU", "avg chrF", "en-de BLEU", "de-en chrF"):
            assert_finite(r[key], f"{r['model']} {key}")
    # the extracted task-MoE decodes exactly like the full one
    assert result["extracted_equals_full"]["exact"] is True
    assert (quality / "distilled" / "train.de-en.de.idx").is_file()


def test_bench_routing_json(quality, toy_data, tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    proc = run_cli("fairseq-taskmoe-routing", [quality / "task-moe" / "checkpoint_last.pt", "--data",
                                               toy_data, "--json", out, "--png", png])
    # importing fairseq sets the root logger to DEBUG; the CLI must not print matplotlib's debug lines
    assert "DEBUG:" not in proc.stderr
    saved = json.loads(out.read_text())
    assert saved["groups"] == ["de", "en"]
    assert [(l["side"], l["routing"]) for l in saved["layers"]] == [("encoder", "token"), ("decoder", "task")]
    for layer in saved["layers"]:
        assert len(layer["counts"]) == 2 and len(layer["counts"][0]) == 4
        assert_finite(layer["top_k_share"], "top_k_share")
        assert_finite(layer["nmi"], "nmi")
    # task routing: each language always uses the same 2 experts
    assert saved["layers"][1]["top_k_share"] == pytest.approx(1.0)
    assert png.stat().st_size > 0


def test_bench_routing_scores_pure():
    import torch

    from fairseq_taskmoe.analysis.routing import normalized_mutual_information, top_k_share

    uniform = torch.ones(3, 4)
    assert top_k_share(uniform, 2) == pytest.approx(0.5)
    assert normalized_mutual_information(uniform) == pytest.approx(0.0, abs=1e-9)
    disjoint = torch.tensor([[5.0, 5.0, 0, 0], [0, 0, 3.0, 3.0]])
    assert top_k_share(disjoint, 2) == pytest.approx(1.0)
    assert normalized_mutual_information(disjoint) == pytest.approx(1.0)
