"""Does sparse upcycling pay here? A dense model, then the same extra budget spent four ways.

1. ``dense``: a dense ``transformer_taskmoe`` (``--moe-freq 0``), the demo recipe, N updates
   (``--base-updates``), seed = the first of ``--seeds``.
2. From its checkpoint, M further updates (``--more-updates``, fresh optimizer, warmup and
   linear decay over M) for every seed of ``--seeds``:
   (a) ``dense-continued``: the dense model itself (``--finetune-from-model``);
   (b) ``upcycled-task-top1``: ``fairseq-taskmoe-upcycle``, encoder and decoder routed by
       target language, top-1: each language's extract has exactly the dense architecture;
   (c) ``upcycled-task-top2``: the same with top-2 (extract FFN width 2F);
   (d) ``upcycled-token``: token routing on both sides, top-2, dropless.
3. (e) ``scratch-task-top1``: the task-MoE of (b) trained from scratch for N + M updates.

Scoring: fairseq_taskmoe.evaluate (beam ``--beam``, raw references, BLEU / chrF) on ``--subset``
of every direction (with ``--eval-n N``, its fixed first-N sample, as in bench/quality.py);
per model, mean and sd over seeds of the direction-averaged scores;
each upcycled / scratch model against ``dense-continued`` as the quality study tests its claims
(bench/quality_report.py): seed by seed, a paired bootstrap that resamples clusters of segments
sharing an English string (and segments, for comparison); across seeds, the exact sign-flip test;
a label ("significant at the seed level", "suggestive", "no difference found"). Costs: training seconds of
the run (this machine, this load), approximate FLOPs per update ``6 * active params * target
tokens per update`` (active: k of E experts), parameters of the full model and of one
language's extract (what serving that language costs).

Every step is skipped when its output exists (``DONE`` marker, cached scores), so a killed run
resumes: re-run the same command. The numbers are printed as tables and written as JSON.

    python bench/upcycle.py --out bench/out/upcycle --seeds 1,2,3 --json bench/results/upcycle.json
    python bench/upcycle.py --smoke --out /tmp/u     # toy corpus, one seed, a few updates
"""

import argparse
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import quality  # noqa: E402  (training helpers and scoring are the quality study's)
import quality_report  # noqa: E402  (summaries, the cluster bootstrap and the seed-level test)

BASE = "dense"
REFERENCE = "dense-continued"
# continuation / scratch model -> (encoder routing, decoder routing, top-k); None: dense
MODELS = {"dense-continued": None, "upcycled-task-top1": ("task", "task", 1),
          "upcycled-task-top2": ("task", "task", 2), "upcycled-token": ("token", "token", 2),
          "scratch-task-top1": ("task", "task", 1)}
SCRATCH = ("scratch-task-top1",)


def dims(args):
    return ["--arch", "transformer_taskmoe_tiny", "--share-all-embeddings",
            "--encoder-embed-dim", args.embed_dim, "--decoder-embed-dim", args.embed_dim,
            "--encoder-ffn-embed-dim", args.ffn_dim, "--decoder-ffn-embed-dim", args.ffn_dim,
            "--encoder-layers", args.layers, "--decoder-layers", args.layers,
            "--encoder-attention-heads", args.heads, "--decoder-attention-heads", args.heads,
            "--encoder-normalize-before", "--decoder-normalize-before"]


def dense_flags(args, lang_pairs):
    return [*benchlib.task_flags(args.data, lang_pairs), *dims(args), "--moe-freq", "0"]


def scratch_flags(args, lang_pairs, model):
    enc, dec, k = MODELS[model]
    return [*benchlib.task_flags(args.data, lang_pairs), *dims(args), "--moe-freq", args.moe_freq,
            "--moe-expert-count", args.experts, "--moe-top-k", k, "--moe-encoder-routing", enc,
            "--moe-decoder-routing", dec]


def recipe(args, updates, seed, save):
    """The demo's optimisation recipe over ``updates`` (warmup, linear decay to 0)."""
    return ["--criterion", "label_smoothed_cross_entropy_moe", "--label-smoothing", "0.1",
            "--moe-aux-loss-weight", args.aux_loss_weight, "--optimizer", "adam",
            "--adam-betas", "(0.9, 0.98)", "--lr", args.lr, "--lr-scheduler", "polynomial_decay",
            "--warmup-updates", min(args.warmup, max(1, updates // 4)), "--total-num-update", updates,
            "--end-learning-rate", "0", "--dropout", args.dropout, "--clip-norm", args.clip_norm,
            "--max-tokens", args.max_tokens, "--max-update", updates,
            "--sampling-method", "temperature", "--sampling-temperature", "1.5",
            "--save-dir", save, "--disable-validation", "--no-epoch-checkpoints",
            "--save-interval-updates", args.save_interval_updates, "--keep-interval-updates", "1",
            "--log-format", "simple", "--log-interval", "50", "--no-progress-bar",
            "--num-workers", "0", "--seed", seed]


def train(args, run, flags, log):
    """fairseq-train ``flags`` into OUT/runs/RUN; its checkpoint_last.pt (DONE records the seconds)."""
    save = Path(args.out) / "runs" / run
    ckpt, done = save / "checkpoint_last.pt", save / "DONE"
    if done.is_file():
        log(f"train {run}: done, skipped")
        return ckpt
    save.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(quality.PY).parent / "fairseq-train"), *map(str, flags)]
    t0 = time.time()
    log(f"train {run}: starting (log: {save / 'train.log'})")
    with open(save / "train.log", "a") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=quality.env_for(args.threads))
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-train {run} failed; see {save / 'train.log'}")
    done.write_text(json.dumps({"seconds_last_session": round(time.time() - t0), "argv": cmd}) + "\n")
    return ckpt


def upcycled_init(args, model, dense_ckpt, seed, log):
    """``fairseq-taskmoe-upcycle`` of the dense checkpoint (the built-in check on --data)."""
    from fairseq_taskmoe.upcycle import UpcycleOptions, upcycle

    enc, dec, k = MODELS[model]
    path = Path(args.out) / "init" / f"{model}.s{seed}.pt"
    report_path = path.with_suffix(".json")
    if not report_path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        report = upcycle(str(dense_ckpt), str(path), UpcycleOptions(
            expert_count=args.experts, freq=args.moe_freq, top_k=k, encoder_routing=enc,
            decoder_routing=dec, expert_noise=args.expert_noise, seed=seed, data=args.data), force=True)
        benchlib.write_json(report, report_path)
        log(f"upcycle {model}.s{seed}: check {report['check']}")
    return path, json.loads(report_path.read_text())


def continuation_flags(args, model, dense_ckpt, seed, lang_pairs, log):
    if MODELS[model] is None:
        return [*dense_flags(args, lang_pairs), "--finetune-from-model", dense_ckpt]
    init, report = upcycled_init(args, model, dense_ckpt, seed, log)
    return [args.data, *report["fine_tune_flags"], "--finetune-from-model", init]


def run_cost(args, run, ckpt, top_k):
    """Training seconds, tokens per update, approximate FLOPs per update, parameters."""
    save = Path(args.out) / "runs" / run
    log = (save / "train.log").read_text() if (save / "train.log").is_file() else ""
    wpb = [float(x) for x in re.findall(r"\| train \|.*?\| wpb ([\d.]+)", log)]
    params = quality.count_params(ckpt, top_k)
    tokens = wpb[-1] if wpb else None
    return {"train_seconds": json.loads((save / "DONE").read_text())["seconds_last_session"],
            "target_tokens_per_update": tokens,
            "flops_per_update": 6 * params["active"] * tokens if tokens else None,
            "params_total": params["total"], "params_active": params["active"]}


def extract_params(args, run, ckpt, tgt_lang):
    """Parameters of ``tgt_lang``'s extract (task-routed models), else of the full model."""
    from fairseq_taskmoe.extract import extract

    path = Path(args.out) / "extracts" / run / tgt_lang
    if not (path / "extract.json").is_file():
        extract(str(ckpt), target_langs=[tgt_lang], out_dir=str(path), data_dir=str(args.data), force=True)
    return quality.count_params(path / "checkpoint.pt", 1)["total"]  # counted as the full models are


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="binarized data (default: data/loc8; --smoke: a toy corpus)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, scores, upcycle.json)")
    p.add_argument("--json", default=None, help="default: OUT/upcycle.json")
    p.add_argument("--seeds", default="1,2,3", help="seeds of the continuations and the scratch model")
    p.add_argument("--base-updates", type=int, default=800, help="N: updates of the dense model")
    p.add_argument("--more-updates", type=int, default=400, help="M: updates of every continuation")
    p.add_argument("--subset", default="test")
    p.add_argument("--eval-n", type=int, default=0, metavar="N",
                   help="score the first N sentences of each direction's --subset (a fixed sample: the splits "
                        "are ordered by a hash of the English string, so clusters stay together); 0: all")
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--ffn-dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--moe-freq", type=int, default=2)
    p.add_argument("--expert-noise", type=float, default=0.0, help="fairseq-taskmoe-upcycle --expert-noise")
    p.add_argument("--max-tokens", type=int, default=2000)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--aux-loss-weight", type=float, default=0.01)
    p.add_argument("--save-interval-updates", type=int, default=200)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--bootstrap-samples", type=int, default=1000, help="resamples of each paired bootstrap")
    p.add_argument("--jobs", type=int, default=1, help="trainings / evaluations side by side")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every fairseq subprocess")
    p.add_argument("--smoke", action="store_true", help="toy corpus, tiny models, a few updates, one seed")
    return p


def resolve(args):
    if args.smoke:
        args.data = args.data or benchlib.toy_corpus(Path(args.out) / "toy")
        args.embed_dim, args.ffn_dim, args.layers, args.heads, args.experts = 32, 64, 2, 2, 4
        args.base_updates, args.more_updates, args.max_tokens, args.lr = 20, 10, 1000, 0.005
        args.save_interval_updates, args.seeds = 10, "1" if args.seeds == "1,2,3" else args.seeds
    args.data = str(args.data or benchlib.REPO / "data/loc8")
    if not Path(args.data).is_dir():
        raise SystemExit(f"--data {args.data}: no such directory (build it with fairseq-taskmoe-prepare-data)")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds {args.seeds!r}: give distinct integers, e.g. 1,2,3")
    if args.base_updates < 1 or args.more_updates < 1:
        raise SystemExit("--base-updates and --more-updates must be >= 1")
    if args.eval_n < 0:
        raise SystemExit(f"--eval-n must be >= 0 (0: whole splits), got {args.eval_n}")
    if args.bootstrap_samples < 1:
        raise SystemExit(f"--bootstrap-samples must be >= 1, got {args.bootstrap_samples}")
    return seeds


def main(argv=None):
    args = get_parser().parse_args(argv)
    t_start = time.time()
    seeds = resolve(args)
    lang_pairs = benchlib.lang_pairs_of(args.data)
    pairs = lang_pairs.split(",")
    log = lambda s: print(s, flush=True)  # noqa: E731
    first = seeds[0]
    base_run = f"{BASE}.s{first}"
    dense_ckpt = train(args, base_run, [*dense_flags(args, lang_pairs),
                                        *recipe(args, args.base_updates, first, Path(args.out) / "runs" / base_run)],
                       log)

    def job(run_model_seed):
        run, model, seed = run_model_seed
        save = Path(args.out) / "runs" / run
        if model in SCRATCH:
            flags = [*scratch_flags(args, lang_pairs, model),
                     *recipe(args, args.base_updates + args.more_updates, seed, save)]
        else:
            flags = [*continuation_flags(args, model, dense_ckpt, seed, lang_pairs, log),
                     *recipe(args, args.more_updates, seed, save)]
        return train(args, run, flags, log)

    # the longest runs (from scratch, N + M updates) first, so that no core idles at the end
    jobs = [(f"{m}.s{s}", m, s) for m in sorted(MODELS, key=lambda m: m not in SCRATCH) for s in seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        ckpts = dict(zip([j[0] for j in jobs], pool.map(job, jobs)))
    ckpts[base_run] = dense_ckpt
    data, subset = quality.eval_view(args, args.subset)
    with ThreadPoolExecutor(args.jobs) as pool:
        scores = dict(zip(ckpts, pool.map(
            lambda run: quality.evaluate(args, run, {"*": ckpts[run]}, pairs, lang_pairs, subset, data),
            ckpts)))
    summary = {r["model"]: r for r in quality_report.summarize(scores, pairs)}
    tgt = pairs[0].split("-")[1]
    rows = []
    for model in [BASE, *MODELS]:
        run = f"{model}.s{first}"
        top_k = MODELS[model][2] if MODELS.get(model) else 1
        cost = run_cost(args, run, ckpts[run], top_k)
        routed = MODELS.get(model) and MODELS[model][1] == "task" and MODELS[model][0] == "task"
        s = summary[model]
        rows.append({"model": model, "seeds": s["seeds"], "BLEU": s["avg bleu"], "BLEU sd": s["avg bleu sd"],
                     "chrF": s["avg chrf"], "chrF sd": s["avg chrf sd"],
                     "updates": args.base_updates + (0 if model == BASE else args.more_updates),
                     **cost, f"extract params ({tgt})": extract_params(args, run, ckpts[run], tgt)
                     if routed else cost["params_total"]})
    sets = quality_report.test_sets(data, subset, pairs)
    tests = quality_report.claims(scores, sets, pairs, seeds, args.bootstrap_samples,
                                  comparisons=[(REFERENCE, m) for m in MODELS if m != REFERENCE])
    cols = ["model", "seeds", "updates", "BLEU", "BLEU sd", "chrF", "chrF sd", "train_seconds",
            "flops_per_update", "params_total", f"extract params ({tgt})"]
    print(f"\n== {subset}: direction-averaged scores, mean and sd over seeds (costs: seed {first})")
    print(benchlib.table(rows, cols))
    print(f"\n== against {REFERENCE} (the same extra updates), average BLEU over directions")
    print(quality_report.claims_table(tests) if tests else "no comparable runs")
    print(quality_report.claims_method(sets, args.bootstrap_samples))
    result = {"bench": "upcycle", "env": benchlib.environment(), "config": vars(args), "pairs": pairs,
              "subset scored": subset,
              "seeds": seeds, "rows": rows, "comparisons": tests, "seconds": round(time.time() - t_start),
              "scores": {run: {p: {k: v for k, v in r.items() if k != "hypotheses"} for p, r in res.items()}
                         for run, res in scores.items()}}
    from fairseq_taskmoe.scoring.records import records_path, write_records

    json_path = Path(args.json or Path(args.out) / "upcycle.json")
    hyps = write_records(records_path(json_path), quality_report.records(subset, scores, sets))
    result["hypotheses_file"] = hyps.name  # beside the JSON
    out = benchlib.write_json(result, json_path)
    print(f"wrote {out} and {hyps} (per-sentence hypotheses)")
    return result


if __name__ == "__main__":
    main()
