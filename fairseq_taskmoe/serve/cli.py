"""``fairseq-taskmoe-translate``: translate text with a full model, an extract or a CTranslate2 export.

    fairseq-taskmoe-translate MODEL -s en -t de < input.txt > output.txt
        [--data DIR] [--beam 4] [--lenpen 1.0] [--batch-size 32] [--input FILE] [--output FILE]

MODEL is what ``fairseq_taskmoe.serve.from_pretrained`` takes: a CTranslate2 export
directory, an extract directory or a checkpoint file (the engine follows). One
sentence per line in (UTF-8), one translation per line out, in order; an empty line
gives an empty line. Input is read and translated in chunks, with a progress bar on
stderr when it is a terminal. Errors: one line ``fairseq-taskmoe-translate: error: ...``
naming the input line where one is at fault; exit status 2 (bad input), 3 (unsafe
checkpoint or environment), 4 (disk full, permissions), 130 (ctrl-C; a named --output
is then not written at all). See ``fairseq_taskmoe/checkpoints/cli.py``.
"""

import argparse
import contextlib
import itertools
import sys

PROG = "fairseq-taskmoe-translate"
CHUNK = 1024  # lines read (and translated) at a time


def get_parser():
    from fairseq_taskmoe.checkpoints.cli import HelpFormatter, add_verbose

    p = argparse.ArgumentParser(prog=PROG, formatter_class=HelpFormatter,
                                description="Translate text (one sentence per line) with a task-MoE "
                                "model, a plugin or stock extract or a CTranslate2 export.")
    p.add_argument("model", help="CTranslate2 export dir, extract dir or checkpoint file")
    p.add_argument("-s", "--source-lang", required=True, metavar="LANG", help="source language (e.g. en)")
    p.add_argument("-t", "--target-lang", required=True, metavar="LANG", help="target language (e.g. de)")
    p.add_argument("--data", default=None, help="dict.*.txt dir of a full checkpoint (default: next to it)")
    p.add_argument("--spm-model", default=None, help="sentencepiece model (default: spm.model in or next "
                   "to MODEL / --data; none: input is already tokenized)")
    p.add_argument("--beam", type=int, default=4, help="beam size (1: greedy)")
    p.add_argument("--lenpen", type=float, default=1.0, help="length penalty (fairseq's: score / length**lenpen)")
    p.add_argument("--max-len-b", type=int, default=200, help="longest translation, in tokens")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch")
    p.add_argument("--threads", type=int, default=0, help="CTranslate2 intra-op threads (0: its default)")
    p.add_argument("--input", default="-", help="input file, UTF-8 (-: stdin)")
    p.add_argument("--output", default="-", help="output file (-: stdout); written only when complete")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_verbose(p)
    return p


def _count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def read_lines(stream, where: str):
    """Decoded lines (no line end) of a binary ``stream``; a ValueError naming the line if not UTF-8."""
    for number, raw in enumerate(stream, 1):
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as err:
            raise ValueError(f"{where} line {number}: not UTF-8 text ({err.reason} at byte {err.start}); "
                             "convert the file to UTF-8 (e.g. iconv -f LATIN1 -t UTF-8)") from err


def main(argv=None) -> int:
    from tqdm import tqdm

    from fairseq_taskmoe.checkpoints import atomic_file
    from fairseq_taskmoe.serve.hub import from_pretrained
    from fairseq_taskmoe.serve.text import SentenceError, check_decoding

    args = get_parser().parse_args(argv)
    check_decoding(args.beam, args.batch_size, args.max_len_b)
    model = from_pretrained(args.model, data=args.data, spm_model=args.spm_model, threads=args.threads)
    total = None if args.input == "-" else _count_lines(args.input)
    where = "stdin" if args.input == "-" else f"--input {args.input}"
    with contextlib.ExitStack() as stack:
        if args.input == "-":  # bytes, so that a bad line is named (a replaced stdin may be text)
            raw = getattr(sys.stdin, "buffer", None) or (
                line.encode("utf-8", "surrogateescape") for line in sys.stdin)
        else:
            raw = stack.enter_context(open(args.input, "rb"))
        src = read_lines(raw, where)
        # A named --output appears only when complete (temp file, then rename).
        out = sys.stdout if args.output == "-" else stack.enter_context(atomic_file(args.output, "w"))
        bar = stack.enter_context(tqdm(total=total, unit="sent", file=sys.stderr, desc=model.engine,
                                       disable=True if args.no_progress else None))
        done = 0
        while True:
            lines = list(itertools.islice(src, CHUNK))
            if not lines:
                break
            try:
                hyps = model.translate(lines, args.source_lang, args.target_lang, beam=args.beam,
                                       lenpen=args.lenpen, batch_size=args.batch_size,
                                       max_len_b=args.max_len_b)
            except SentenceError as err:
                raise ValueError(f"{where} line {done + err.index + 1}: {err.problem}") from err
            for hyp in hyps:
                out.write(hyp + "\n")
            out.flush()
            done += len(lines)
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
