"""bench/libretranslate.py's load generator and target lines, with a fake service (no server).

The script's end-to-end run (LibreTranslate + the in-process API at toy size) is in
tests/integration/test_libretranslate.py, which needs LibreTranslate's environment.
"""

import threading
import time

import pytest

from taskmoe_testlib import load_script


def test_closed_loop_counts_every_request_and_error():
    bench = load_script("libretranslate")
    seen, lock = [], threading.Lock()

    def call(pair, sentence):
        with lock:
            seen.append((pair, sentence))
        if sentence == "bad":
            raise RuntimeError("HTTP 400")
        time.sleep(0.005)
        return 3

    sentences = {"en-de": ["a", "b", "bad"], "de-en": ["c"]}
    row = bench.closed_loop(call, sentences, ["en-de", "de-en"], [1.0, 1.0], clients=3, duration=0.5, seed=1)
    assert row["requests"] + row["errors"] == len(seen) and row["errors"] == sum(s == "bad" for _, s in seen)
    assert row["requests"] > 0 and row["errors"] > 0 and "HTTP 400" in row["error_examples"][0]
    assert row["tokens_per_s"] == pytest.approx(3 * row["requests"] / row["wall_s"], rel=0.03)
    assert 0.005 <= row["p50_s"] <= row["p95_s"] <= row["p99_s"]
    assert {p for p, _ in seen} == {"en-de", "de-en"}


def test_zipf_mix_favours_the_first_directions():
    bench = load_script("libretranslate")
    assert bench.mix_weights(["a", "b", "c", "d"], "zipf") == [1.0, 0.5, 1 / 3, 0.25]
    assert bench.mix_weights(["a", "b"], "uniform") == [1.0, 1.0]
    with pytest.raises(ValueError, match="--mixes"):
        bench.mix_weights(["a"], "pareto")


def test_target_lines_compare_libretranslate_with_the_token_moe():
    bench = load_script("libretranslate")
    rows = [{"system": "libretranslate", "mix": "uniform", "clients": 4, "sentences_per_s": 10.0, "p99_s": 0.5},
            {"system": "fairseq token-moe", "mix": "uniform", "clients": 4, "sentences_per_s": 2.0, "p99_s": 2.0}]
    lines = bench.targets(rows, {})
    assert "libretranslate / token-moe = 5.00x (met >= 4x)" in lines[0]
    assert "p99 0.500 s (met < 1 s)" in lines[1]
    rows[0]["sentences_per_s"] = 4.0
    assert "MISSED" in bench.targets(rows, {})[0]
