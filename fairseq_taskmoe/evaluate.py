"""Score a checkpoint per language pair with fairseq-generate + sacrebleu.

    python -m fairseq_taskmoe.evaluate CKPT --data data/loc8 --pairs en-de,de-en \
        [--user-dir fairseq_taskmoe] [--task translation_multi_simple_epoch_taskmoe] --json out.json

Runs the real ``fairseq-generate`` for each pair (beam 4 by default), takes the
detokenized hypotheses (D- lines) and references (T- lines) and scores them
with sacrebleu: BLEU (tokenizer ``zh`` for Chinese, ``char`` for Japanese,
``13a`` otherwise) and chrF. Prints a table and writes JSON.

fairseq-generate runs with ``--required-batch-size-multiple 1``: with the
default (8), fairseq main drops the last batch of the split when its size is
not a multiple of 8, i.e. up to 7 sentences per pair, for any task (the
stock ``translation_multi_simple_epoch`` included). Every pair's output is
checked against the number of sentences in the binarized split.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import sacrebleu


def bleu_tokenizer(lang: str) -> str:
    if lang.startswith("zh"):
        return "zh"
    if lang.startswith("ja"):
        return "char"
    return "13a"


def parse_generate_output(text: str):
    """(hypotheses, references) in sample-id order from fairseq-generate stdout."""
    hyps, refs = {}, {}
    for line in text.splitlines():
        m = re.match(r"^([DT])-(\d+)\t(.*)$", line)
        if not m:
            continue
        kind, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "D":
            hyps[idx] = rest.split("\t", 1)[1] if "\t" in rest else ""
        else:
            refs[idx] = rest
    ids = sorted(refs)
    missing = [i for i in ids if i not in hyps]
    if missing:
        raise ValueError(f"fairseq-generate produced no hypothesis for sample ids {missing[:5]}")
    return [hyps[i] for i in ids], [refs[i] for i in ids]


def generate(ckpt, data, src, tgt, lang_pairs, user_dir=None, task="translation_multi_simple_epoch_taskmoe",
             beam=4, subset="test", max_tokens=8000, extra=()):
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "fairseq-generate"), str(data), "--task", task, "--lang-pairs", lang_pairs,
           "--encoder-langtok", "src", "--decoder-langtok", "-s", src, "-t", tgt, "--path", str(ckpt),
           "--gen-subset", subset, "--beam", str(beam), "--max-tokens", str(max_tokens),
           "--num-workers", "0", "--remove-bpe", "sentencepiece", "--max-len-a", "1.2",
           "--max-len-b", "10", "--required-batch-size-multiple", "1", *extra]
    if user_dir:
        cmd += ["--user-dir", str(user_dir)]
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-generate failed for {src}-{tgt}:\n{proc.stderr[-3000:]}")
    hyps, refs = parse_generate_output(proc.stdout)
    expected = split_size(data, subset, src, tgt)
    if expected is not None and len(refs) != expected:
        raise RuntimeError(f"fairseq-generate translated {len(refs)} of the {expected} sentences of "
                           f"{subset} {src}-{tgt} in {data}; scores over a subset would not be comparable")
    return hyps, refs, time.time() - t0


def split_size(data, subset, src, tgt):
    """Sentences in the binarized ``subset`` of ``src-tgt`` (either direction's files); None if absent."""
    from fairseq.data import data_utils

    from fairseq_taskmoe.data.binarize import pair_file

    try:
        prefix = pair_file(data, subset, src, tgt, src)
    except FileNotFoundError:
        return None
    dataset = data_utils.load_indexed_dataset(str(prefix), None)  # infers the format
    return None if dataset is None else len(dataset)


def score(hyps, refs, tgt):
    bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize=bleu_tokenizer(tgt))
    chrf = sacrebleu.corpus_chrf(hyps, [refs])
    return {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2), "sentences": len(hyps),
            "bleu_tokenizer": bleu_tokenizer(tgt)}


def evaluate(ckpt, data, pairs, lang_pairs=None, user_dir=None, task="translation_multi_simple_epoch_taskmoe",
             beam=4, subset="test", extra=(), log=print):
    lang_pairs = lang_pairs or ",".join(pairs)
    results = {}
    for pair in pairs:
        src, tgt = pair.split("-")
        hyps, refs, secs = generate(ckpt, data, src, tgt, lang_pairs, user_dir, task, beam, subset,
                                    extra=extra)
        results[pair] = {**score(hyps, refs, tgt), "seconds": round(secs, 1), "hypotheses": hyps}
        log(f"{pair:>12}  BLEU {results[pair]['bleu']:6.2f}  chrF {results[pair]['chrf']:6.2f}  "
            f"({len(hyps)} sentences, {secs:.0f}s)")
    return results


def summary(results):
    n = len(results)
    return {"avg_bleu": round(sum(r["bleu"] for r in results.values()) / n, 2),
            "avg_chrf": round(sum(r["chrf"] for r in results.values()) / n, 2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="binarized data dir (with dict.*.txt)")
    p.add_argument("--pairs", required=True, help="comma-separated pairs to score, e.g. en-de,de-en")
    p.add_argument("--lang-pairs", default=None, help="the model's --lang-pairs (default: --pairs)")
    p.add_argument("--user-dir", default=None)
    p.add_argument("--task", default="translation_multi_simple_epoch_taskmoe")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--subset", default="test")
    p.add_argument("--json", default=None, help="write results here")
    args = p.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        p.error(f"checkpoint not found: {args.checkpoint}")
    pairs = [x for x in args.pairs.split(",") if x]
    results = evaluate(args.checkpoint, args.data, pairs, args.lang_pairs, args.user_dir, args.task,
                       args.beam, args.subset)
    out = {"checkpoint": args.checkpoint, "pairs": results, **summary(results)}
    print(f"{'average':>12}  BLEU {out['avg_bleu']:6.2f}  chrF {out['avg_chrf']:6.2f}")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1, ensure_ascii=False)
        os.replace(tmp, args.json)
    return out


if __name__ == "__main__":
    main()
