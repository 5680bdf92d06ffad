"""Forward+backward time of our MoE layer vs fairscale's MOELayer(Top2Gate) vs a dense FFN.

    python bench/moe_layer.py --embed-dim 512 --ffn-dim 2048 --experts 32 --tokens 1024,4096,16384,65536

Same config for all: d_model D, expert width F, E experts, top-2, ReLU,
capacity factor 1.0 (fairscale's Top2Gate hard-codes capacity 2S/E, so ours is
set to match), training mode (capacity applies), no dropout. The dense
baseline is one FFN of width 2F: the same active FLOPs per token as a top-2
MoE. ``ours-unbind`` is our layer with the experts run on ``unbind`` views
(see ``unbind_expert_fn``), a candidate fix for the per-expert indexing backward.

Timed: one call of forward + ``sum().backward()``, by ``torch.utils.benchmark.Timer``
(``benchlib.torch_timed``: warm-up, then blocks of calls until their IQR is under 10% of
the median, at least 4 blocks, or ``--max-run-time`` seconds per point). Row fields:
``{model}_ms`` median ms per call, ``{model}_iqr_ms`` interquartile range of the blocks
(0: one block, the time budget ran out first), ``{model}_runs`` timed calls,
``ours_vs_{model}`` = ``{model}_ms / ours_ms``. fairscale's MOELayer needs a process group even on one
process: a 1-process gloo group on a temporary FileStore. fairscale dispatches
with a dense (S, E, capacity) one-hot einsum, O(S^2) memory and time in the
token count S, so it is skipped above ``--fairscale-max-tokens``.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402


def init_single_process_group(tmp_dir):
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp_dir, 'pg')}", rank=0, world_size=1)


def ours(args):
    from fairseq_taskmoe.moe.layer import MoELayer

    return MoELayer(args.embed_dim, args.ffn_dim, args.experts, "token", 2, F.relu, capacity_factor=1.0,
                    second_policy="all", gate_fp32=True)


def unbind_expert_fn(experts):
    """Our experts run on ``unbind`` views of the stacked weights (a candidate fix, bench only).

    ``StackedExperts.expert_forward`` indexes ``fc1_weight[e]`` per expert; each
    index's backward materialises a full (E, F, D) zero gradient, so backward
    costs O(E^2 F D). ``unbind`` once per call has one stacking backward.
    Plugged in through ``MoELayer.expert_fn`` (the expert-parallel hook).
    """
    def run(x_sorted, counts):
        w1, b1, w2, b2 = (p.unbind(0) for p in (experts.fc1_weight, experts.fc1_bias,
                                                experts.fc2_weight, experts.fc2_bias))
        outs = [F.linear(experts.activation_fn(F.linear(chunk, w1[e], b1[e])), w2[e], b2[e])
                if chunk.numel() else chunk for e, chunk in enumerate(torch.split(x_sorted, counts))]
        return torch.cat(outs, 0)
    return run


def ours_unbind(args):
    layer = ours(args)
    layer.expert_fn = unbind_expert_fn(layer.experts)
    return layer


def fairscale_layer(args):
    from fairscale.nn.moe import MOELayer, Top2Gate

    experts = nn.ModuleList(nn.Sequential(nn.Linear(args.embed_dim, args.ffn_dim), nn.ReLU(),
                                          nn.Linear(args.ffn_dim, args.embed_dim)) for _ in range(args.experts))
    return MOELayer(Top2Gate(args.embed_dim, args.experts), experts)


def dense(args):
    return nn.Sequential(nn.Linear(args.embed_dim, 2 * args.ffn_dim), nn.ReLU(),
                         nn.Linear(2 * args.ffn_dim, args.embed_dim))


def step_fn(name, layer, x):
    """One forward + backward; the aux loss joins the loss as in training."""
    def run():
        layer.zero_grad(set_to_none=True)
        xx = x.detach().requires_grad_()
        if name.startswith("ours"):
            y, stats = layer(xx, None)
            loss = y.float().sum() + stats.aux_loss
        elif name == "fairscale":
            y = layer(xx)
            loss = y.float().sum() + layer.l_aux
        else:
            loss = layer(xx).float().sum()
        loss.backward()
    return run


def bf16_supported() -> bool:
    try:
        a = torch.randn(8, 8, dtype=torch.bfloat16)
        return bool(torch.isfinite((a @ a).float()).all())
    except RuntimeError:
        return False


def sweep(args):
    rows = []
    builders = {"ours": ours, "ours-unbind": ours_unbind, "fairscale": fairscale_layer, "dense-2F": dense}
    for dtype_name in args.dtypes:
        if dtype_name == "bf16" and not bf16_supported():
            print("bf16 not supported on this CPU: skipped")
            continue
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        torch.manual_seed(0)
        layers = {n: b(args).to(dtype).train() for n, b in builders.items()}
        for tokens in args.tokens:
            if tokens > args.max_tokens:
                break
            # (L, B, D) time-major as fairseq layers see it; 32 tokens per sentence.
            x = torch.randn(32, max(1, tokens // 32), args.embed_dim, dtype=dtype)
            row = {"dtype": dtype_name, "tokens": x.shape[0] * x.shape[1]}
            for name, layer in layers.items():
                if name == "fairscale" and tokens > args.fairscale_max_tokens:
                    row[f"{name}_ms"] = None
                    continue
                try:
                    t = benchlib.torch_timed(step_fn(name, layer, x), max_run_time=args.max_run_time)
                    row[f"{name}_ms"], row[f"{name}_iqr_ms"] = 1000 * t["median_s"], 1000 * t["iqr_s"]
                    row[f"{name}_runs"] = t["runs"]
                except RuntimeError as err:  # e.g. a dtype fairscale's einsum dispatch refuses
                    print(f"  {name} {dtype_name} {tokens}: {str(err)[:100]}")
                    row[f"{name}_ms"], row[f"{name}_error"] = None, str(err)[:200]
            for other in ("ours-unbind", "fairscale", "dense-2F"):
                if row.get(f"{other}_ms") and row.get("ours_ms"):
                    row[f"ours_vs_{other}"] = row[f"{other}_ms"] / row["ours_ms"]
            print(f"  {row}", flush=True)
            rows.append(row)
    return rows


def ints(text):
    return [int(x) for x in str(text).split(",") if x]


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--embed-dim", type=int, default=512)
    p.add_argument("--ffn-dim", type=int, default=2048)
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--tokens", type=ints, default=[1024, 4096, 16384, 65536])
    p.add_argument("--max-tokens", type=int, default=65536, help="cap on --tokens (CPU)")
    p.add_argument("--fairscale-max-tokens", type=int, default=8192,
                   help="skip fairscale above this (its dispatch mask is S x E x 2S/E)")
    p.add_argument("--dtypes", type=lambda s: [d for d in s.split(",") if d], default=["fp32", "bf16"])
    p.add_argument("--max-run-time", type=float, default=10.0,
                   help="seconds of timed calls per model and point at most (fewer when the IQR settles)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--out", default=str(benchlib.REPO / "bench/results/moe_layer.json"))
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    bad = [d for d in args.dtypes if d not in ("fp32", "bf16")]
    if bad:
        raise ValueError(f"--dtypes takes fp32,bf16; got {bad}")
    if args.experts < 2:
        raise ValueError(f"--experts must be >= 2 (top-2), got {args.experts}")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="moe_bench_") as tmp:
        init_single_process_group(tmp)
        rows = sweep(args)
    result = {"bench": "moe_layer", "env": benchlib.environment(), "config": vars(args),
              "bf16_supported": bf16_supported(), "rows": rows}
    print(benchlib.table(rows, ["dtype", "tokens", "ours_ms", "ours-unbind_ms", "fairscale_ms", "dense-2F_ms",
                                "ours_vs_fairscale", "ours_vs_dense-2F"]))
    print("ours_vs_X = X time / our time (> 1: ours is faster)")
    benchlib.write_json(result, args.out)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
