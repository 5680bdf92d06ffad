"""Loop share and BLEU of one trained model under standard decoding options.

    python bench/decoding_levers.py --checkpoint demo/ckpt/checkpoint_last.pt --data demo/data-sample \
        --subset test_sample100 --json bench/results/decoding_levers_demo.json

Each lever decodes every direction with fairseq-generate through fairseq_taskmoe.evaluate (beam 4,
raw references) and counts looping hypotheses (fairseq_taskmoe.scoring.loops). Levers:
``--no-repeat-ngram-size N`` (fairseq forbids any repeated n-gram of N target pieces; fairseq
0.12's own CPU path bans nothing, issue #5206, and the plugin task's generator fixes it:
tasks/ngram_block.py) and tighter
length limits (``--max-len-a``/``--max-len-b``; the default is 1.2 * source + 10). With
``--ct2 DIR`` (a CTranslate2 export, e.g. the demo's ``demo/ct2-en-de``) the same options are
measured in CTranslate2 on that pair (``no_repeat_ngram_size``, ``max_decoding_length``).
Prints a table (lever, loop share overall and out of English, BLEU) and writes JSON.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

# name -> fairseq-generate options (after evaluate.generate's defaults, so they win)
LEVERS = {
    "default (beam 4, len 1.2x+10)": [],
    "no-repeat-ngram 3": ["--no-repeat-ngram-size", "3"],
    "no-repeat-ngram 4": ["--no-repeat-ngram-size", "4"],
    "len 1.0x+5": ["--max-len-a", "1.0", "--max-len-b", "5"],
}


def fairseq_levers(args, pairs, lang_pairs):
    from fairseq_taskmoe import evaluate as ev
    from fairseq_taskmoe.scoring.loops import loop_shares

    rows = []
    for name, extra in LEVERS.items():
        res = ev.evaluate(args.checkpoint, args.data, pairs, lang_pairs, benchlib.PLUGIN_DIR, beam=args.beam,
                          subset=args.subset, extra=extra, log=lambda s: None)
        shares = loop_shares({p: r["hypotheses"] for p, r in res.items()})
        rows.append({"engine": "fairseq", "lever": name, "options": extra,
                     "loops %": 100 * shares["all"]["share"],
                     "out-of-English loops %": 100 * shares["out-of-English"]["share"],
                     "into-English loops %": 100 * shares["into-English"]["share"],
                     "avg BLEU": sum(r["bleu"] for r in res.values()) / len(res),
                     "avg chrF": sum(r["chrf"] for r in res.values()) / len(res),
                     "per_pair": {p: {"bleu": r["bleu"], "loops": shares["pairs"][p]["loops"],
                                      "sentences": r["sentences"]} for p, r in res.items()}})
        print(f"{name}: loops {rows[-1]['loops %']:.1f}%, BLEU {rows[-1]['avg BLEU']:.2f}", flush=True)
    return rows


class _WithOptions:
    """A ctranslate2.Translator whose translate_batch adds CTranslate2's own ``options`` (the
    serving wrapper passes fairseq's options only; the extension type's methods are read-only)."""

    def __init__(self, translator, options):
        self._translator, self._options = translator, options

    def translate_batch(self, *args, **kwargs):
        return self._translator.translate_batch(*args, **{**kwargs, **self._options})

    def __getattr__(self, name):
        return getattr(self._translator, name)


def ct2_levers(args):
    """The same levers in CTranslate2 on one pair (the export's), at beam ``args.beam``."""
    import sacrebleu

    from fairseq_taskmoe.evaluate import bleu_tokenizer, raw_reference_file, read_lines
    from fairseq_taskmoe.scoring.loops import loop_count
    from fairseq_taskmoe.serve import from_pretrained

    src, tgt = args.ct2_pair.split("-")
    sources = read_lines(raw_reference_file(args.data, args.subset, tgt, src))  # the source side's raw text
    refs = read_lines(raw_reference_file(args.data, args.subset, src, tgt))
    model = from_pretrained(args.ct2, threads=1)
    base = model.translator
    rows = []
    for name, options in (("default (max 200)", {}), ("no_repeat_ngram_size 3", {"no_repeat_ngram_size": 3}),
                          ("no_repeat_ngram_size 4", {"no_repeat_ngram_size": 4})):
        model.translator = _WithOptions(base, options)
        hyps = model.translate(sources, src, tgt, beam=args.beam)
        rows.append({"engine": "ctranslate2", "lever": f"{args.ct2_pair} {name}", "options": options,
                     "loops %": 100 * loop_count(hyps, tgt) / len(hyps),
                     "avg BLEU": sacrebleu.corpus_bleu(hyps, [refs], tokenize=bleu_tokenizer(tgt)).score})
    model.translator = base
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="binarized data dir with raw/ (e.g. the demo's sample view)")
    p.add_argument("--subset", default="test")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--ct2", default=None, help="a CTranslate2 export to measure the same levers on")
    p.add_argument("--ct2-pair", default="en-de")
    p.add_argument("--no-fairseq", action="store_true", help="measure the CTranslate2 levers only")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    if args.no_fairseq and not args.ct2:
        raise SystemExit("--no-fairseq needs --ct2 DIR (nothing to measure otherwise)")
    lang_pairs = benchlib.lang_pairs_of(args.data)
    rows = [] if args.no_fairseq else fairseq_levers(args, lang_pairs.split(","), lang_pairs)
    if args.ct2:
        rows += ct2_levers(args)
    print(benchlib.table(rows, ["engine", "lever", "loops %", "out-of-English loops %", "into-English loops %",
                                "avg BLEU", "avg chrF"]))
    benchlib.write_json({"bench": "decoding_levers", "env": benchlib.environment(), "config": vars(args),
                         "rows": rows}, args.json)
    return rows


if __name__ == "__main__":
    main()
