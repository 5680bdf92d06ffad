"""bench/serve.py at toy size: every system decodes the same forced-length work; JSON well formed.

Speed is measured by the script, never asserted here.
"""

import json
import math
import sys

from taskmoe_testlib import BENCH, load_script


def test_bench_serve_json(tmp_path):
    sys.path.insert(0, str(BENCH))
    import benchlib

    data = benchlib.toy_corpus(tmp_path / "toy", langs=("de",))
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    serve = load_script("serve")
    serve.main(["--data", str(data), "--pair", "en-de", "--experts", "4", "--embed-dim", "16",
                "--ffn-dim", "32", "--layers", "2", "--heads", "2", "--sentences", "5", "--tgt-len", "3",
                "--beams", "1,2", "--batch-sizes", "2,8", "--threads", "1", "--repeats", "3", "--out", str(out),
                "--plot", str(png)])
    result = json.loads(out.read_text())
    assert {r["system"] for r in result["rows"]} == set(serve.SYSTEMS)
    for r in result["rows"]:
        assert math.isfinite(r["sentences_per_s"]) and r["sentences_per_s"] > 0, r
        # forced length, every engine: language token + tgt-len tokens + </s>, per sentence
        assert r["target_tokens"] == 5 * (3 + 2), r
        # the median pass, with the slowest and fastest of the 3 timed passes as its spread
        assert r["passes"] == 3 and r["sentences_per_s_min"] <= r["sentences_per_s"] <= r["sentences_per_s_max"], r
    for name, mem in result["memory"].items():
        assert mem["peak_rss_mb"] >= mem["rss_loaded_mb"] > 0, name
    assert any(k.startswith("E=4 beam 2: ct2 extract int8 / fairseq token-moe") for k in result["ratios"])
    assert all(v is None or math.isfinite(v) for v in result["ratios"].values())
    assert result["models"]["4"]["dense ffn width"] == {"encoder": 48, "decoder": 48}  # mean of 32, 64
    assert png.stat().st_size > 0
