"""Decoding throughput (target tokens/s) against batch size, dense vs token-MoE vs task-MoE.

    python bench/decode_throughput.py --data data/loc8 --experts 32 --batch-sizes 1,4,16,64

Decoding is fairseq-generate's: ``SequenceGenerator`` in-process, greedy (beam 1)
and beam 4, on random source batches. Weights are random (throughput does not
depend on them); to give every model the same work, EOS is banned until
``--tgt-len`` and forced there, so each hypothesis has exactly ``--tgt-len + 1``
tokens. Models share d_model, layers and heads; MoE layers are every other
layer with top-2 routing:

- dense:            transformer_taskmoe --moe-freq 0 (FFN width F everywhere)
- dense-active:     dense with the extracted model's FFN widths (2F in the former
                    MoE layers): a dense model with the task-MoE's active size
- token-moe:        token routing in encoder and decoder, E experts
- task-moe:         task routing (by target language) in encoder and decoder, E experts
- task-moe-plugin:  task-moe extracted for en-de (fairseq-taskmoe-extract, plugin format)
- task-moe-stock:   the same, stock fairseq transformer format (every FFN padded to 2F)

Batches grow until ``--max-batch``, an out-of-memory error, or one call taking
longer than ``--budget`` seconds. Prints a table, writes JSON and a PNG.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

MODELS = ("dense", "dense-active", "token-moe", "task-moe", "task-moe-plugin", "task-moe-stock")


def model_flags(args, name, layout=None):
    dims = ["--arch", "transformer_taskmoe", "--encoder-embed-dim", args.embed_dim, "--decoder-embed-dim",
            args.embed_dim, "--encoder-ffn-embed-dim", args.ffn_dim, "--decoder-ffn-embed-dim", args.ffn_dim,
            "--encoder-layers", args.layers, "--decoder-layers", args.layers, "--encoder-attention-heads",
            args.heads, "--decoder-attention-heads", args.heads, "--share-all-embeddings",
            "--moe-expert-count", args.experts, "--moe-top-k", "2", "--moe-freq", "2"]
    if name == "dense":
        return dims + ["--moe-freq", "0"]
    if name == "dense-active":
        return dims + ["--moe-encoder-routing", "task", "--moe-decoder-routing", "task", "--moe-layout", layout]
    routing = {"token-moe": "token", "task-moe": "task"}[name]
    return dims + ["--moe-encoder-routing", routing, "--moe-decoder-routing", routing]


def build_models(args, work):
    """{name: (model, uses_task_ids)} plus parameter counts."""
    from fairseq_taskmoe.extract import extract

    models = {}
    for name in ("dense", "token-moe", "task-moe"):
        model, task, margs = benchlib.build(args.data, model_flags(args, name), args.lang_pairs)
        models[name] = (model, name != "dense", task)
        if name == "task-moe":
            ckpt = benchlib.save_like_training(model, margs, Path(work) / "task-moe.pt")
    report = None
    for fmt in ("plugin", "stock"):
        out = Path(work) / fmt
        report = extract(str(ckpt), [args.pair], str(out), fmt=fmt, force=True, data_dir=str(args.data))
        if fmt == "plugin":
            layout = json.dumps(report["moe_layout"])
        model, task = benchlib.load(out / "checkpoint.pt", args.data, args.pair if fmt == "plugin" else None)
        models[f"task-moe-{fmt}"] = (model, fmt == "plugin", task)
    model, task, _ = benchlib.build(args.data, model_flags(args, "dense-active", layout), args.lang_pairs)
    models["dense-active"] = (model, True, task)
    return {n: models[n] for n in MODELS if n in models}, report


def decode_once(model, uses_ids, task, batch, beam, args):
    from fairseq.sequence_generator import SequenceGenerator

    src, tgt = args.pair.split("-")
    tgt_dict = task.target_dictionary
    gen = SequenceGenerator([model], tgt_dict, beam_size=beam, max_len_a=0, max_len_b=args.tgt_len,
                            min_len=args.tgt_len)
    g = torch.Generator().manual_seed(batch)
    nspecial = tgt_dict.nspecial
    src_tokens = torch.randint(nspecial, len(tgt_dict) - 64, (batch, args.src_len), generator=g)
    src_tokens[:, -1] = tgt_dict.eos()
    net_input = {"src_tokens": src_tokens, "src_lengths": torch.full((batch,), args.src_len)}
    if uses_ids:
        net_input["task_ids"] = torch.full((batch,), task.task_id(src, tgt), dtype=torch.long)
    bos = tgt_dict.index(f"__{tgt}__")

    def run():
        with torch.no_grad():
            hypos = gen.generate([model], {"net_input": net_input}, bos_token=bos)
        return sum(len(h[0]["tokens"]) for h in hypos)

    tokens = run()  # warm-up, and the token count
    seconds = benchlib.timed(run, min_repeats=args.repeats)
    return tokens, seconds


def sweep(models, args):
    """Models interleaved at each batch size, so load drift on a shared machine hits all alike."""
    rows = []
    for beam in args.beams:
        active = dict(models)
        for batch in [b for b in args.batch_sizes if b <= args.max_batch]:
            for name, (model, uses_ids, task) in list(active.items()):
                try:
                    tokens, secs = decode_once(model, uses_ids, task, batch, beam, args)
                except (RuntimeError, MemoryError) as err:  # OOM ends this model's sweep
                    print(f"  {name} beam {beam} batch {batch}: stopped ({str(err)[:80]})")
                    del active[name]
                    continue
                rows.append({"model": name, "beam": beam, "batch": batch, "seconds": secs,
                             "target_tokens": tokens, "tokens_per_s": tokens / secs})
                print(f"  {name:>16} beam {beam} batch {batch:>4}: {tokens / secs:9.1f} tok/s", flush=True)
                if secs > args.budget:
                    del active[name]
    return rows


def peaks(rows):
    out = {}
    for r in rows:
        key = f"{r['model']}@beam{r['beam']}"
        if r["tokens_per_s"] > out.get(key, {}).get("tokens_per_s", -1):
            out[key] = {"tokens_per_s": r["tokens_per_s"], "batch": r["batch"]}
    return out


RATIOS = [("task-moe", "token-moe"), ("task-moe-plugin", "token-moe"), ("task-moe-plugin", "dense-active"),
          ("task-moe-stock", "dense-active"), ("task-moe", "dense-active"), ("token-moe", "dense")]


def ratios(peak, beams):
    out = {}
    for beam in beams:
        for a, b in RATIOS:
            pa, pb = peak.get(f"{a}@beam{beam}"), peak.get(f"{b}@beam{beam}")
            if pa and pb:
                out[f"{a}/{b}@beam{beam}"] = pa["tokens_per_s"] / pb["tokens_per_s"]
    return out


def plot(rows, beams, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(beams), figsize=(5.5 * len(beams), 4), squeeze=False)
    for ax, beam in zip(axes[0], beams):
        for name in MODELS:
            pts = [(r["batch"], r["tokens_per_s"]) for r in rows if r["model"] == name and r["beam"] == beam]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (sentences)")
        ax.set_ylabel("target tokens / s")
        ax.set_title("greedy" if beam == 1 else f"beam {beam}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def ints(text):
    return [int(x) for x in str(text).split(",") if x]


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(benchlib.REPO / "data/loc8"), help="binarized data dir (for dictionaries)")
    p.add_argument("--lang-pairs", default=None, help="default: the data dir's lang_pairs.txt")
    p.add_argument("--pair", default="en-de", help="the pair decoded (and extracted)")
    p.add_argument("--embed-dim", type=int, default=256)
    p.add_argument("--ffn-dim", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4, help="encoder and decoder layers each")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--experts", type=int, default=32, help="E (paper: 32 and 128)")
    p.add_argument("--src-len", type=int, default=24)
    p.add_argument("--tgt-len", type=int, default=24)
    p.add_argument("--beams", type=ints, default=[1, 4], help="comma-separated beam sizes (1 = greedy)")
    p.add_argument("--batch-sizes", type=ints, default=[1, 4, 16, 64, 256])
    p.add_argument("--max-batch", type=int, default=256, help="largest batch tried (CPU cap)")
    p.add_argument("--budget", type=float, default=30.0, help="stop growing the batch once one call takes longer")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per point (median)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--out", default=str(benchlib.REPO / "bench/results/decode_throughput.json"))
    p.add_argument("--plot", default=str(benchlib.REPO / "bench/figures/decode_throughput.png"))
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.experts < 2:
        raise ValueError(f"--experts must be >= 2 (top-2 routing), got {args.experts}")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="decode_bench_") as work:
        models, report = build_models(args, work)
    params = {n: benchlib.count_params(m) for n, (m, _, _) in models.items()}
    rows = sweep(models, args)
    peak = peaks(rows)
    result = {"bench": "decode_throughput", "env": benchlib.environment(),
              "config": {k: v for k, v in vars(args).items()}, "random_init_weights": True,
              "params": params, "stock_overhead": report.get("stock_overhead"),
              "rows": rows, "peak": peak, "ratios": ratios(peak, args.beams), "plot": args.plot}
    print(benchlib.table(rows, ["model", "beam", "batch", "seconds", "tokens_per_s"]))
    print(benchlib.table([{"ratio": k, "value": v} for k, v in result["ratios"].items()], ["ratio", "value"]))
    plot(rows, args.beams, args.plot)
    benchlib.write_json(result, args.out)
    print(f"wrote {args.out} and {args.plot}")
    return result


if __name__ == "__main__":
    main()
