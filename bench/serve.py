"""Serving throughput and memory: fairseq (full models, extract) against CTranslate2 (extract, dense).

    python bench/serve.py --data data/loc8 --pair en-de --experts 32,128 --embed-dim 512 --ffn-dim 2048 \
        --layers 6 --heads 8 --batch-sizes 1,2,4,8,16,32,64 --beams 1,4 --sentences 256 --threads 2

Sources are real test sentences of the pair (DATA/raw/test.SRC-TGT.SRC, sentencepiece
pieces through each engine's own path: ``fairseq_taskmoe.serve.from_pretrained``).
Weights are random (speed and memory do not depend on them), so every hypothesis is
forced to the same length (``--tgt-len`` tokens after the language token, then </s>:
fairseq's --min-len / --max-len-b, CTranslate2's min/max_decoding_length) and all
systems do the same work. Systems, per E in --experts:

- fairseq token-moe:      transformer_taskmoe, token routing in encoder and decoder
- fairseq task-moe:       task routing (by target language) in encoder and decoder
- fairseq task-moe extract: its --format stock extract for --pair
- ct2 extract float32 / int8: the same extract, fairseq-taskmoe-extract --format ctranslate2
- ct2 dense int8:         a dense transformer of the extract's active size (each side's FFN width
                          is the mean of the extract's per-layer widths), converted the same way

The stock extract (and so its CTranslate2 model) has one FFN width per side: narrower layers
are zero-padded (extract.json's stock_overhead), which is what separates it from the dense model.

Each system runs in its own process (peak RSS = that process's VmHWM; the RSS after
importing the engine and after loading the model are reported too), over every beam and batch size, --repeats timed
passes over the sentences (median; the slowest and fastest pass give the spread). Prints a table,
writes JSON and a PNG.
With --demo-checkpoint, also scores a trained model's extract (float32 vs int8 CTranslate2
BLEU on the pair's test split, quality only).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

SYSTEMS = ("fairseq token-moe", "fairseq task-moe", "fairseq task-moe extract", "ct2 extract float32",
           "ct2 extract int8", "ct2 dense int8")


def rss_mb(field="VmRSS") -> float:
    """This process's resident memory (VmRSS) or its peak (VmHWM), MB.

    VmHWM, not getrusage's ru_maxrss: ru_maxrss survives fork + exec, so a worker would
    report its parent's peak (the parent holds the full models while building them).
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def test_sources(data, pair, n):
    src, tgt = pair.split("-")
    for prefix in (f"{src}-{tgt}", f"{tgt}-{src}"):
        path = Path(data) / "raw" / f"test.{prefix}.{src}"
        if path.is_file():
            lines = [l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
            return lines[:n]
    raise FileNotFoundError(f"{data}/raw/test.{src}-{tgt}.{src}: raw test sentences of --pair are missing")


# --- building the models (parent process) -----------------------------------------------------------

def model_flags(args, routing, experts, ffn=None):
    ffn = ffn or args.ffn_dim
    dims = ["--arch", "transformer_taskmoe", "--encoder-embed-dim", args.embed_dim, "--decoder-embed-dim",
            args.embed_dim, "--encoder-ffn-embed-dim", ffn, "--decoder-ffn-embed-dim", ffn,
            "--encoder-layers", args.layers, "--decoder-layers", args.layers, "--encoder-attention-heads",
            args.heads, "--decoder-attention-heads", args.heads, "--share-all-embeddings",
            "--moe-expert-count", experts, "--moe-top-k", "2", "--moe-freq", "2"]
    if routing == "dense":
        return dims + ["--moe-freq", "0"]
    return dims + ["--moe-encoder-routing", routing, "--moe-decoder-routing", routing]


def dense_ct2(args, widths, work):
    """CTranslate2 int8 model of a random dense transformer with FFN widths ``widths`` per side."""
    from fairseq_taskmoe.extract import stock
    from fairseq_taskmoe.serve import ctranslate2_export as ct2_export

    width = {side: int(round(statistics.mean(w))) for side, w in widths.items()}
    assert width["encoder"] == width["decoder"], "symmetric models only"
    model, _, margs = benchlib.build(args.data, model_flags(args, "dense", 2, width["encoder"]), args.lang_pairs)
    ckpt = benchlib.save_like_training(model, margs, Path(work) / "dense.pt")
    from fairseq_taskmoe.checkpoints import load_source

    state = load_source(str(ckpt))
    out = Path(work) / "ct2-dense-int8"
    out.mkdir()
    info = ct2_export.convert(stock.stock_state(state, state["model"], width), str(out), str(args.data),
                              [args.pair], "int8")
    tgt = args.pair.split("-")[1]
    (out / "extract.json").write_text(json.dumps({"tasks": [tgt], "moe_task_by": "target_lang",
                                                  "ctranslate2": info, "dense_ffn_width": width}))
    spm = Path(args.data) / "spm.model"
    if spm.is_file():
        (out / "spm.model").write_bytes(spm.read_bytes())
    return out, width, benchlib.count_params(model)


def build_systems(args, experts, work):
    """{system: (path, data or None)} and facts about the models."""
    from fairseq_taskmoe.extract import extract

    paths, facts = {}, {}
    for routing in ("token", "task"):
        model, _, margs = benchlib.build(args.data, model_flags(args, routing, experts), args.lang_pairs)
        facts[f"params {routing}-moe"] = benchlib.count_params(model)
        ckpt = benchlib.save_like_training(model, margs, Path(work) / f"{routing}-moe.pt")
        paths[f"fairseq {routing}-moe"] = (ckpt, args.data)
        del model
    task_ckpt = paths["fairseq task-moe"][0]
    report = extract(str(task_ckpt), [args.pair], str(Path(work) / "stock"), fmt="stock", data_dir=str(args.data))
    paths["fairseq task-moe extract"] = (Path(work) / "stock", None)
    facts["params extract"] = report["params_after"]["total"]
    facts["params extract written (padded)"] = report["params_written"]["total"]
    facts["stock_overhead"] = report["stock_overhead"]
    for q in ("float32", "int8"):
        out = Path(work) / f"ct2-{q}"
        extract(str(task_ckpt), [args.pair], str(out), fmt="ctranslate2", quantization=q, data_dir=str(args.data))
        paths[f"ct2 extract {q}"] = (out, None)
    widths = {side: report["stock_overhead"][side]["layer_widths_before_padding"] for side in ("encoder", "decoder")}
    out, width, n = dense_ct2(args, widths, work)
    paths["ct2 dense int8"] = (out, None)
    facts["dense ffn width"], facts["params dense"] = width, n
    return paths, facts


# --- one system in its own process ------------------------------------------------------------------

def worker(spec):
    """Load one model, decode every (beam, batch) point, print one JSON line."""
    import torch

    from fairseq_taskmoe.serve import from_pretrained

    torch.set_num_threads(spec["threads"])
    rss_import = rss_mb()
    model = from_pretrained(spec["path"], data=spec["data"], threads=spec["threads"])
    rss_loaded = rss_mb()
    src, tgt = spec["pair"].split("-")
    sentences, length = spec["sentences"], spec["tgt_len"] + 1  # + the language token
    rows = []
    for beam in spec["beams"]:
        for batch in spec["batch_sizes"]:
            def run():
                model.translate(sentences, src, tgt, beam=beam, lenpen=1.0, batch_size=batch,
                                max_len_b=length, min_len=length)
            t0 = time.perf_counter()
            times = benchlib.timings(run, min_repeats=spec["repeats"])
            secs = times[len(times) // 2]  # the median pass; the fastest and slowest give the spread
            tokens = model.last_target_tokens
            rows.append({"beam": beam, "batch": batch, "seconds": secs, "sentences_per_s": len(sentences) / secs,
                         "sentences_per_s_min": len(sentences) / times[-1],
                         "sentences_per_s_max": len(sentences) / times[0], "passes": len(times),
                         "target_tokens_per_s": tokens / secs, "target_tokens": tokens})
            print(f"  {spec['system']:>24} beam {beam} batch {batch:>3}: {len(sentences) / secs:8.1f} sent/s",
                  file=sys.stderr, flush=True)
            if spec["budget"] and time.perf_counter() - t0 > spec["budget"]:
                break  # larger batches of this beam would only take longer
    peak = rss_mb("VmHWM")
    print(json.dumps({"rows": rows, "rss_after_import_mb": rss_import, "rss_loaded_mb": rss_loaded,
                      "peak_rss_mb": peak}))


def run_worker(spec):
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                          text=True, env=env)
    sys.stderr.write("\n".join(l for l in proc.stderr.splitlines() if l.startswith("  ")) + "\n")
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['system']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- summary ----------------------------------------------------------------------------------------

def best(rows, system, beam, experts):
    mine = [r for r in rows if r["system"] == system and r["beam"] == beam and r["experts"] == experts]
    return max(mine, key=lambda r: r["sentences_per_s"]) if mine else None


def ratios(rows, beams, experts_list):
    out = {}
    for e in experts_list:
        for beam in beams:
            peak = {s: best(rows, s, beam, e) for s in SYSTEMS}
            def ratio(a, b):
                return peak[a]["sentences_per_s"] / peak[b]["sentences_per_s"] if peak[a] and peak[b] else None
            key = f"E={e} beam {beam}"
            out[f"{key}: ct2 extract int8 / fairseq token-moe (target >= 5)"] = ratio("ct2 extract int8", "fairseq token-moe")
            out[f"{key}: ct2 extract int8 / ct2 dense int8 (target >= 0.95)"] = ratio("ct2 extract int8", "ct2 dense int8")
            out[f"{key}: ct2 extract int8 / fairseq task-moe extract"] = ratio("ct2 extract int8", "fairseq task-moe extract")
            out[f"{key}: fairseq task-moe extract / fairseq token-moe"] = ratio("fairseq task-moe extract", "fairseq token-moe")
    return out


def plot(rows, beams, experts_list, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(experts_list), len(beams), figsize=(5.5 * len(beams), 4 * len(experts_list)),
                             squeeze=False)
    for i, e in enumerate(experts_list):
        for j, beam in enumerate(beams):
            ax = axes[i][j]
            for s in SYSTEMS:
                pts = sorted((r["batch"], r["sentences_per_s"]) for r in rows
                             if r["system"] == s and r["beam"] == beam and r["experts"] == e)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=s)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch size (sentences)")
            ax.set_ylabel("sentences/s")
            ax.set_title(f"E={e}, {'greedy' if beam == 1 else f'beam {beam}'}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def ints(text):
    return [int(x) for x in str(text).split(",") if x]


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(benchlib.REPO / "data/loc8"), help="binarized data dir with raw/ and spm.model")
    p.add_argument("--lang-pairs", default=None, help="default: the data dir's lang_pairs.txt")
    p.add_argument("--pair", default="en-de")
    p.add_argument("--experts", type=ints, default=[32, 128], help="E values (paper: 32 and 128)")
    p.add_argument("--embed-dim", type=int, default=512)
    p.add_argument("--ffn-dim", type=int, default=2048)
    p.add_argument("--layers", type=int, default=6, help="encoder and decoder layers each")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--sentences", type=int, default=256, help="test sentences decoded per pass")
    p.add_argument("--tgt-len", type=int, default=24, help="forced target length (tokens before </s>)")
    p.add_argument("--beams", type=ints, default=[1, 4], help="1 = greedy")
    p.add_argument("--batch-sizes", type=ints, default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--repeats", type=int, default=1, help="timed passes per point (median, after a warm-up)")
    p.add_argument("--budget", type=float, default=None, help="a system stops growing the batch of a beam "
                   "once one point took longer (seconds; default: no limit). Small batches are the slow "
                   "points, so a budget below what batch 1 takes measures batch 1 only")
    p.add_argument("--threads", type=int, default=2, help="threads of every engine")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of: " + ", ".join(SYSTEMS))
    p.add_argument("--out", default=str(benchlib.REPO / "bench/results/serve.json"))
    p.add_argument("--plot", default=str(benchlib.REPO / "bench/figures/serve.png"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"--systems: unknown {unknown}; valid: {', '.join(SYSTEMS)}")
    sentences = test_sources(args.data, args.pair, args.sentences)
    rows, facts, procs = [], {}, {}
    for experts in args.experts:
        with tempfile.TemporaryDirectory(prefix="serve_bench_") as work:
            paths, facts[experts] = build_systems(args, experts, work)
            for system in systems:
                path, data = paths[system]
                spec = {"system": system, "path": str(path), "data": str(data) if data else None,
                        "pair": args.pair, "sentences": sentences, "tgt_len": args.tgt_len, "beams": args.beams,
                        "batch_sizes": args.batch_sizes, "repeats": args.repeats, "threads": args.threads,
                        "budget": args.budget}
                res = run_worker(spec)
                procs[f"E={experts} {system}"] = {k: v for k, v in res.items() if k != "rows"}
                rows += [dict(r, system=system, experts=experts) for r in res["rows"]]
    result = {"bench": "serve", "env": benchlib.environment(), "config": vars(args), "random_init_weights": True,
              "sentences": len(sentences), "models": facts, "memory": procs, "rows": rows,
              "ratios": ratios(rows, args.beams, args.experts), "plot": args.plot}
    print(benchlib.table(rows, ["experts", "system", "beam", "batch", "sentences_per_s", "sentences_per_s_min",
                                "sentences_per_s_max", "passes", "target_tokens_per_s"]))
    print(benchlib.table([dict(system=k, **v) for k, v in procs.items()],
                         ["system", "rss_after_import_mb", "rss_loaded_mb", "peak_rss_mb"]))
    print(benchlib.table([{"ratio": k, "value": v} for k, v in result["ratios"].items()], ["ratio", "value"]))
    plot(rows, args.beams, args.experts, args.plot)
    benchlib.write_json(result, args.out)
    print(f"wrote {args.out} and {args.plot}")
    return result


if __name__ == "__main__":
    main()
