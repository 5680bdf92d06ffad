"""Loopback HTTP load on LibreTranslate serving our Argos packages, against our in-process API.

    python bench/libretranslate.py --checkpoint demo/ckpt/checkpoint_last.pt \
        --token-checkpoint demo-token/ckpt/checkpoint_last.pt --data data/loc8 \
        --clients 1,2,4,8,16 --mixes uniform,zipf --duration 30 --threads 1 \
        --out bench/results/libretranslate.json --plot bench/figures/libretranslate.png

Systems (each in its own process, so its resident memory is its own):

- (a) ``libretranslate``: LibreTranslate (its own env, ``make libretranslate-env``) on
  127.0.0.1 serving ``--checkpoint``'s packages for every direction
  (``fairseq-taskmoe-extract --tasks all --format argos``); the clients POST /translate,
  one sentence per request, over HTTP. CTranslate2 intra-op threads = ``--threads``.
- (b) ``fairseq task-moe``: ``fairseq_taskmoe.serve.from_pretrained(--checkpoint)``, the full
  task-MoE in fairseq, called in-process (``fairseq-taskmoe-translate``'s API) by the same
  closed-loop clients, one call at a time (the translator is not thread-safe), torch threads
  = ``--threads``. No HTTP: that favours (b) and (c).
- (c) ``fairseq token-moe``: the same on ``--token-checkpoint``, a token-routed MoE of the same
  size (trained with the same flags but ``--moe-*-routing token``).

All decode with argos' options: beam 4, length penalty 0.2, at most 256 target tokens. A
trained token-MoE and task-MoE translate differently, so the tables give target tokens/s
too. Load: closed-loop clients (each sends its next request when the previous one
returns) for ``--duration`` s per point, after a warm-up request per direction (which
loads every direction: LibreTranslate loads a package's model on first use). Requests
pick a direction uniformly or by a Zipf law (p_k ~ 1/k over the directions in
``--lang-pairs`` order) and a sentence of that direction's real test split
(``DATA/raw/test.en-xx.SRC``) uniformly. Reported per point: requests/s, sentences/s,
target tokens/s (sentencepiece pieces of the output), p50/p95/p99 latency, and the
server's RSS after warm-up and its peak (VmHWM).

``--size-only`` instead compares, for a random-weight model of the paper's size (d=512,
E=32 by default), one language's Argos package with the full checkpoint on disk.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

API_CODE = {"pb": "pt-BR", "zh": "zh-Hans", "zt": "zh-Hant"}  # LibreTranslate's API names
DECODING = dict(beam=4, lenpen=0.2, max_len_b=256)


def directions_of(data, pairs):
    """{pair: [source sentences]} from DATA/raw/test.en-xx.{src} (the test split, detokenized)."""
    out = {}
    for pair in pairs:
        src, tgt = pair.split("-")
        other = tgt if src == "en" else src
        with open(Path(data) / "raw" / f"test.en-{other}.{src}", encoding="utf-8") as f:
            out[pair] = [line.rstrip("\n") for line in f if line.strip()]
    return out


def mix_weights(pairs, mix):
    if mix == "uniform":
        return [1.0] * len(pairs)
    if mix == "zipf":
        return [1.0 / (k + 1) for k in range(len(pairs))]
    raise ValueError(f"--mixes: unknown mix {mix!r}; valid: uniform, zipf")


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, int(round(q / 100.0 * (len(values) - 1)))))
    return values[k]


def closed_loop(call, sentences, pairs, weights, clients, duration, seed):
    """Run ``clients`` threads for ``duration`` s; each: pick (pair, sentence), ``call`` it, repeat.

    ``call(pair, sentence)`` returns the number of target tokens. Returns the point's row.
    """
    latencies, tokens, errors = [], [], []
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def client(i):
        rng = random.Random(seed * 1000 + i)
        while time.monotonic() < deadline:
            pair = rng.choices(pairs, weights)[0]
            sentence = rng.choice(sentences[pair])
            t0 = time.monotonic()
            try:
                n = call(pair, sentence)
            except Exception as err:  # counted and reported; the run goes on
                with lock:
                    errors.append(repr(err)[:200])
                continue
            with lock:
                latencies.append(time.monotonic() - t0)
                tokens.append(n)

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 120)  # bounded: a request outliving this is a hung server
    wall = time.monotonic() - start
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "error_examples": errors[:3],
            "wall_s": round(wall, 2), "requests_per_s": len(latencies) / wall,
            "sentences_per_s": len(latencies) / wall, "tokens_per_s": sum(tokens) / wall,
            "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95),
            "p99_s": percentile(latencies, 99)}


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_libretranslate(args, sentences, pairs, work):
    from fairseq_taskmoe.extract import argos_langs
    from fairseq_taskmoe.serve import libretranslate as lt
    import sentencepiece as spm

    packages = args.packages or os.path.join(work, "argos")
    if not os.path.isfile(os.path.join(packages, "extract.json")):
        from fairseq_taskmoe.extract import extract

        extract(args.checkpoint, ["all"], packages, fmt="argos", data_dir=args.data)
    files = lt.package_files(packages)
    home = os.path.join(work, "lt_home")
    lt.install(args.lt_env, files, home)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.data, "spm.model"))
    code = {l: API_CODE.get(argos_langs.argos_language(l)[0], argos_langs.argos_language(l)[0])
            for p in pairs for l in p.split("-")}
    server = lt.Server(args.lt_env, home, args.port, lt.languages(files), threads=args.lt_threads,
                       argos_threads=args.threads)
    rows = []
    with server:
        url = server.url + "/translate"

        def call(pair, sentence):
            src, tgt = pair.split("-")
            status, body = lt.post_json(url, {"q": sentence, "source": code[src], "target": code[tgt]}, timeout=120)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body}")
            return len(sp.encode(body["translatedText"], out_type=str)) + 1  # + </s>

        for pair in pairs:  # warm-up: every direction's model is loaded
            call(pair, sentences[pair][0])
        loaded = proc_status(server.proc.pid, "VmRSS")
        for mix in args.mixes:
            for clients in args.clients:
                row = closed_loop(call, sentences, pairs, mix_weights(pairs, mix), clients, args.duration, args.seed)
                rows.append(dict(row, system="libretranslate", mix=mix))
                print_row(rows[-1])
        peak = proc_status(server.proc.pid, "VmHWM")
    package_bytes = sum(os.path.getsize(f) for f in files)
    return rows, {"rss_loaded_mb": loaded, "rss_peak_mb": peak, "packages": len(files),
                  "packages_mb": package_bytes / 1e6}


def worker(spec):
    """(b)/(c): one in-process translator behind a lock, driven by the same closed loop."""
    import torch

    torch.set_num_threads(spec["threads"])
    from fairseq_taskmoe.serve import from_pretrained

    model = from_pretrained(spec["checkpoint"], data=spec["data"])
    lock = threading.Lock()

    def call(pair, sentence):
        src, tgt = pair.split("-")
        with lock:
            model.translate([sentence], src, tgt, **DECODING)
            return model.last_target_tokens

    sentences, pairs = spec["sentences"], spec["pairs"]
    for pair in pairs:
        call(pair, sentences[pair][0])
    loaded = proc_status("self", "VmRSS")
    rows = []
    for mix in spec["mixes"]:
        for clients in spec["clients"]:
            row = closed_loop(call, sentences, pairs, mix_weights(pairs, mix), clients, spec["duration"], spec["seed"])
            rows.append(dict(row, system=spec["system"], mix=mix))
            print_row(rows[-1], file=sys.stderr)
    return rows, {"rss_loaded_mb": loaded, "rss_peak_mb": proc_status("self", "VmHWM")}


def run_worker(spec, work):
    path = os.path.join(work, spec["system"].replace(" ", "_") + ".json")
    with open(path, "w") as f:
        json.dump(spec, f)
    subprocess.run([sys.executable, __file__, "--worker", path], check=True, timeout=24 * 3600)
    with open(path + ".out") as f:
        return json.load(f)


def print_row(r, file=sys.stdout):
    print(f"{r['system']:<20} {r['mix']:<8} clients {r['clients']:>2}  {r['requests_per_s']:7.2f} req/s  "
          f"{r['tokens_per_s']:8.1f} tok/s  p50 {r['p50_s']:.3f}  p95 {r['p95_s']:.3f}  p99 {r['p99_s']:.3f} s"
          f"  errors {r['errors']}", file=file, flush=True)


def size_comparison(args, work):
    """Paper-size random-weight task-MoE: one pair's Argos package vs the full checkpoint, bytes."""
    from fairseq_taskmoe.extract import extract

    flags = ["--arch", "transformer_taskmoe", "--encoder-embed-dim", args.size_dim, "--decoder-embed-dim",
             args.size_dim, "--encoder-ffn-embed-dim", 4 * args.size_dim, "--decoder-ffn-embed-dim",
             4 * args.size_dim, "--encoder-layers", 6, "--decoder-layers", 6, "--share-all-embeddings",
             "--moe-expert-count", args.size_experts, "--moe-encoder-routing", "task",
             "--moe-decoder-routing", "task", "--moe-task-by", "target_lang"]
    model, _, margs = benchlib.build(args.data, flags)
    ckpt = benchlib.save_like_training(model, margs, os.path.join(work, "paper", "checkpoint.pt"))
    del model
    out = os.path.join(work, "paper_argos")
    extract(str(ckpt), [args.size_pair], out, fmt="argos", data_dir=args.data)
    package = next(f for f in os.listdir(out) if f.endswith(".argosmodel"))
    row = {"embed_dim": args.size_dim, "experts": args.size_experts, "pair": args.size_pair,
           "checkpoint_mb": os.path.getsize(ckpt) / 1e6,
           "package_mb": os.path.getsize(os.path.join(out, package)) / 1e6}
    row["ratio"] = row["checkpoint_mb"] / row["package_mb"]
    print(f"paper-size (d={row['embed_dim']}, E={row['experts']}): full checkpoint {row['checkpoint_mb']:.1f} MB, "
          f"{row['pair']} package {row['package_mb']:.1f} MB ({row['ratio']:.1f}x smaller)")
    return row


def targets(rows, servers):
    """The issue's targets: (a) >= 4x the sentences/s of (c) at equal clients; (a) p99 < 1 s at 4 clients."""
    out = []
    by = {(r["system"], r["mix"], r["clients"]): r for r in rows}
    for (system, mix, clients), r in sorted(by.items()):
        c = by.get(("fairseq token-moe", mix, clients))
        if system == "libretranslate" and c and c["sentences_per_s"]:
            ratio = r["sentences_per_s"] / c["sentences_per_s"]
            out.append(f"{mix} clients {clients}: libretranslate / token-moe = {ratio:.2f}x "
                       f"({'met' if ratio >= 4 else 'MISSED'} >= 4x)")
        if system == "libretranslate" and clients == 4:
            out.append(f"{mix} clients 4: libretranslate p99 {r['p99_s']:.3f} s "
                       f"({'met' if r['p99_s'] < 1 else 'MISSED'} < 1 s)")
    return out


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixes = sorted({r["mix"] for r in rows})
    fig, axes = plt.subplots(2, len(mixes), figsize=(5 * len(mixes), 7), squeeze=False)
    for j, mix in enumerate(mixes):
        for system in sorted({r["system"] for r in rows}):
            pts = sorted((r["clients"], r["sentences_per_s"], r["p99_s"]) for r in rows
                         if r["system"] == system and r["mix"] == mix)
            axes[0][j].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=system)
            axes[1][j].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=system)
        axes[0][j].set_title(f"{mix} language mix")
        axes[0][j].set_ylabel("sentences/s")
        axes[1][j].set_ylabel("p99 latency (s)")
        axes[1][j].set_xlabel("closed-loop clients")
        for ax in (axes[0][j], axes[1][j]):
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
        axes[0][j].legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def ints(text):
    return [int(x) for x in text.split(",") if x]


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="trained task-MoE (every MoE side task-routed): systems a and b")
    p.add_argument("--token-checkpoint", help="token-routed MoE of the same size: system c")
    p.add_argument("--data", help="binarized data dir (dict.*.txt, spm.model, raw/test.*)")
    p.add_argument("--packages", default=None, help="its Argos packages (default: built from --checkpoint)")
    p.add_argument("--lt-env", default=str(benchlib.REPO / ".venv-libretranslate"))
    p.add_argument("--systems", default="libretranslate,fairseq task-moe,fairseq token-moe")
    p.add_argument("--clients", type=ints, default=[1, 2, 4, 8, 16])
    p.add_argument("--mixes", type=lambda s: s.split(","), default=["uniform", "zipf"])
    p.add_argument("--duration", type=float, default=30.0, help="seconds per (system, mix, clients) point")
    p.add_argument("--sentences", type=int, default=200, help="test sentences per direction")
    p.add_argument("--threads", type=int, default=1, help="compute threads per engine")
    p.add_argument("--lt-threads", type=int, default=4, help="LibreTranslate's HTTP threads (its default 4)")
    p.add_argument("--port", type=int, default=5077)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--size-only", action="store_true", help="only the paper-size package vs checkpoint sizes")
    p.add_argument("--size-dim", type=int, default=512)
    p.add_argument("--size-experts", type=int, default=32)
    p.add_argument("--size-pair", default="en-de")
    p.add_argument("--out", default="bench/results/libretranslate.json")
    p.add_argument("--plot", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.worker:
        with open(args.worker) as f:
            spec = json.load(f)
        rows, mem = worker(spec)
        with open(args.worker + ".out", "w") as f:
            json.dump({"rows": rows, "memory": mem}, f)
        return 0
    if not args.data:
        raise SystemExit("--data is required")
    result = {"environment": benchlib.environment(),
              "args": {k: v for k, v in vars(args).items() if k != "worker"}}
    with tempfile.TemporaryDirectory(prefix="bench_lt_") as work:
        if args.size_only:
            result["size"] = size_comparison(args, work)
        else:
            if not args.checkpoint:
                raise SystemExit("--checkpoint is required (or --size-only)")
            from fairseq_taskmoe.extract.all_tasks import pairs_by_task

            pairs = [p for ps in pairs_by_task(args.checkpoint).values() for p in ps]
            order = benchlib.lang_pairs_of(args.data).split(",")
            pairs = sorted(pairs, key=lambda p: order.index(p) if p in order else len(order))
            sentences = {p: s[:args.sentences] for p, s in directions_of(args.data, pairs).items()}
            systems = args.systems.split(",")
            rows, memory = [], {}
            if "libretranslate" in systems:
                r, memory["libretranslate"] = run_libretranslate(args, sentences, pairs, work)
                rows += r
            for system, ckpt in (("fairseq task-moe", args.checkpoint), ("fairseq token-moe", args.token_checkpoint)):
                if system in systems and ckpt:
                    spec = {"system": system, "checkpoint": ckpt, "data": args.data, "threads": args.threads,
                            "sentences": sentences, "pairs": pairs, "mixes": args.mixes, "clients": args.clients,
                            "duration": args.duration, "seed": args.seed}
                    out = run_worker(spec, work)
                    rows += out["rows"]
                    memory[system] = out["memory"]
            result.update(rows=rows, memory=memory, pairs=pairs, targets=targets(rows, memory))
            print(benchlib.table(rows, ["system", "mix", "clients", "requests_per_s", "sentences_per_s",
                                        "tokens_per_s", "p50_s", "p95_s", "p99_s", "errors"]))
            for line in result["targets"]:
                print(line)
            for system, mem in memory.items():
                print(f"{system:<20} RSS after warm-up (all {len(pairs)} directions loaded) "
                      f"{mem['rss_loaded_mb']:.0f} MB, peak {mem['rss_peak_mb']:.0f} MB")
            if args.plot:
                plot(rows, args.plot)
    result["environment"]["load_avg_1m_end"] = os.getloadavg()[0]
    benchlib.write_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
