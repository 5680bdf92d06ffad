"""``fairseq-taskmoe-extract``: write a deployable per-task sub-network.

    fairseq-taskmoe-extract CHECKPOINT --tasks en-de [en-fr ...] --out DIR
        [--format plugin|stock] [--target-langs de,fr]
        [--prune-token-experts N [--prune-data DIR] [--prune-split valid]] [--force]
"""

import argparse
import json
import logging
import sys

from fairseq_taskmoe.extract.api import FORMATS


def get_parser():
    parser = argparse.ArgumentParser(
        prog="fairseq-taskmoe-extract",
        description="Extract the sub-network a task uses from a transformer_taskmoe checkpoint "
                    "(task-routed MoE layers become dense FFNs). See docs/EXTRACT.md.")
    parser.add_argument("checkpoint", help="a transformer_taskmoe checkpoint (or any shard of an "
                        "expert-parallel shard set)")
    parser.add_argument("--tasks", nargs="+", default=[], metavar="SRC-TGT",
                        help="language pairs to keep, mapped to tasks by the model's --moe-task-by")
    parser.add_argument("--target-langs", default="",
                        help="comma-separated target languages: shortcut for every trained pair into them")
    parser.add_argument("--out", required=True, help="output directory (checkpoint.pt, dict.*.txt, extract.json)")
    parser.add_argument("--format", default="plugin", choices=FORMATS,
                        help="plugin: transformer_taskmoe checkpoint (needs --user-dir); stock: plain "
                             "fairseq transformer (one task, every MoE side task-routed)")
    parser.add_argument("--prune-token-experts", type=int, default=None, metavar="N",
                        help="token/sentence-routed layers keep their N most used experts on the "
                             "task's data (approximate; default: keep all, exact)")
    parser.add_argument("--prune-data", default=None, help="data dir for the routing statistics "
                        "(default: the checkpoint's training data dir)")
    parser.add_argument("--prune-split", default="valid", help="split for the routing statistics")
    parser.add_argument("--data", default=None, help="where dict.*.txt / spm.model are (default: the "
                        "checkpoint's training data dir)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    return parser


def main(argv=None) -> int:
    from fairseq_taskmoe.extract.api import extract
    from fairseq_taskmoe.safe_load import UnsafeCheckpointError

    args = get_parser().parse_args(argv)
    try:
        report = extract(
            args.checkpoint, args.tasks, args.out, fmt=args.format, force=args.force,
            prune_token_experts=args.prune_token_experts, prune_data=args.prune_data,
            prune_split=args.prune_split, data_dir=args.data,
            target_langs=[t for t in args.target_langs.split(",") if t])
    except UnsafeCheckpointError as err:
        print(f"fairseq-taskmoe-extract: error: {err}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"fairseq-taskmoe-extract: error: {err}", file=sys.stderr)
        return 2
    summary = {k: report[k] for k in ("tasks", "format", "moe_layout", "params_before", "params_after",
                                      "decoder_experts_kept_fraction")}
    print(json.dumps(summary))
    return 0


def cli_main():
    # force: importing fairseq already set the root logger to DEBUG (its wav2vec2_classification
    # module calls basicConfig(level=DEBUG)), which would print every library's debug lines.
    logging.basicConfig(level=logging.WARNING, force=True)
    sys.exit(main())


if __name__ == "__main__":
    cli_main()
