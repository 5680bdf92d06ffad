"""``fairseq-taskmoe-extract``: write a deployable per-task sub-network.

    fairseq-taskmoe-extract CHECKPOINT --tasks en-de [en-fr ...] | all --out DIR
        [--format plugin|stock|ctranslate2|argos [--quantization int8]] [--target-langs de,fr]
        [--scores SCORES.json (argos)]
        [--data DIR] [--prune-token-experts N [--prune-data DIR] [--prune-split valid]] [--force]

Errors are one line, ``fairseq-taskmoe-extract: error: ...``; exit status 2 for
bad input, 3 for a refused (unsafe) checkpoint or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD,
4 for disk full / read-only / permission (see fairseq_taskmoe/checkpoints/cli.py).
"""

import argparse
import json
import sys

from fairseq_taskmoe.checkpoints import console_main, run
from fairseq_taskmoe.checkpoints.cli import HelpFormatter, add_verbose, split_list
from fairseq_taskmoe.extract.api import FORMATS

PROG = "fairseq-taskmoe-extract"


def get_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description="Extract the sub-network a task uses from a transformer_taskmoe checkpoint "
                    "(task-routed MoE layers become dense FFNs). The output directory holds a "
                    "README.md with the exact commands that decode it.")
    parser.add_argument("checkpoint", help="a transformer_taskmoe checkpoint (or any shard of an "
                        "expert-parallel shard set)")
    parser.add_argument("--tasks", nargs="+", default=[], metavar="SRC-TGT",
                        help="language pairs to keep (commas or spaces: en-de,en-fr or en-de en-fr), "
                             "mapped to tasks by the model's --moe-task-by; 'all': every task, one "
                             "extract each under --out (argos: every pair)")
    parser.add_argument("--target-langs", nargs="+", default=[], metavar="LANG",
                        help="target languages (commas or spaces): shortcut for every trained pair into them")
    parser.add_argument("--out", required=True, help="output directory (checkpoint.pt, dict.*.txt, extract.json)")
    parser.add_argument("--format", default="plugin", choices=FORMATS,
                        help="plugin: transformer_taskmoe checkpoint (needs --user-dir); stock: plain "
                             "fairseq transformer (one task, every MoE side task-routed); "
                             "ctranslate2: that stock model as a CTranslate2 model directory; "
                             "argos: one Argos Translate package per pair (docs/DEPLOY.md)")
    parser.add_argument("--quantization", default=None, metavar="TYPE",
                        help="--format ctranslate2 / argos: weight type of the CTranslate2 model, one of "
                             "int8 (default), int8_float32, int8_float16, int8_bfloat16, int16, "
                             "float16, bfloat16, float32")
    parser.add_argument("--scores", default=None, metavar="FILE",
                        help="--format argos only: fairseq-taskmoe-evaluate --json output, quoted in "
                             "each package's README.md")
    parser.add_argument("--prune-token-experts", type=int, default=None, metavar="N",
                        help="token/sentence-routed layers keep their N most used experts on the "
                             "task's data (approximate; default: keep all, exact)")
    parser.add_argument("--prune-data", default=None, help="data dir for the routing statistics "
                        "(default: --data)")
    parser.add_argument("--prune-split", default="valid", help="data split for the routing statistics")
    parser.add_argument("--data", default=None, help="binarized data dir whose dict.*.txt (and spm.model "
                        "in or next to it) go into --out (default: the checkpoint's own directory; the "
                        "data dir recorded in the checkpoint is never followed)")
    parser.add_argument("--force", action="store_true", help="replace --out if it is an earlier extract "
                        "(has extract.json); never anything else, never a directory holding an input")
    add_verbose(parser)
    return parser


def main(argv=None) -> int:
    from fairseq_taskmoe.extract.api import extract

    args = get_parser().parse_args(argv)
    report = extract(
        args.checkpoint, split_list(args.tasks), args.out, fmt=args.format, force=args.force,
        prune_token_experts=args.prune_token_experts, prune_data=args.prune_data,
        prune_split=args.prune_split, data_dir=args.data, quantization=args.quantization,
        log=lambda note: print(f"{PROG}: note: {note}", file=sys.stderr),
        target_langs=split_list(args.target_langs), scores=args.scores)
    summary = {k: report[k] for k in ("tasks", "format", "moe_layout", "params_before", "params_after",
                                      "decoder_experts_kept_fraction", "vocab_dir") if k in report}
    print(json.dumps(summary))
    return 0


def cli_main():
    console_main(PROG, main)


def run_main(argv=None) -> int:
    """``main`` behind the console script's error handling (what tests call in-process)."""
    return run(PROG, main, argv)


if __name__ == "__main__":
    cli_main()
