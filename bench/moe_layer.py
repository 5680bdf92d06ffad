"""Forward+backward time of our MoE layer (per-expert loop and grouped GEMM) vs fairscale's
MOELayer(Top2Gate) vs a dense FFN.

    python bench/moe_layer.py --embed-dim 512 --ffn-dim 2048 --experts 32,128 --tokens 4096,16384,65536

Same config for all: d_model D, expert width F, E experts, top-2, ReLU,
capacity factor 1.0 (fairscale's Top2Gate hard-codes capacity 2S/E, so ours is
set to match), training mode (capacity applies), no dropout. The dense
baseline is one FFN of width 2F: the same active FLOPs per token as a top-2
MoE. ``ours-loop`` and ``ours-grouped`` are our layer with ``--moe-expert-impl
loop`` / ``grouped`` (moe/experts.py); ``ours`` is the path ``auto`` takes on
this device and dtype (``ours_path``; its time is that row's, not a third run).
``bf16`` casts every layer's params and input to bf16 (what --memory-efficient-bf16
and --bf16 run; under --amp autocast adds a cast of the weights per call).

Timed: one call of forward + ``sum().backward()``. ``--clock wall`` (default): by
``torch.utils.benchmark.Timer`` (``benchlib.torch_timed``: warm-up, then blocks of calls until
their IQR is under 10% of the median, at least 4 blocks, or ``--max-run-time`` seconds per
point). ``--clock cpu`` (CPU, 1 thread, a machine shared with other jobs): the CPU time of the
calling thread (``time.thread_time``; with one torch thread the kernels run on it), one warm-up
call per model, then ``--repeats`` rounds that call every model once in turn, so a change of
load hits all models alike; the quartiles are over the rounds. Row fields:
``{model}_ms`` median ms per call, ``{model}_iqr_ms`` interquartile range of the blocks
(0: one block, the time budget ran out first), ``{model}_runs`` timed calls,
``ours_vs_{model}`` = ``{model}_ms / ours_ms`` (> 1: ours is faster),
``grouped_vs_loop`` = ``ours-loop_ms / ours-grouped_ms``. fairscale's MOELayer needs a
process group even on one process: a 1-process gloo group on a temporary FileStore.
fairscale dispatches with a dense (S, E, capacity) one-hot einsum, O(S^2) memory and
time in the token count S, so it is skipped above ``--fairscale-max-tokens``.
"""

import argparse
import os
import sys
import tempfile
import time
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


def ours(impl):
    def build(args):
        from fairseq_taskmoe.moe.layer import MoELayer, MoELayerConfig

        return MoELayer(MoELayerConfig(args.embed_dim, args.ffn_dim, args.num_experts, "token", 2, F.relu,
                                       capacity_factor=1.0, second_policy="all", gate_fp32=True,
                                       expert_impl=impl))
    return build


def auto_path(args, dtype) -> str:
    """The path ``--moe-expert-impl auto`` takes for these dims on this device and dtype."""
    from fairseq_taskmoe.moe.experts import choose_expert_impl

    return choose_expert_impl("auto", torch.device(args.device), dtype, args.embed_dim, args.ffn_dim)[0]


def fairscale_layer(args):
    from fairscale.nn.moe import MOELayer, Top2Gate

    experts = nn.ModuleList(nn.Sequential(nn.Linear(args.embed_dim, args.ffn_dim), nn.ReLU(),
                                          nn.Linear(args.ffn_dim, args.embed_dim))
                            for _ in range(args.num_experts))
    return MOELayer(Top2Gate(args.embed_dim, args.num_experts), experts)


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


def cpu_timed(fns, repeats):
    """{name: {median_s, iqr_s, runs}}: thread CPU time per call over interleaved rounds."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.thread_time()
            fn()
            times[name].append(time.thread_time() - t0)
    out = {}
    for name, ts in times.items():
        q = torch.tensor(ts, dtype=torch.float64).quantile(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
        out[name] = {"median_s": float(q[1]), "iqr_s": float(q[2] - q[0]), "runs": len(ts)}
    return out


def time_point(args, layers, x, row):
    """Time every model of ``layers`` on x into ``row`` (``{name}_ms``, ``_iqr_ms``, ``_runs``)."""
    fns = {}
    for name, layer in layers.items():
        if name == "fairscale" and x.shape[0] * x.shape[1] > args.fairscale_max_tokens:
            row[f"{name}_ms"] = None
            continue
        fns[name] = step_fn(name, layer, x)
    if args.clock == "cpu":
        timings = cpu_timed(fns, args.repeats)
    else:
        timings = {}
        for name, fn in fns.items():
            try:
                timings[name] = benchlib.torch_timed(fn, max_run_time=args.max_run_time)
            except RuntimeError as err:  # e.g. a dtype fairscale's einsum dispatch refuses
                print(f"  {name} {row['dtype']} {row['tokens']}: {str(err)[:100]}")
                row[f"{name}_ms"], row[f"{name}_error"] = None, str(err)[:200]
    for name, t in timings.items():
        row[f"{name}_ms"], row[f"{name}_iqr_ms"] = 1000 * t["median_s"], 1000 * t["iqr_s"]
        row[f"{name}_runs"] = t["runs"]




def sweep(args):
    rows = []
    builders = {"ours-loop": ours("loop"), "ours-grouped": ours("grouped"), "fairscale": fairscale_layer,
                "dense-2F": dense}
    for dtype_name in args.dtypes:
        if dtype_name == "bf16" and args.device == "cpu" and not bf16_supported():
            print("bf16 not supported on this CPU: skipped")
            continue
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        for num_experts in args.experts:
            cfg = argparse.Namespace(**{**vars(args), "num_experts": num_experts})
            torch.manual_seed(0)
            layers = {n: b(cfg).to(device=args.device, dtype=dtype).train() for n, b in builders.items()}
            path = auto_path(cfg, dtype)
            for tokens in args.tokens:
                if tokens > args.max_tokens:
                    break
                # (L, B, D) time-major as fairseq layers see it; 32 tokens per sentence.
                x = torch.randn(32, max(1, tokens // 32), args.embed_dim, dtype=dtype, device=args.device)
                row = {"dtype": dtype_name, "experts": num_experts, "tokens": x.shape[0] * x.shape[1],
                       "ours_path": path}
                time_point(args, layers, x, row)
                row["ours_ms"] = row.get(f"ours-{path}_ms")
                if row.get("ours-loop_ms") and row.get("ours-grouped_ms"):
                    row["grouped_vs_loop"] = row["ours-loop_ms"] / row["ours-grouped_ms"]
                for other in ("fairscale", "dense-2F"):
                    if row.get(f"{other}_ms") and row.get("ours_ms"):
                        row[f"ours_vs_{other}"] = row[f"{other}_ms"] / row["ours_ms"]
                print(f"  {row}", flush=True)
                rows.append(row)
            del layers
    return rows


def ints(text):
    return [int(x) for x in str(text).split(",") if x]


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--embed-dim", type=int, default=512)
    p.add_argument("--ffn-dim", type=int, default=2048)
    p.add_argument("--experts", type=ints, default=[32, 128], help="E, comma-separated")
    p.add_argument("--tokens", type=ints, default=[1024, 4096, 16384, 65536])
    p.add_argument("--max-tokens", type=int, default=65536, help="cap on --tokens (CPU)")
    p.add_argument("--fairscale-max-tokens", type=int, default=8192,
                   help="skip fairscale above this (its dispatch mask is S x E x 2S/E)")
    p.add_argument("--dtypes", type=lambda s: [d for d in s.split(",") if d], default=["fp32", "bf16"])
    p.add_argument("--max-run-time", type=float, default=10.0,
                   help="--clock wall: seconds of timed calls per model and point at most (fewer when "
                   "the IQR settles)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: torch.utils.benchmark.Timer; cpu: thread CPU time over interleaved rounds "
                   "(1 thread on a shared CPU machine)")
    p.add_argument("--repeats", type=int, default=5, help="--clock cpu: timed rounds per point")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(benchlib.REPO / "bench/results/moe_layer.json"))
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    bad = [d for d in args.dtypes if d not in ("fp32", "bf16")]
    if bad:
        raise ValueError(f"--dtypes takes fp32,bf16; got {bad}")
    if not args.experts or min(args.experts) < 2:
        raise ValueError(f"--experts must be >= 2 (top-2), got {args.experts}")
    if args.clock == "cpu" and (args.device != "cpu" or args.threads != 1 or args.repeats < 1):
        raise ValueError("--clock cpu times the calling thread: it needs --device cpu, --threads 1 and "
                         f"--repeats >= 1 (got {args.device}, {args.threads}, {args.repeats})")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="moe_bench_") as tmp:
        init_single_process_group(tmp)
        rows = sweep(args)
    result = {"bench": "moe_layer", "env": benchlib.environment(), "config": vars(args),
              "bf16_supported": bf16_supported(), "rows": rows}
    print(benchlib.table(rows, ["dtype", "experts", "tokens", "ours_path", "ours-loop_ms", "ours-grouped_ms",
                                "fairscale_ms", "dense-2F_ms", "grouped_vs_loop", "ours_vs_fairscale",
                                "ours_vs_dense-2F"]))
    print("ours = the path --moe-expert-impl auto takes; X_vs_Y = Y time / X time (> 1: X is faster)")
    benchlib.write_json(result, args.out)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
