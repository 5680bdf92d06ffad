"""``fairseq-taskmoe-upcycle``: a dense fairseq transformer checkpoint -> a task-MoE one.

    fairseq-taskmoe-upcycle DENSE.pt --out INIT.pt [--moe-expert-count E] [--moe-freq N]
        [--moe-encoder-routing ...] [--moe-decoder-routing ...] [--moe-task-by ...]
        [--moe-top-k 1|2] [--lang-pairs ...] [--langs ...] [--expert-noise STD]
        [--data DIR [--check-split valid] [--check-sentences 4]] [--seed 1] [--force]

Errors are one line, ``fairseq-taskmoe-upcycle: error: ...``; exit status 2 for
bad input (a failed built-in check included), 3 for a refused (unsafe)
checkpoint or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, 4 for disk full / read-only /
permission (fairseq_taskmoe/checkpoints/cli.py). Nothing is written on error.
"""

import argparse
import json
import shlex
import sys

from fairseq_taskmoe.checkpoints import console_main, run
from fairseq_taskmoe.config import ROUTING_CHOICES, TASK_BY_CHOICES

PROG = "fairseq-taskmoe-upcycle"


def _csv(text):
    return tuple(t for t in text.split(",") if t)


def get_parser():
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Sparse upcycling: write a transformer_taskmoe checkpoint whose experts are "
                    "copies of a dense fairseq transformer's FFNs, to fine-tune with fairseq-train "
                    "--finetune-from-model. See docs/UPCYCLE.md.")
    p.add_argument("checkpoint", help="dense checkpoint: --arch transformer* trained with --task "
                   "translation or translation_multi_simple_epoch, or transformer_taskmoe with --moe-freq 0")
    p.add_argument("--out", required=True, help="the upcycled checkpoint to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    routings = [str(c) for c in ROUTING_CHOICES]
    p.add_argument("--moe-expert-count", type=int, default=None, help="experts per MoE layer (default 8)")
    p.add_argument("--moe-freq", type=int, default=None,
                   help="every Nth layer (N-1, 2N-1, ...) becomes an MoE layer (default 2)")
    p.add_argument("--moe-top-k", type=int, default=None, help="1 or 2 (default 2); top-1 with task "
                   "routing extracts to exactly the dense architecture")
    p.add_argument("--moe-encoder-routing", default=None, choices=routings, help="default token")
    p.add_argument("--moe-decoder-routing", default=None, choices=routings, help="default task")
    p.add_argument("--moe-task-by", default=None, choices=[str(c) for c in TASK_BY_CHOICES],
                   help="default target_lang")
    p.add_argument("--lang-pairs", type=_csv, default=(), help="comma-separated pairs the task-MoE "
                   "is for (default: the dense model's); their languages must have language tokens")
    p.add_argument("--langs", type=_csv, default=(), help="the dense model's language list in "
                   "language-token order, when its checkpoint does not say (e.g. --lang-dict models)")
    p.add_argument("--expert-noise", type=float, default=0.0, metavar="STD",
                   help="add N(0, (STD * s)^2) to each expert's weights, s the std of that dense "
                        "tensor (relative; e.g. 0.01); breaks exactness at initialisation")
    p.add_argument("--seed", type=int, default=1, help="seed of the gate initialisation and the noise")
    p.add_argument("--data", default=None, help="binarized data dir: the built-in check decodes a few "
                   "sentences of it with both models and refuses to write if they disagree")
    p.add_argument("--check-split", default="valid", help="split for the check (default valid)")
    p.add_argument("--check-sentences", type=int, default=4, help="sentences per pair for the check")
    p.add_argument("--check-atol", type=float, default=1e-4,
                   help="largest |log-prob difference| the check accepts (default 1e-4)")
    return p


def main(argv=None) -> int:
    from fairseq_taskmoe.upcycle.api import upcycle
    from fairseq_taskmoe.upcycle.plan import UpcycleOptions

    args = get_parser().parse_args(argv)
    options = UpcycleOptions(
        expert_count=args.moe_expert_count, freq=args.moe_freq, top_k=args.moe_top_k,
        encoder_routing=args.moe_encoder_routing, decoder_routing=args.moe_decoder_routing,
        task_by=args.moe_task_by, lang_pairs=args.lang_pairs, langs=args.langs,
        expert_noise=args.expert_noise, seed=args.seed, data=args.data)
    report = upcycle(args.checkpoint, args.out, options, force=args.force,
                     check_split=args.check_split, check_sentences=args.check_sentences,
                     check_atol=args.check_atol)
    check = report["check"]
    if check is None:
        print(f"{PROG}: no --data: the built-in check was skipped", file=sys.stderr)
    else:
        print(f"{PROG}: check passed: {check['same_hypotheses']}/{check['sentences']} identical "
              f"hypotheses, max |log-prob difference| {check['max_logprob_diff']:.2e} over "
              f"{check['tokens']} tokens", file=sys.stderr)
    print(f"{PROG}: fine-tune with: fairseq-train DATA {shlex.join(report['fine_tune_flags'])} "
          f"--finetune-from-model {shlex.quote(args.out)} ...", file=sys.stderr)
    print(json.dumps({k: report[k] for k in ("out", "pairs", "moe_task_names", "top_k",
                                             "encoder_routing", "decoder_routing", "params_dense",
                                             "params_upcycled", "check", "check_after_noise")}))
    return 0


def cli_main():
    console_main(PROG, main)


def run_main(argv=None) -> int:
    """``main`` behind the console script's error handling (what tests call in-process)."""
    return run(PROG, main, argv)


if __name__ == "__main__":
    cli_main()
