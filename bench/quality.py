"""Translation quality at equal training budgets: dense, token-MoE, task-MoE,
a dense student distilled from the token-MoE, and the extracted task-MoE.

Recipe (every step is skipped when its output exists, so a killed run resumes;
``--jobs 2`` runs independent trainings / evaluations side by side):

1. Train with the same ``--max-update`` and ``--max-tokens`` (fairseq-train):
   dense (``--moe-freq 0``), token-MoE (token/token), task-MoE (token encoder,
   task decoder by target language).
2. Distil: the token-MoE's beam output on training sources (``--distill-sentences``
   per direction) becomes the student's targets (bench/distill.py), binarized
   with the same dictionary; train a dense student at the same budget.
3. Extract the task-MoE per target language (``fairseq-taskmoe-extract
   --target-langs X``, plugin format) and decode each pair with its extract.
4. Score every model per pair on the test split (fairseq-generate beam 4,
   detokenized with ``--remove-bpe sentencepiece``; sacrebleu BLEU and chrF via
   ``fairseq_taskmoe.evaluate``), check the extract's hypotheses equal the full
   task-MoE's, print a table and write JSON.

    python bench/quality.py --data data/loc8 --langs de,fr,ja --max-update 600 --out runs/quality
    python bench/quality.py --smoke --out /tmp/q   # toy corpus, < 2 min (CI)
"""

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import distill  # noqa: E402

PY = sys.executable
TEACHER = "token-moe"
ROUTING = {"dense": None, "token-moe": ("token", "token"), "task-moe": ("token", "task"), "student": None}
FIRST_ROUND = ("dense", "token-moe", "task-moe")


def env_for(threads):
    # One thread per child by default: on a shared CPU, oversubscribed OpenMP threads spin and
    # made fairseq-generate ~45x slower here (7.8 vs 339 sentences/s).
    env = dict(os.environ, PATH=f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def train(args, name, data, lang_pairs, log):
    save = Path(args.out) / name
    ckpt = save / "checkpoint_last.pt"
    if (save / "DONE").is_file():
        log(f"train {name}: done, skipped")
        return ckpt
    cmd = [str(Path(PY).parent / "fairseq-train"), *benchlib.task_flags(data, lang_pairs),
           "--arch", args.arch, "--moe-expert-count", str(args.experts),
           "--criterion", "label_smoothed_cross_entropy_moe", "--label-smoothing", "0.1",
           "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", str(args.lr),
           "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(args.warmup), "--dropout", "0.1",
           "--max-tokens", str(args.max_tokens), "--max-update", str(args.max_update),
           "--sampling-method", "temperature", "--sampling-temperature", "1.5",
           "--save-dir", str(save), "--disable-validation", "--no-epoch-checkpoints",
           "--log-format", "simple", "--log-interval", "50", "--no-progress-bar",
           "--num-workers", "0", "--seed", "1"]
    routing = ROUTING.get(name)
    cmd += (["--moe-freq", "0"] if routing is None else
            ["--moe-encoder-routing", routing[0], "--moe-decoder-routing", routing[1]])
    t0 = time.time()
    save.mkdir(parents=True, exist_ok=True)
    with open(save / "train.log", "w") as f:  # fairseq-train resumes from checkpoint_last.pt itself
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env_for(args.threads))
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-train {name} failed; see {save / 'train.log'}")
    (save / "DONE").write_text(f"{time.time() - t0:.0f} s\n")
    log(f"train {name}: {time.time() - t0:.0f} s")
    return ckpt


def extract_per_target(args, ckpt, tgt_langs):
    from fairseq_taskmoe.extract import extract

    out = {}
    for lang in tgt_langs:
        path = Path(args.out) / "task-moe-extracted" / lang
        if not (path / "checkpoint.pt").is_file():
            extract(str(ckpt), target_langs=[lang], out_dir=str(path), data_dir=str(args.data), force=True)
        out[lang] = path / "checkpoint.pt"
    return out


def evaluate(args, name, ckpts, data, pairs, lang_pairs):
    """Per-pair scores; ``ckpts`` maps a target language to its checkpoint (or "*": one model)."""
    import json

    from fairseq_taskmoe import evaluate as ev

    cache = Path(args.out) / "scores" / f"{name}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    results = {}
    for pair in pairs:
        ckpt = ckpts.get(pair.split("-")[1], ckpts.get("*"))
        results.update(ev.evaluate(ckpt, data, [pair], lang_pairs, benchlib.PLUGIN_DIR, beam=args.beam,
                                   log=lambda s: print(f"[{name}] {s}", flush=True)))
    benchlib.write_json(results, cache)
    return results


def same_hypotheses(a, b):
    pairs = sorted(set(a) & set(b))
    same = sum(x == y for p in pairs for x, y in zip(a[p]["hypotheses"], b[p]["hypotheses"]))
    total = sum(len(a[p]["hypotheses"]) for p in pairs)
    return {"identical": same, "total": total, "exact": same == total and total > 0}


def summarize(scores, pairs):
    rows = []
    for name, res in scores.items():
        row = {"model": name}
        for pair in pairs:
            row[f"{pair} BLEU"] = res[pair]["bleu"]
            row[f"{pair} chrF"] = res[pair]["chrf"]
        row["avg BLEU"] = sum(res[p]["bleu"] for p in pairs) / len(pairs)
        row["avg chrF"] = sum(res[p]["chrf"] for p in pairs) / len(pairs)
        rows.append(row)
    return rows


def smoke_data(out):
    sys.path.insert(0, str(benchlib.REPO / "tests"))
    from taskmoe_testlib import binarize, write_toy_corpus

    root = Path(out) / "toy"
    if not (root / "bin" / "dict.de.txt").is_file():
        write_toy_corpus(root / "raw")
        binarize(root / "raw", root / "bin")
    return root / "bin"


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="binarized data (default: data/loc8; --smoke: a toy corpus)")
    p.add_argument("--langs", default="de,fr,ja", help="non-English languages (pairs en-X and X-en)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, scores, quality.json)")
    p.add_argument("--arch", default="transformer_taskmoe_tiny")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--max-update", type=int, default=600, help="training budget of every model")
    p.add_argument("--max-tokens", type=int, default=4000)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--distill-sentences", type=int, default=4000,
                   help="training sources per direction translated by the teacher (0: all)")
    p.add_argument("--distill-beam", type=int, default=4)
    p.add_argument("--jobs", type=int, default=1, help="trainings / evaluations run side by side")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every fairseq subprocess")
    p.add_argument("--json", default=None, help="default: OUT/quality.json")
    p.add_argument("--smoke", action="store_true", help="toy corpus, tiny budget (CI, < 2 min)")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    t_start = time.time()
    if args.smoke:
        args.data = args.data or smoke_data(args.out)
        args.langs, args.max_update, args.experts = "de", 40, 4
        args.lr, args.distill_sentences, args.warmup, args.max_tokens = 0.005, 60, 10, 1000
    args.data = args.data or str(benchlib.REPO / "data/loc8")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # fairseq_taskmoe.evaluate's fairseq-generate
    langs = [l for l in args.langs.split(",") if l]
    if not langs:
        raise ValueError("--langs must name at least one language")
    pairs = [p for l in langs for p in (f"en-{l}", f"{l}-en")]
    lang_pairs = ",".join(pairs)
    log = lambda s: print(s, flush=True)  # noqa: E731
    with ThreadPoolExecutor(args.jobs) as pool:
        ckpts = dict(zip(FIRST_ROUND, pool.map(lambda n: train(args, n, args.data, lang_pairs, log),
                                               FIRST_ROUND)))
    flags = benchlib.task_flags(args.data, lang_pairs)
    student_data = distill.build_student_data(PY, ckpts[TEACHER], args.data, Path(args.out) / "distilled",
                                              pairs, lang_pairs, flags, args.distill_sentences,
                                              args.distill_beam, env_for(args.threads), log)
    ckpts["student"] = train(args, "student", student_data, lang_pairs, log)
    extracted = extract_per_target(args, ckpts["task-moe"], sorted({p.split("-")[1] for p in pairs}))
    jobs = {n: {"*": c} for n, c in ckpts.items()}
    jobs["task-moe-extracted"] = extracted
    with ThreadPoolExecutor(args.jobs) as pool:
        scores = dict(zip(jobs, pool.map(
            lambda n: evaluate(args, n, jobs[n], args.data, pairs, lang_pairs), jobs)))
    rows = summarize(scores, pairs)
    exact = same_hypotheses(scores["task-moe"], scores["task-moe-extracted"])
    result = {"bench": "quality", "env": benchlib.environment(), "config": vars(args), "pairs": pairs,
              "rows": rows, "extracted_equals_full": exact,
              "scores": {n: {p: {k: v for k, v in r.items() if k != "hypotheses"} for p, r in s.items()}
                         for n, s in scores.items()},
              "seconds": time.time() - t_start}
    cols = ["model", "avg BLEU", "avg chrF"] + [f"{p} BLEU" for p in pairs]
    print(benchlib.table(rows, cols))
    print(f"extracted task-MoE == full task-MoE: {exact}")
    out = benchlib.write_json(result, args.json or Path(args.out) / "quality.json")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
