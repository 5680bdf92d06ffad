"""End of ``make demo``: export the pair's extract to CTranslate2 int8 and time it against fairseq.

    python examples/demo_serve.py --checkpoint OUT/ckpt/checkpoint_last.pt --data DATA --pair en-de --out OUT

Writes OUT/ct2-PAIR (the CTranslate2 model) and OUT/serve-PAIR.json; prints a few
translations and one speed line (sentences/s of both engines on the same test
sentences, same beam, same number of threads) with each engine's BLEU on them. Both decode
up to 200 target tokens (fairseq-interactive's default, the translators' ``max_len_b``), while
fairseq_taskmoe.evaluate uses fairseq-generate with --max-len-a 1.2 --max-len-b 10: on a model
that still loops the two BLEUs differ.
"""

import argparse
import json
import os
import sys
import time

import sacrebleu
import torch

from fairseq_taskmoe.checkpoints import atomic_write_json
from fairseq_taskmoe.extract import extract
from fairseq_taskmoe.serve import from_pretrained


def test_sentences(data, pair, n):
    """The first ``n`` (source, reference) lines of the pair's raw test split (either file order)."""
    src, tgt = pair.split("-")
    for prefix in (f"{src}-{tgt}", f"{tgt}-{src}"):
        files = [os.path.join(data, "raw", f"test.{prefix}.{lang}") for lang in (src, tgt)]
        if all(os.path.isfile(f) for f in files):
            with open(files[0], encoding="utf-8") as fs, open(files[1], encoding="utf-8") as ft:
                return [(s.strip(), t.strip()) for s, t, _ in zip(fs, ft, range(n))]
    raise FileNotFoundError(f"{data}/raw/test.{src}-{tgt}.{src}: the pair's raw test text is missing")


def timed(model, sources, pair, beam, batch_size):
    src, tgt = pair.split("-")
    model.translate(sources[:2], src, tgt, beam=beam)  # warm-up (lazy init, allocator)
    start = time.perf_counter()
    hyps = model.translate(sources, src, tgt, beam=beam, batch_size=batch_size)
    return hyps, time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--pair", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=100, help="test sentences")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--quantization", default="int8")
    args = p.parse_args(argv)

    ct2_dir = os.path.join(args.out, f"ct2-{args.pair}")
    print(f"== exporting the {args.pair} sub-network to CTranslate2 {args.quantization}: {ct2_dir}")
    try:
        report = extract(args.checkpoint, [args.pair], ct2_dir, fmt="ctranslate2", force=True,
                         data_dir=args.data, quantization=args.quantization)
    except ValueError as err:
        print(f"demo_serve: error: {err}", file=sys.stderr)
        return 2
    pairs = test_sentences(args.data, args.pair, args.n)
    sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
    threads = torch.get_num_threads()
    engines = {
        f"ctranslate2 {args.quantization} (extract)": from_pretrained(ct2_dir, threads=threads),
        "fairseq (full model)": from_pretrained(args.checkpoint, data=args.data),
    }
    results = {}
    for name, model in engines.items():
        hyps, seconds = timed(model, sources, args.pair, args.beam, args.batch_size)
        results[name] = {"sentences_per_s": len(sources) / seconds, "seconds": seconds,
                         "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score, "hypotheses": hyps}
    (ct2_name, ct2), (fs_name, fs) = results.items()
    def short(text, n=150):
        return text if len(text) <= n else text[:n] + " ..."

    for i in range(min(3, len(sources))):
        print(f"  src: {short(sources[i])}\n  ref: {short(refs[i])}\n  {ct2_name}: {short(ct2['hypotheses'][i])}\n"
              f"  {fs_name}: {short(fs['hypotheses'][i])}")
    same = sum(a == b for a, b in zip(ct2["hypotheses"], fs["hypotheses"]))
    print(f"serving {args.pair}, {len(sources)} test sentences, beam {args.beam}, batch {args.batch_size}, "
          f"{threads} threads: {ct2_name} {ct2['sentences_per_s']:.1f} sent/s (BLEU {ct2['bleu']:.2f}) vs "
          f"{fs_name} {fs['sentences_per_s']:.1f} sent/s (BLEU {fs['bleu']:.2f}): "
          f"{ct2['sentences_per_s'] / fs['sentences_per_s']:.2f}x; identical output on {same}/{len(sources)}")
    summary = {"pair": args.pair, "sentences": len(sources), "beam": args.beam, "batch_size": args.batch_size,
               "threads": threads, "ctranslate2_dir": ct2_dir, "params_after": report["params_after"],
               "params_before": report["params_before"], "identical_outputs": same,
               "engines": {k: {m: v for m, v in r.items() if m != "hypotheses"} for k, r in results.items()},
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    path = os.path.join(args.out, f"serve-{args.pair}.json")
    atomic_write_json(path, summary, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
