"""Translation quality at equal training budgets: dense, token-MoE, task-MoE (two
routings), a dense student distilled from the token-MoE, and the extracted task-MoE.

Models (the same --max-update, --max-tokens, optimizer and schedule for all):

- ``dense-active``: dense, FFN k*F in the layers where the MoE models have
  experts, F elsewhere: the active size of a top-k MoE, which is exactly the
  task-MoE decoder's extract (the token-routed encoder's extract keeps all E
  experts, of which a token uses k).
- ``token-moe``: token-routed encoder and decoder.
- ``task-moe``: token-routed encoder, decoder routed by target language (the paper's best).
- ``task-moe-both``: encoder and decoder routed by target language (fully extractable).
- ``student``: ``dense-active`` trained on the token-MoE's (first seed) beam output on a
  seeded uniform sample of ``--distill-sentences`` training pairs per direction
  (sequence-level distillation, bench/distill.py).
- ``task-moe-extracted``: each target language's sub-network of the task-MoE (first seed),
  ``fairseq-taskmoe-extract --target-langs X``; its hypotheses must equal the full model's.

``--seeds`` (default 1,2) trains dense-active, token-MoE and both task-MoEs once per
seed; the student and the extract use the first seed. Scoring: fairseq_taskmoe.evaluate (beam 4,
raw reference text, BLEU / chrF / chrF++ with signatures) per direction and
``--subsets``; the table gives mean and spread (sample sd) over seeds, per
direction and averaged over directions, with the share of looping hypotheses.
Every "B vs A" claim (COMPARISONS: task-MoE vs token-MoE, ...) is tested per seed
by a paired bootstrap that resamples clusters of segments sharing an English
string (and, for comparison, segments), and across seeds by the exact sign-flip
test; the table labels each claim "significant at the seed level", "suggestive" or
"no difference found" (bench/quality_report.py, fairseq_taskmoe/scoring/seeds.py).
Per-sentence hypotheses go to OUT/quality.hyps.jsonl.gz beside the JSON;
``--from-hypotheses`` recomputes every table from them.

Every step is skipped when its output exists (training: ``DONE`` marker, and
fairseq-train resumes from checkpoint_last.pt saved every --save-interval-updates;
scores: one JSON per run, subset and direction), so a killed run resumes where it
stopped: re-run the same command.

    python bench/quality.py --out bench/out/quality_d128 --json bench/results/quality_d128.json
    python bench/quality.py --smoke --out /tmp/q   # toy corpus, ~2 min on 2 cores (CI)
    python bench/quality.py --from-hypotheses bench/results/quality_d128.hyps.jsonl.gz
"""

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import distill  # noqa: E402
import quality_report  # noqa: E402
from quality_report import COMPARISONS  # noqa: E402,F401  (re-exported: the claims this study makes)

PY = sys.executable
TEACHER = "token-moe"
# model -> (encoder routing, decoder routing); None: dense-active (FFN k*F at the MoE positions)
ROUTING = {"dense-active": None, "token-moe": ("token", "token"), "task-moe": ("token", "task"),
           "task-moe-both": ("task", "task"), "student": None}
SEEDED = ("dense-active", "token-moe", "task-moe", "task-moe-both")  # trained once per --seeds entry
FIRST_SEED_ONLY = ()
ALL_MODELS = ("dense-active", "token-moe", "task-moe", "task-moe-both", "student")


def env_for(threads):
    # One thread per child by default: on a shared CPU, oversubscribed OpenMP threads spin and
    # made fairseq-generate ~45x slower here (7.8 vs 339 sentences/s).
    env = dict(os.environ, PATH=f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def moe_positions(args):
    """Layers (as --moe-layout keys) where the MoE models have experts: the model's own layer plan."""
    from argparse import Namespace

    from fairseq_taskmoe.config import moe_config_from_args

    cfg = moe_config_from_args(Namespace(moe_freq=args.moe_freq, moe_expert_count=args.experts,
                                         moe_top_k=args.top_k, moe_encoder_routing="token"))
    return [str(i) for i, spec in enumerate(cfg.layer_plan("encoder", args.layers)) if spec]


def model_flags(args, model):
    flags = ["--arch", "transformer_taskmoe_tiny", "--share-all-embeddings",
             "--encoder-embed-dim", args.embed_dim, "--decoder-embed-dim", args.embed_dim,
             "--encoder-ffn-embed-dim", args.ffn_dim, "--decoder-ffn-embed-dim", args.ffn_dim,
             "--encoder-layers", args.layers, "--decoder-layers", args.layers,
             "--encoder-attention-heads", args.heads, "--decoder-attention-heads", args.heads,
             "--encoder-normalize-before", "--decoder-normalize-before",
             "--moe-expert-count", args.experts, "--moe-top-k", args.top_k, "--moe-freq", args.moe_freq]
    routing = ROUTING[model]
    if routing is None:  # dense-active: fused dense FFNs of width k*F where the experts would be
        wide = {p: {"ffn_dim": args.top_k * args.ffn_dim} for p in moe_positions(args)}
        return flags + ["--moe-encoder-routing", "task", "--moe-decoder-routing", "task",
                        "--moe-layout", json.dumps({"encoder": wide, "decoder": wide})]
    return flags + ["--moe-encoder-routing", routing[0], "--moe-decoder-routing", routing[1]]


def train(args, run, model, seed, data, lang_pairs, log):
    save = Path(args.out) / "runs" / run
    ckpt = save / "checkpoint_last.pt"
    if (save / "DONE").is_file():
        log(f"train {run}: done, skipped")
        return ckpt
    cmd = [str(Path(PY).parent / "fairseq-train"), *benchlib.task_flags(data, lang_pairs),
           *map(str, model_flags(args, model)),
           "--criterion", "label_smoothed_cross_entropy_moe", "--label-smoothing", "0.1",
           "--moe-aux-loss-weight", str(args.aux_loss_weight),
           "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", str(args.lr),
           "--lr-scheduler", "polynomial_decay", "--warmup-updates", str(args.warmup),
           "--total-num-update", str(args.max_update), "--end-learning-rate", "0", "--dropout", str(args.dropout),
           "--clip-norm", str(args.clip_norm),
           "--max-tokens", str(args.max_tokens), "--max-update", str(args.max_update),
           "--sampling-method", "temperature", "--sampling-temperature", "1.5",
           "--save-dir", str(save), "--disable-validation", "--no-epoch-checkpoints",
           "--save-interval-updates", str(args.save_interval_updates), "--keep-interval-updates", "1",
           "--log-format", "simple", "--log-interval", "50", "--no-progress-bar",
           "--num-workers", "0", "--seed", str(seed)]
    t0 = time.time()
    save.mkdir(parents=True, exist_ok=True)
    resumed = ckpt.is_file()
    log(f"train {run}: {'resuming' if resumed else 'starting'} (log: {save / 'train.log'})")
    with open(save / "train.log", "a") as f:  # fairseq-train resumes from checkpoint_last.pt itself
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env_for(args.threads))
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-train {run} failed; see {save / 'train.log'}")
    (save / "DONE").write_text(json.dumps({"seconds_last_session": round(time.time() - t0), "resumed": resumed,
                                           "argv": cmd}) + "\n")
    log(f"train {run}: {time.time() - t0:.0f} s")
    return ckpt


def extract_per_target(args, ckpt, run, tgt_langs):
    from fairseq_taskmoe.extract import extract

    out = {}
    for lang in tgt_langs:
        path = Path(args.out) / "extracts" / run / lang
        if not (path / "extract.json").is_file():
            extract(str(ckpt), target_langs=[lang], out_dir=str(path), data_dir=str(args.data), force=True)
        out[lang] = path / "checkpoint.pt"
    return out


def evaluate(args, run, ckpts, pairs, lang_pairs, subset, data=None):
    """{pair: scores + hypotheses} on ``subset`` of ``data`` (default --data); ``ckpts`` maps a target
    language to its checkpoint (or "*": one model). One cached JSON per direction, so an
    interrupted scoring resumes."""
    from fairseq_taskmoe import evaluate as ev

    results = {}
    for i, pair in enumerate(pairs, 1):
        cache = Path(args.out) / "scores" / run / subset / f"{pair}.json"
        if cache.is_file():
            results[pair] = json.loads(cache.read_text())
            continue
        ckpt = ckpts.get(pair.split("-")[1], ckpts.get("*"))
        log = lambda s: print(f"[{run} {subset} {i}/{len(pairs)}] {s}", flush=True)  # noqa: E731
        res = ev.evaluate(ckpt, data or args.data, [pair], lang_pairs, benchlib.PLUGIN_DIR, beam=args.beam,
                          subset=subset, log=log)
        benchlib.write_json(res[pair], cache)
        results[pair] = res[pair]
    return results


def split_size(data, subset, src, tgt):
    from fairseq_taskmoe.evaluate import split_size as size

    return size(data, subset, src, tgt)


def eval_view(args, subset):
    """(data dir, subset name) to score: ``subset`` of --data, or with --eval-n N a view holding its
    first N sentences per direction (fairseq_taskmoe.data.sample: the splits are ordered by a hash
    of the English string, so that is a fixed random sample that keeps clusters together)."""
    if not args.eval_n:
        return args.data, subset
    from fairseq_taskmoe.data.sample import make_sample_view, sample_name

    view = Path(args.out) / "eval-views" / subset
    make_sample_view(args.data, view, subset, args.eval_n)
    return str(view), sample_name(subset, args.eval_n)


def score_subset(args, subset, models, all_pairs, lang_pairs, seeds):
    """Score every model on ``subset`` (the directions that have it; with --eval-n its sample);
    print the tables; return (subset name scored, JSON, hypothesis records)."""
    pairs = [p for p in all_pairs if split_size(args.data, subset, *p.split("-")) is not None]
    if not pairs:
        raise SystemExit(f"--subsets {subset}: no direction has a binarized {subset} split in {args.data}")
    data, subset = eval_view(args, subset)
    with ThreadPoolExecutor(args.jobs) as pool:
        scores = dict(zip(models, pool.map(
            lambda run: evaluate(args, run, models[run], pairs, lang_pairs, subset, data), models)))
    sets = quality_report.test_sets(data, subset, pairs)
    report = quality_report.report_subset(subset, scores, sets, pairs, all_pairs, seeds, args.bootstrap_samples)
    return subset, report, quality_report.records(subset, scores, sets)


def count_params(ckpt, top_k):
    """{"total": parameters in the checkpoint, "active": those one token uses (k of E experts)}."""
    from fairseq_taskmoe.checkpoints import load_checkpoint_safely

    total = active = 0
    for name, tensor in load_checkpoint_safely(str(ckpt))["model"].items():
        total += tensor.numel()
        # stacked experts: (E, ...) tensors, of which a token uses top_k
        active += tensor.numel() * top_k // tensor.shape[0] if ".moe.experts." in name else tensor.numel()
    return {"total": total, "active": active}


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="binarized data (default: data/loc8; --smoke: a toy corpus)")
    p.add_argument("--langs", default=None,
                   help="non-English languages, pairs en-X and X-en (default: every pair in DATA/lang_pairs.txt)")
    p.add_argument("--subsets", default="auto",
                   help="comma-separated splits to score; auto: test, plus test_doc (documentation sentences) "
                        "when the corpus has it; a direction without the split is left out of that split's table")
    p.add_argument("--out", default=None, help="run directory (checkpoints, scores, quality.json); required "
                   "unless --from-hypotheses")
    p.add_argument("--seeds", default="1,2", help="seeds of dense-active, token-MoE and the two task-MoEs")
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--ffn-dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=3, help="encoder and decoder layers")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--moe-freq", type=int, default=2)
    p.add_argument("--max-update", type=int, default=800, help="training budget of every model")
    # The demo's recipe (examples/demo.sh), measured there to learn fastest at this budget:
    # small batches, linear warmup then linear decay to 0 at --max-update, no dropout.
    p.add_argument("--max-tokens", type=int, default=2000)
    p.add_argument("--lr", type=float, default=0.003, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--aux-loss-weight", type=float, default=0.01)
    p.add_argument("--save-interval-updates", type=int, default=200, help="resume granularity")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--eval-n", type=int, default=0, metavar="N",
                   help="score the first N sentences of each direction of every subset (a fixed sample that "
                        "keeps clusters together; the subset is reported as SUBSET_sampleN); 0: whole splits")
    p.add_argument("--distill-sentences", type=int, default=4000,
                   help="training pairs per direction, a seeded uniform sample, translated by the teacher "
                        "(0: all)")
    p.add_argument("--distill-beam", type=int, default=4)
    p.add_argument("--jobs", type=int, default=1, help="trainings / evaluations run side by side")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every fairseq subprocess")
    p.add_argument("--json", default=None, help="default: OUT/quality.json (hypotheses: beside it, "
                   "*.hyps.jsonl.gz)")
    p.add_argument("--bootstrap-samples", type=int, default=1000, help="resamples of each paired bootstrap")
    p.add_argument("--from-hypotheses", default=None, metavar="HYPS_JSONL_GZ",
                   help="recompute the tables and statistics from saved hypotheses (no training or decoding); "
                        "writes --json (default: beside the file, *.recomputed.json)")
    p.add_argument("--models", default=",".join(ALL_MODELS),
                   help="comma-separated subset of: " + ", ".join(ALL_MODELS) + " (student needs token-moe; "
                        "the extracts come with task-moe)")
    p.add_argument("--smoke", action="store_true", help="toy corpus, tiny models and budget (CI, ~2 min)")
    return p


def resolve(args):
    if args.smoke:
        args.data = args.data or benchlib.toy_corpus(Path(args.out) / "toy")
        args.embed_dim, args.ffn_dim, args.layers, args.heads, args.experts = 32, 64, 2, 2, 4
        args.max_update, args.max_tokens, args.lr, args.warmup = 40, 1000, 0.005, 10
        args.distill_sentences, args.save_interval_updates = 60, 20
    args.data = str(args.data or benchlib.REPO / "data/loc8")
    if not Path(args.data).is_dir():
        raise SystemExit(f"--data {args.data}: no such directory (build it with fairseq-taskmoe-prepare-data)")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds {args.seeds!r}: give distinct integers, e.g. 1,2")
    if args.langs:
        langs = [lang for lang in args.langs.split(",") if lang]
        pairs = [p for lang in langs for p in (f"en-{lang}", f"{lang}-en")]
    else:
        pairs = benchlib.lang_pairs_of(args.data).split(",")
    if not pairs or not all(pairs):
        raise SystemExit(f"--langs {args.langs!r}: name at least one language")
    if args.subsets == "auto":  # UI strings, and documentation sentences where the corpus has them
        has_docs = any(Path(args.data).glob("test_doc.*.idx"))
        args.subsets = "test,test_doc" if has_docs else "test"
    subsets = [s for s in args.subsets.split(",") if s]
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown or not models:
        raise SystemExit(f"--models {args.models!r}: choose from {', '.join(ALL_MODELS)}")
    if "student" in models and TEACHER not in models:
        raise SystemExit(f"--models: student is distilled from {TEACHER}; add {TEACHER}")
    args.models = models
    return seeds, pairs, subsets


def recompute(args):
    path = Path(args.from_hypotheses)
    if not path.is_file():
        raise SystemExit(f"--from-hypotheses {path}: no such file (quality.py writes OUT/quality.hyps.jsonl.gz)")
    result = {"bench": "quality", "recomputed_from": str(path), "env": benchlib.environment(),
              "subsets": quality_report.recompute(path, args.bootstrap_samples)}
    default = path.with_name(path.name.replace(".hyps.jsonl.gz", "") + ".recomputed.json")
    out = benchlib.write_json(result, args.json or default)
    print(f"wrote {out}")
    return result


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.eval_n < 0:
        raise SystemExit(f"--eval-n must be >= 0 (0: whole splits), got {args.eval_n}")
    if args.bootstrap_samples < 1:
        raise SystemExit(f"--bootstrap-samples must be >= 1, got {args.bootstrap_samples}")
    if args.from_hypotheses:
        return recompute(args)
    if not args.out:
        raise SystemExit("--out is required (the run directory), unless --from-hypotheses")
    t_start = time.time()
    seeds, pairs, subsets = resolve(args)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # fairseq_taskmoe.evaluate's fairseq-generate
    lang_pairs = ",".join(pairs)
    log = lambda s: print(s, flush=True)  # noqa: E731
    first = seeds[0]
    jobs = [(f"{m}.s{s}", m, s) for m in SEEDED if m in args.models for s in seeds] + [
        (f"{m}.s{first}", m, first) for m in FIRST_SEED_ONLY if m in args.models]
    with ThreadPoolExecutor(args.jobs) as pool:
        ckpts = dict(zip([j[0] for j in jobs], pool.map(
            lambda j: train(args, j[0], j[1], j[2], args.data, lang_pairs, log), jobs)))
    flags = benchlib.task_flags(args.data, lang_pairs)
    student_data = None
    if "student" in args.models:
        student_data = distill.build_student_data(
            PY, ckpts[f"{TEACHER}.s{first}"], args.data, Path(args.out) / "distilled", pairs, lang_pairs, flags,
            args.distill_sentences, args.distill_beam, env_for(args.threads), log, seed=first)
        ckpts[f"student.s{first}"] = train(args, f"student.s{first}", "student", first, student_data, lang_pairs,
                                           log)
    extracted = {}
    if "task-moe" in args.models:
        extracted = extract_per_target(args, ckpts[f"task-moe.s{first}"], f"task-moe.s{first}",
                                       sorted({p.split("-")[1] for p in pairs}))
    models = {run: {"*": c} for run, c in ckpts.items()}
    if extracted:
        models[f"task-moe-extracted.s{first}"] = extracted
    result = {"bench": "quality", "env": benchlib.environment(), "config": vars(args), "pairs": pairs,
              "seeds": seeds, "subsets": {},
              "params": {**{run: count_params(c, args.top_k) for run, c in ckpts.items() if run.endswith(f".s{first}")},
                         **{f"task-moe-extracted.s{first}:{lang}": count_params(c, args.top_k)
                            for lang, c in extracted.items()}},
              "distill_sample": json.loads((Path(student_data) / "sample.json").read_text())
              if student_data and (Path(student_data) / "sample.json").is_file() else None}
    from fairseq_taskmoe.scoring.records import records_path, write_records

    all_records = []
    for subset in subsets:
        name, result["subsets"][name], subset_records = score_subset(args, subset, models, pairs, lang_pairs, seeds)
        all_records += subset_records
    result["seconds"] = round(time.time() - t_start)
    json_path = Path(args.json or Path(args.out) / "quality.json")
    hyps = write_records(records_path(json_path), all_records)
    result["hypotheses_file"] = hyps.name  # beside the JSON
    out = benchlib.write_json(result, json_path)
    print(f"wrote {out} and {hyps} (per-sentence hypotheses; --from-hypotheses recomputes every table)")
    return result


if __name__ == "__main__":
    main()
