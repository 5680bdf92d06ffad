"""The bench/ scripts and fairseq-taskmoe-routing run at toy size and write well-formed JSON.

Checks keys and finite numbers only: speed is measured by the scripts, never asserted here.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from taskmoe_testlib import BENCH, load_script, run_cli


def assert_finite(value, where):
    assert isinstance(value, (int, float)) and math.isfinite(value), f"{where}: {value!r}"


@pytest.fixture(scope="module")
def quality(tmp_path_factory):
    """The quality study at toy size, on its own toy corpus (sentencepiece-style pieces and raw/
    references, as fairseq-taskmoe-prepare-data writes them)."""
    out = tmp_path_factory.mktemp("quality")
    load_script("quality").main(["--smoke", "--out", str(out), "--jobs", "2"])
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


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_bench_moe_layer_json(tmp_path, clock):
    out = tmp_path / "m.json"
    # A subprocess: fairscale needs a process group, which must not leak into other tests.
    subprocess.run([sys.executable, str(BENCH / "moe_layer.py"), "--embed-dim", "16", "--ffn-dim", "32",
                    "--experts", "4,8", "--tokens", "64,128", "--dtypes", "fp32", "--max-run-time", "0.01",
                    "--clock", clock, "--repeats", "2", "--threads", "1", "--device", "cpu", "--out", str(out)],
                   check=True, capture_output=True, timeout=120)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["experts"], r["tokens"]) for r in rows] == [(4, 64), (4, 128), (8, 64), (8, 128)]
    if clock == "cpu":
        assert all(r[f"{name}_runs"] == 2 for r in rows for name in ("ours-loop", "ours-grouped", "dense-2F"))
    for r in rows:
        assert r["ours_path"] in ("loop", "grouped") and r["ours_ms"] == r[f"ours-{r['ours_path']}_ms"]
        for key in ("ours_ms", "fairscale_ms", "dense-2F_ms", "ours_vs_fairscale", "ours_vs_dense-2F",
                    "grouped_vs_loop"):
            assert_finite(r[key], key)
        for name in ("ours-loop", "ours-grouped", "fairscale", "dense-2F"):  # torch.utils.benchmark.Timer's spread
            assert_finite(r[f"{name}_iqr_ms"], name)
            assert r[f"{name}_iqr_ms"] >= 0
            assert isinstance(r[f"{name}_runs"], int) and r[f"{name}_runs"] >= 1


def test_bench_quality_json(quality):
    result = json.loads((quality / "quality.json").read_text())
    pairs = ["en-de", "de-en"]
    assert result["pairs"] == pairs and result["seeds"] == [1, 2]
    test = result["subsets"]["test"]
    rows = {r["model"]: r for r in test["rows"]}
    assert set(rows) == {"dense-active", "token-moe", "task-moe", "task-moe-both", "student", "task-moe-extracted"}
    assert {m: r["seeds"] for m, r in rows.items() if r["seeds"] == 2} == {"dense-active": 2, "token-moe": 2,
                                                                          "task-moe": 2, "task-moe-both": 2}
    runs = test["scores"]
    for model, row in rows.items():
        for key in ("avg bleu", "avg bleu sd", "avg chrf", "avg chrf++", "en-de bleu", "de-en chrf sd"):
            assert_finite(row[key], f"{model} {key}")
        # the mean over seeds is the mean of the runs' own scores
        seeds = [r for r in runs if r.rsplit(".s", 1)[0] == model]
        assert row["en-de bleu"] == pytest.approx(sum(runs[r]["en-de"]["bleu"] for r in seeds) / len(seeds))
    for run in runs.values():
        for pair in pairs:
            assert run[pair]["references"].endswith(f"raw/test.en-de.{pair.split('-')[1]}")
            assert set(run[pair]["signatures"]) == {"bleu", "chrf", "chrf++"}
    # the extracted task-MoE decodes exactly like the full one
    assert test["extracted_equals_full"] == {"identical": 26, "total": 26, "exact": True}
    tests = {(t["baseline"], t["system"]): t for t in test["paired_bootstrap"]}
    assert {("token-moe.s1", "task-moe.s1"), ("token-moe.s2", "task-moe.s2")} <= set(tests)
    for t in tests.values():
        assert t["BLEU"]["segments"] == 26 and 0 < t["BLEU"]["p_value"] <= 1 and "bs:1000" in t["BLEU"]["signature"]
    # the bootstrap's scores are sacrebleu's corpus scores of the concatenated directions
    from sacrebleu.metrics import BLEU, CHRF

    hyps, refs = [], []
    for pair in pairs:
        cached = json.loads((quality / "scores" / "task-moe.s1" / "test" / f"{pair}.json").read_text())
        hyps += cached["hypotheses"]
        refs += open(cached["references"], encoding="utf-8").read().splitlines()
    t = tests[("token-moe.s1", "task-moe.s1")]
    assert t["BLEU"]["task-moe.s1"] == round(BLEU(tokenize="13a").corpus_score(hyps, [refs]).score, 2)
    assert t["chrF"]["task-moe.s1"] == round(CHRF().corpus_score(hyps, [refs]).score, 2)
    # dense-active is the extract's active size: an extract's token uses the same parameters
    # plus the encoder's router (E x d) and its second expert's output bias (d)
    params, d, experts = result["params"], 32, 4
    for lang in ("de", "en"):
        extract = params[f"task-moe-extracted.s1:{lang}"]
        assert extract["active"] - params["dense-active.s1"]["total"] == experts * d + d
        assert extract["total"] > extract["active"]  # the token-routed encoder keeps all experts
    assert params["dense-active.s1"]["total"] == params["dense-active.s1"]["active"] == params["student.s1"]["total"]


def test_bench_distill_samples_each_direction_uniformly(quality):
    sample = json.loads((quality / "distilled" / "sample.json").read_text())
    assert set(sample) == {"en-de", "de-en"}
    for pair, s in sample.items():
        assert s["sampled"] == 60 and s["translated"] == len(s["train_ids"]) <= 60
        assert max(s["train_ids"]) > 120  # a sample of the 240 train pairs, not the first 60
    assert sample["en-de"]["train_ids"] != sample["de-en"]["train_ids"]  # one sample per direction
    assert (quality / "distilled" / "train.de-en.de.idx").is_file()


def test_sample_ids_is_seeded_uniform_and_complete_when_asked_for_all():
    distill = load_script("distill")
    a = distill.sample_ids(1000, 100, 1, "en", "de")
    assert a == distill.sample_ids(1000, 100, 1, "en", "de") and len(set(a)) == 100 and a == sorted(a)
    assert a != distill.sample_ids(1000, 100, 2, "en", "de") and a != distill.sample_ids(1000, 100, 1, "de", "en")
    assert distill.sample_ids(50, 0, 1, "en", "de") == distill.sample_ids(50, 80, 1, "en", "de") == list(range(50))


def test_readme_evaluate_command_runs_as_written(quality, tmp_path):
    """`python -m fairseq_taskmoe.evaluate CKPT --data DIR --pairs ...` from any directory: the plugin's
    --user-dir and the model's --lang-pairs are defaults."""
    ckpt, data = quality / "runs" / "task-moe.s1" / "checkpoint_last.pt", quality / "toy" / "bin"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "fairseq_taskmoe.evaluate", str(ckpt), "--data", str(data),
                           "--pairs", "en-de", "--json", str(tmp_path / "s.json")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["lang_pairs"] == "en-de,de-en" and "bleu signature: nrefs:1" in proc.stdout
    full = json.loads((quality / "scores" / "task-moe.s1" / "test" / "en-de.json").read_text())
    assert saved["pairs"]["en-de"]["hypotheses"] == full["hypotheses"]


def test_bench_routing_json(quality, tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    proc = run_cli("fairseq-taskmoe-routing", [quality / "runs" / "task-moe.s1" / "checkpoint_last.pt", "--data",
                                               quality / "toy" / "bin", "--json", out, "--png", png])
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


def test_bench_quality_resumes_from_its_outputs(quality, capsys):
    """A re-run trains nothing and re-scores only what is missing (here one direction of one run)."""
    before = json.loads((quality / "quality.json").read_text())["subsets"]["test"]
    (quality / "scores" / "task-moe.s2" / "test" / "de-en.json").unlink()
    capsys.readouterr()
    after = load_script("quality").main(["--smoke", "--out", str(quality), "--jobs", "1"])["subsets"]["test"]
    printed = capsys.readouterr().out
    assert "starting" not in printed and "resuming" not in printed and printed.count("train ") == 9
    assert printed.count("translating") == 1 and "[task-moe.s2 test 2/2] [1/1] de-en: translating" in printed
    assert after["rows"] == before["rows"] and after["paired_bootstrap"] == before["paired_bootstrap"]


def test_bench_quality_claims_carry_cluster_segment_and_seed_level_tests(quality):
    """Every B-vs-A claim: per seed a cluster and a segment bootstrap of the average BLEU over
    directions, the seed-level test over their differences, and a label from the documented rule."""
    from fairseq_taskmoe.scoring.seeds import claim_label

    test = json.loads((quality / "quality.json").read_text())["subsets"]["test"]
    claims = {(c["baseline"], c["system"]): c for c in test["claims"]}
    assert {("token-moe", "task-moe"), ("dense-active", "task-moe"), ("token-moe", "task-moe-both")} <= set(claims)
    c = claims[("token-moe", "task-moe")]
    assert [s["seed"] for s in c["per_seed"]] == [1, 2] and c["seed_level"]["bleu"]["seeds"] == 2
    rows = {r["model"]: r for r in test["rows"]}
    for s in c["per_seed"]:
        cluster, segment = s["cluster"], s["segment"]
        assert cluster["resampled"]["unit"] == "cluster" and segment["resampled"]["unit"] == "segment"
        assert cluster["resampled"]["segments"] == segment["resampled"]["units"] == 26
        assert cluster["resampled"]["units"] == 13  # one English string per en-de / de-en segment pair
        assert cluster["bleu"]["diff"] == segment["bleu"]["diff"]
        # the statistic is the table's: BLEU averaged over the two directions
        runs = test["scores"]
        mean = lambda run: sum(runs[run][p]["bleu"] for p in ("en-de", "de-en")) / 2  # noqa: E731
        assert cluster["bleu"]["a"] == pytest.approx(mean(f"token-moe.s{s['seed']}"), abs=0.01)
        assert 0 < cluster["bleu"]["p_value"] <= 1
    assert c["seed_level"]["bleu"]["diffs"] == [s["cluster"]["bleu"]["diff"] for s in c["per_seed"]]
    assert c["seed_level"]["bleu"]["min_p_value"] == 0.5
    assert c["label"] == claim_label(c["seed_level"]["bleu"], [s["cluster"]["bleu"]["p_value"] for s in c["per_seed"]])
    assert test["clusters"] == {"count": 13, "keys": ["derived"]}  # the toy corpus has no .cluster files
    assert set(test["loops"]["task-moe.s1"]) == {"pairs", "out-of-English", "into-English", "all"}
    assert all(0 <= r["loops %"] <= 100 for r in rows.values())


def test_bench_quality_recomputes_its_tables_from_the_saved_hypotheses(quality, tmp_path):
    saved = json.loads((quality / "quality.json").read_text())
    hyps = quality / saved["hypotheses_file"]
    assert hyps.name == "quality.hyps.jsonl.gz"
    again = load_script("quality").main(["--from-hypotheses", str(hyps), "--json", str(tmp_path / "r.json")])
    before, after = saved["subsets"]["test"], again["subsets"]["test"]
    assert after["rows"] == before["rows"] and after["claims"] == before["claims"]
    assert after["paired_bootstrap"] == before["paired_bootstrap"]
    assert json.loads((tmp_path / "r.json").read_text())["recomputed_from"] == str(hyps)


def test_bench_upcycle_runs_and_tests_its_claims_like_the_quality_study(tmp_path):
    """bench/upcycle.py at toy size: every model trained and scored, each continuation tested
    against dense-continued by the quality study's claims (cluster bootstrap, seed-level test,
    label), hypotheses saved; a top-1 task-routed extract has exactly the dense model's size;
    --eval-n scores a fixed sample of each direction."""
    from fairseq_taskmoe.scoring.records import read_records

    result = load_script("upcycle").main(["--smoke", "--out", str(tmp_path / "u"), "--jobs", "2",
                                          "--bootstrap-samples", "200", "--eval-n", "5"])
    assert result["subset scored"] == "test_sample5"
    assert {p: s["sentences"] for p, s in result["scores"]["dense.s1"].items()} == {"en-de": 5, "de-en": 5}
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {"dense", "dense-continued", "upcycled-task-top1", "upcycled-task-top2",
                         "upcycled-token", "scratch-task-top1"}
    dense = rows["dense"]["params_total"]
    assert rows["upcycled-task-top1"]["extract params (de)"] == dense < rows["upcycled-task-top1"]["params_total"]
    assert rows["upcycled-task-top2"]["extract params (de)"] > dense  # FFN width 2F where the experts are
    for r in rows.values():
        assert_finite(r["BLEU"], r["model"]) and assert_finite(r["flops_per_update"], r["model"])
    claims = {c["system"]: c for c in result["comparisons"]}
    assert set(claims) == set(rows) - {"dense", "dense-continued"}
    for c in claims.values():
        assert c["baseline"] == "dense-continued" and c["per_seed"][0]["cluster"]["resampled"]["unit"] == "cluster"
        assert c["label"] in ("significant at the seed level", "suggestive", "no difference found")
    _, hyps = read_records(tmp_path / "u" / result["hypotheses_file"])
    assert {run for run, _, _ in hyps} == {f"{m}.s1" for m in rows}


def test_bench_train_speed_times_the_same_batches_interleaved(tmp_path):
    """bench/train_speed.py at toy size: dense and task-MoE see identical batches, words/s come from
    fairseq's per-update log lines (warm-up updates excluded), ratios are taken within a round."""
    ts = load_script("train_speed")
    result = ts.main(["--smoke", "--out", str(tmp_path), "--threads", "1", "--repeats", "2",
                      "--json", str(tmp_path / "ts.json"), "--plot", str(tmp_path / "ts.png")])
    assert result["same_batches"] and (tmp_path / "ts.png").is_file()
    assert [r["run"] for r in result["runs"]] == ["dense-active", "task-moe E=4", "task-moe E=4", "dense-active"]
    summary = {r["run"]: r for r in result["summary"]}
    for r in summary.values():
        assert r["repeats"] == 2 and r["params"] > 0
        assert_finite(r["words/s median"], r["run"])
    moe = summary["task-moe E=4"]
    assert moe["params"] > summary["dense-active"]["params"] and moe["target"].startswith(">= 0.9: ")
    per_round = {(r["round"], r["run"]): r["words_per_s"] for r in result["runs"]}
    ratios = sorted(per_round[(k, "task-moe E=4")] / per_round[(k, "dense-active")] for k in (1, 2))
    assert (moe["vs dense min"], moe["vs dense max"]) == pytest.approx(tuple(ratios))
    # the parser: warm-up updates are not timed; words/s = tokens over summed seconds
    assert ts.timed_speed([(1, 100.0, 10.0), (2, 300.0, 100.0), (3, 100.0, 50.0)], warmup=1) == (400.0, 5.0, 80.0)


def test_bench_quality_scores_a_fixed_sample_with_eval_n(quality):
    """--eval-n N scores the first N sentences of each direction (trained models reused), reported as
    test_sampleN, with the cluster keys of those segments."""
    result = load_script("quality").main(["--smoke", "--out", str(quality), "--jobs", "2", "--eval-n", "5",
                                          "--models", "token-moe,task-moe", "--json", str(quality / "q5.json")])
    assert set(result["subsets"]) == {"test_sample5"}
    sample = result["subsets"]["test_sample5"]
    assert {r["model"] for r in sample["rows"]} == {"token-moe", "task-moe", "task-moe-extracted"}
    from fairseq_taskmoe.scoring.records import read_records

    _, hyps = read_records(quality / result["hypotheses_file"])
    assert {len(h) for (_, subset, _), h in hyps.items() if subset == "test_sample5"} == {5}
    claim = next(c for c in sample["claims"] if (c["baseline"], c["system"]) == ("token-moe", "task-moe"))
    assert claim["per_seed"][0]["cluster"]["resampled"]["segments"] == 10
