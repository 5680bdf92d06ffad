"""``fairseq-taskmoe-translate``: translate text with a full model, an extract or a CTranslate2 export.

    fairseq-taskmoe-translate MODEL -s en -t de < input.txt > output.txt
        [--data DIR] [--beam 4] [--lenpen 1.0] [--batch-size 32] [--input FILE] [--output FILE]

MODEL is what ``fairseq_taskmoe.serve.from_pretrained`` takes: a CTranslate2 export
directory, an extract directory or a checkpoint file (the engine follows). One
sentence per line in, one translation per line out, in order; input is read and
translated in chunks, with a progress bar on stderr when it is a terminal.
Errors: one line ``fairseq-taskmoe-translate: error: ...``, exit status 2.
"""

import argparse
import contextlib
import itertools
import sys

PROG = "fairseq-taskmoe-translate"
CHUNK = 1024  # lines read (and translated) at a time


def get_parser():
    p = argparse.ArgumentParser(prog=PROG, description="Translate text (one sentence per line) with a "
                                "task-MoE model, extract or CTranslate2 export. See docs/SERVING.md.")
    p.add_argument("model", help="CTranslate2 export dir, extract dir or checkpoint file")
    p.add_argument("-s", "--source-lang", required=True)
    p.add_argument("-t", "--target-lang", required=True)
    p.add_argument("--data", default=None, help="dict.*.txt dir of a full checkpoint (default: next to it)")
    p.add_argument("--spm-model", default=None, help="sentencepiece model (default: spm.model in or next "
                   "to MODEL / --data; none: input is already tokenized)")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--lenpen", type=float, default=1.0)
    p.add_argument("--max-len-b", type=int, default=200, help="longest translation, in tokens")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch")
    p.add_argument("--threads", type=int, default=0, help="CTranslate2 intra-op threads (0: its default)")
    p.add_argument("--input", default="-", help="input file (default: stdin)")
    p.add_argument("--output", default="-", help="output file (default: stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def main(argv=None) -> int:
    from tqdm import tqdm

    from fairseq_taskmoe.checkpoints import atomic_file
    from fairseq_taskmoe.serve.hub import from_pretrained

    args = get_parser().parse_args(argv)
    for flag, value in (("--beam", args.beam), ("--batch-size", args.batch_size), ("--max-len-b", args.max_len_b)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1; got {value}")
    model = from_pretrained(args.model, data=args.data, spm_model=args.spm_model, threads=args.threads)
    total = None if args.input == "-" else _count_lines(args.input)
    with contextlib.ExitStack() as stack:
        src = sys.stdin if args.input == "-" else stack.enter_context(open(args.input, encoding="utf-8"))
        # A named --output appears only when complete (temp file, then rename).
        out = sys.stdout if args.output == "-" else stack.enter_context(atomic_file(args.output, "w"))
        bar = stack.enter_context(tqdm(total=total, unit="sent", file=sys.stderr, desc=model.engine,
                                       disable=True if args.no_progress else None))
        while True:
            lines = [line.rstrip("\n") for line in itertools.islice(src, CHUNK)]
            if not lines:
                break
            for hyp in model.translate(lines, args.source_lang, args.target_lang, beam=args.beam,
                                       lenpen=args.lenpen, batch_size=args.batch_size,
                                       max_len_b=args.max_len_b):
                out.write(hyp + "\n")
            out.flush()
            bar.update(len(lines))
    return 0


def run_main(argv=None) -> int:
    """``main`` behind the console script's error handling (what tests call in-process)."""
    from fairseq_taskmoe.checkpoints import run

    return run(PROG, main, argv)


def cli_main():
    from fairseq_taskmoe.checkpoints import console_main

    console_main(PROG, main)


if __name__ == "__main__":
    cli_main()
