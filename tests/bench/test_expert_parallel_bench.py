"""bench/expert_parallel.py at toy size (2 gloo ranks): well-formed JSON, finite numbers.

Speed is measured by the script, never asserted; only the byte counts are exact, and the
split-size all-to-all never sends more than the padded one it replaced."""

import json
import math
import os
import subprocess
import sys

from taskmoe_testlib import REPO


def test_expert_parallel_bench_smoke(tmp_path):
    out = tmp_path / "ep.json"
    # a subprocess: the 2 ranks are spawned, so the script must be importable as __main__
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "expert_parallel.py"), "--tokens", "128",
                           "--embed-dim", "16", "--ffn-dim", "32", "--experts", "4", "--repeats", "1",
                           "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["layer"]
    assert {(r["routing"], r["world"], r["a2a"]) for r in rows} == {
        ("token", 1, "-"), ("task", 1, "-"), ("token", 2, "split"), ("token", 2, "padded"),
        ("task", 2, "split"), ("task", 2, "padded")}
    for r in rows:
        assert math.isfinite(r["step_ms"]) and r["step_ms"] > 0
    sent = {(r["routing"], r["a2a"]): r["bytes_sent_per_layer"] for r in rows if r["world"] == 2}
    for routing in ("token", "task"):
        # split: 2 ranks x tokens x top-2 rows, D fp32 values, both directions
        assert sent[routing, "split"] == 2 * 128 * 2 * 16 * 4 * 2
        assert sent[routing, "padded"] >= sent[routing, "split"]
