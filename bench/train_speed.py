"""Training speed: fairseq-train words/s of a task-MoE against a dense model of the same active size.

    python bench/train_speed.py --data data/loc8 --experts 8,32 --embed-dim 512 --ffn-dim 2048 \\
        --layers 6 --heads 8 --threads 2 --repeats 3 --json bench/results/train_speed.json
    python bench/train_speed.py --smoke --out /tmp/ts     # toy corpus, tiny models (CI)

Systems (``--systems``; the model flags are bench/quality.py's, so these are the models the
quality study trains, at this size):

- ``dense-active``: dense, FFN width k*F in the layers where the MoE models have experts, F
  elsewhere: the parameters one token uses in a top-k MoE;
- ``task-moe``: token-routed encoder, decoder routed by target language (one run per E of
  ``--experts``);
- ``task-moe-both`` and ``token-moe``: optional, the same per E.

Every run is one fairseq-train process, the same recipe, seed and ``--max-tokens`` for all, so all
systems train on the same batches (the table shows the target tokens each run saw, which must be
equal). The first ``--warmup-updates`` updates are not timed; words/s is then the target tokens of
the timed updates over their wall time, from fairseq's per-update ``wpb`` and ``wps``
(``--log-interval 1``; fairseq's wps meter restarts at every log line, so data loading between
updates counts). Runs are interleaved: each of ``--repeats`` rounds runs every system once, in an
order rotated from round to round, so slow drift of the machine hits all systems alike; the ratio
to dense is taken within a round (median and range over rounds). Target: task-MoE >= 0.9x dense.
Prints a table and writes JSON (and a PNG with ``--plot``).
"""

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import quality  # noqa: E402  (model flags: the quality study's models)

TARGET = 0.9
MOE_SYSTEMS = ("task-moe", "task-moe-both", "token-moe")
UPDATE_LINE = re.compile(r"\| train_inner \| .*?wps=([\d.]+).*?wpb=([\d.]+).*?num_updates=(\d+)")


def ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def runs_of(args):
    """[(run name, system, E)]: dense once, each MoE system once per E."""
    out = [("dense-active", "dense-active", None)] if "dense-active" in args.systems else []
    return out + [(f"{s} E={e}", s, e) for s in args.systems if s in MOE_SYSTEMS for e in args.experts]


def train_cmd(args, system, experts, save_dir):
    dims = Namespace(embed_dim=args.embed_dim, ffn_dim=args.ffn_dim, layers=args.layers, heads=args.heads,
                     experts=experts or max(args.experts), top_k=args.top_k, moe_freq=args.moe_freq)
    updates = args.warmup_updates + args.updates
    return [str(Path(quality.PY).parent / "fairseq-train"), *benchlib.task_flags(args.data),
            *map(str, quality.model_flags(dims, system)),
            "--criterion", "label_smoothed_cross_entropy_moe", "--label-smoothing", "0.1",
            "--moe-aux-loss-weight", "0.01", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
            "--lr", "0.0005", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4000",
            "--dropout", "0.1", "--clip-norm", "1.0", "--max-tokens", str(args.max_tokens),
            "--max-update", str(updates), "--sampling-method", "temperature", "--sampling-temperature", "1.5",
            "--save-dir", str(save_dir), "--no-save", "--disable-validation",
            "--log-format", "simple", "--log-interval", "1", "--no-progress-bar", "--num-workers", "0",
            "--seed", str(args.seed)]


def parse_updates(log: str):
    """[(update, words per batch, words/s)] of fairseq-train's train_inner lines."""
    return [(int(u), float(wpb), float(wps)) for wps, wpb, u in UPDATE_LINE.findall(log)]


def timed_speed(updates, warmup):
    """(target tokens, seconds, words/s) over the updates after the first ``warmup``."""
    timed = [(wpb, wpb / wps) for u, wpb, wps in updates if u > warmup and wps > 0]
    if not timed:
        return None
    tokens, seconds = sum(t for t, _ in timed), sum(s for _, s in timed)
    return tokens, seconds, tokens / seconds


def run_once(args, name, system, experts, log):
    with tempfile.TemporaryDirectory() as tmp:
        cmd = train_cmd(args, system, experts, tmp)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=quality.env_for(args.threads))
        wall = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-train ({name}) failed:\n{text[-3000:]}")
    speed = timed_speed(parse_updates(text), args.warmup_updates)
    if speed is None:
        raise RuntimeError(f"fairseq-train ({name}): no timed update in its log (--updates {args.updates})")
    params = re.search(r"num\. shared model params: ([\d,]+)", text) or re.search(r"num\. model params: ([\d,]+)", text)
    row = {"run": name, "system": system, "experts": experts, "tokens": speed[0], "seconds": speed[1],
           "words_per_s": speed[2], "process_seconds": wall,
           "params": int(params.group(1).replace(",", "")) if params else None}
    log(f"  {name}: {row['words_per_s']:.0f} words/s ({row['tokens']:.0f} target tokens in {row['seconds']:.1f} s; "
        f"process {wall:.0f} s)")
    return row


def summarize(rows, names):
    """Per run name: median / min / max words/s; the within-round ratio to dense-active."""
    dense_by_round = {r["round"]: r["words_per_s"] for r in rows if r["run"] == "dense-active"}
    out = []
    for name in names:
        mine = [r for r in rows if r["run"] == name]
        wps = [r["words_per_s"] for r in mine]
        ratios = [r["words_per_s"] / dense_by_round[r["round"]] for r in mine if r["round"] in dense_by_round]
        row = {"run": name, "repeats": len(mine), "params": mine[0]["params"], "tokens": mine[0]["tokens"],
               "words/s median": statistics.median(wps), "words/s min": min(wps), "words/s max": max(wps)}
        if ratios and name != "dense-active":
            row.update({"vs dense median": statistics.median(ratios), "vs dense min": min(ratios),
                        "vs dense max": max(ratios),
                        "target": f">= {TARGET}: {'met' if statistics.median(ratios) >= TARGET else 'missed'}"})
        out.append(row)
    return out


def plot(summary, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(summary) + 2, 4))
    names = [r["run"] for r in summary]
    med = [r["words/s median"] for r in summary]
    err = [[m - r["words/s min"] for m, r in zip(med, summary)], [r["words/s max"] - m for m, r in zip(med, summary)]]
    ax.bar(names, med, yerr=err, capsize=4, color=["#777"] + ["#3a7"] * (len(names) - 1))
    ax.set_ylabel("fairseq-train target words/s (median, min-max)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help="binarized multilingual data (default: data/loc8; --smoke: a toy corpus)")
    p.add_argument("--out", default=None, help="work directory (--smoke builds its toy corpus there)")
    p.add_argument("--systems", default="dense-active,task-moe",
                   help="comma-separated: dense-active and any of " + ", ".join(MOE_SYSTEMS))
    p.add_argument("--experts", type=ints, default=[8, 32], help="E of every MoE system")
    p.add_argument("--embed-dim", type=int, default=512)
    p.add_argument("--ffn-dim", type=int, default=2048)
    p.add_argument("--layers", type=int, default=6, help="encoder and decoder layers each")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--moe-freq", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--warmup-updates", type=int, default=2, help="first updates, not timed")
    p.add_argument("--updates", type=int, default=6, help="timed updates per run")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3; --smoke: 1)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of fairseq-train")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default=str(benchlib.REPO / "bench/results/train_speed.json"))
    p.add_argument("--plot", default=None, help="PNG path (default: none)")
    p.add_argument("--smoke", action="store_true", help="toy corpus, tiny models, 1 round (CI)")
    return p


def resolve(args):
    if args.smoke:
        if not args.out:
            raise SystemExit("--smoke needs --out (where the toy corpus is built)")
        args.data = args.data or benchlib.toy_corpus(Path(args.out) / "toy")
        args.embed_dim, args.ffn_dim, args.layers, args.heads, args.experts = 32, 64, 2, 2, [4]
        args.max_tokens, args.updates, args.warmup_updates = 500, 2, 1
    args.repeats = args.repeats or (1 if args.smoke else 3)
    args.data = str(args.data or benchlib.REPO / "data/loc8")
    if not Path(args.data).is_dir():
        raise SystemExit(f"--data {args.data}: no such directory (build it with fairseq-taskmoe-prepare-data)")
    args.systems = [s for s in args.systems.split(",") if s]
    bad = [s for s in args.systems if s != "dense-active" and s not in MOE_SYSTEMS]
    if bad or not args.systems:
        raise SystemExit(f"--systems {','.join(args.systems)!r}: choose from dense-active, {', '.join(MOE_SYSTEMS)}")
    for flag in ("updates", "repeats", "max_tokens", "threads"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.warmup_updates < 0 or not args.experts or min(args.experts) < 2:
        raise SystemExit("--warmup-updates must be >= 0 and --experts values >= 2")


def main(argv=None):
    args = get_parser().parse_args(argv)
    resolve(args)
    runs = runs_of(args)
    log = lambda s: print(s, flush=True)  # noqa: E731
    rows = []
    for rnd in range(args.repeats):
        order = runs[rnd % len(runs):] + runs[:rnd % len(runs)]
        log(f"round {rnd + 1}/{args.repeats}: {', '.join(n for n, _, _ in order)}")
        for name, system, experts in order:
            rows.append({"round": rnd + 1, **run_once(args, name, system, experts, log)})
    summary = summarize(rows, [n for n, _, _ in runs])
    tokens = {r["run"]: r["tokens"] for r in summary}
    same_batches = len(set(tokens.values())) == 1
    cols = ["run", "repeats", "params", "tokens", "words/s median", "words/s min", "words/s max",
            "vs dense median", "vs dense min", "vs dense max", "target"]
    title = (f"d={args.embed_dim}, FFN {args.ffn_dim}, {args.layers}+{args.layers} layers, top-{args.top_k}, "
             f"{args.threads} threads, {args.updates} timed updates x {args.repeats} rounds")
    print(f"\n== fairseq-train words/s ({title})")
    print(benchlib.table(summary, cols))
    print("every run saw the same batches" if same_batches else f"WARNING: runs saw different batches: {tokens}")
    result = {"bench": "train_speed", "env": benchlib.environment(), "config": vars(args), "target": TARGET,
              "same_batches": same_batches, "runs": rows, "summary": summary}
    if args.plot:
        plot(summary, args.plot, title)
        result["plot"] = args.plot
    out = benchlib.write_json(result, args.json)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
