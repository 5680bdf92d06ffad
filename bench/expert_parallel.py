"""Expert parallelism on CPU (gloo): step time and bytes sent per MoE layer call.

    python bench/expert_parallel.py --tokens 2048 --embed-dim 256 --ffn-dim 512 --experts 8 \\
        [--train-updates 30 --data DIR]

One MoE layer (top-2, dropless), forward + backward, for token and task
routing, at W = 1 (one process, all experts local) and W = 2 (two processes,
gloo, E/2 experts each), with the split-size all-to-all of
``fairseq_taskmoe.parallel`` and, for comparison, the padded all-to-all it
replaced (every rank packs an (E, C, D) buffer, C = the largest count of any
expert on any rank; kept here only, as ``padded_run``). Each rank routes
``--tokens`` tokens of ``--tasks`` tasks (task routing sends one task's tokens
to its two experts). Bytes sent = rows handed to the all-to-all x D x 4, both
directions, summed over ranks, per layer call. Time = median of ``--repeats``
steps, the max over ranks.

With ``--train-updates N`` it also times fairseq-train (W = 1) on the corpus
in ``--data`` (``benchlib.toy_corpus``, en<->de/fr/es, built there if --data
holds no binarized corpus): the task-MoE tiny model against a dense model
of the same active parameters (FFN width 2F, the two experts a token uses) and
reports words/s from fairseq's ``wps``.

CPU numbers say what the communication volume is and that the paths agree;
they are not GPU/NCCL timings. Writes bench/results/expert_parallel.json.
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def padded_run(x_sorted, counts_list, experts, group=None):
    """The old fixed-buffer all-to-all (bench only): (E*C, D) per rank, C = max count."""
    from fairseq_taskmoe.parallel.all_to_all import AllToAllSplit, gather_counts

    world, rank = dist.get_world_size(group), dist.get_rank(group)
    num_experts, dim = len(counts_list), x_sorted.size(1)
    n_local = num_experts // world
    counts = torch.tensor(counts_list)
    all_counts = gather_counts(counts, group)  # (W, E)
    cap = int(all_counts.max())
    if cap == 0:
        return x_sorted, 0

    def slots(c):  # flat positions of real rows in an (N, C) grid
        return (torch.arange(cap).unsqueeze(0) < c.unsqueeze(1)).reshape(-1).nonzero().squeeze(1)

    send_idx = slots(counts)
    send = x_sorted.new_zeros(num_experts * cap, dim).index_copy(0, send_idx, x_sorted)
    equal = [n_local * cap] * world
    recv = AllToAllSplit.apply(send, equal, equal, group).view(world, n_local, cap, dim)
    mine = all_counts[:, rank * n_local:(rank + 1) * n_local].t()  # (El, W)
    recv_idx = slots(mine.reshape(-1))
    x_local = recv.transpose(0, 1).reshape(-1, dim).index_select(0, recv_idx)
    y_local = experts.forward_sorted(x_local, mine.sum(1).tolist())
    out = y_local.new_zeros(n_local * world * cap, dim).index_copy(0, recv_idx, y_local)
    out = out.view(n_local, world, cap, dim).transpose(0, 1).reshape(num_experts * cap, dim)
    back = AllToAllSplit.apply(out, equal, equal, group)
    return back.index_select(0, send_idx), num_experts * cap


def make_layer(args, routing, world, rank, a2a):
    from fairseq_taskmoe.moe.layer import MoELayer
    from fairseq_taskmoe.parallel.sharding import ExpertParallelPlan

    torch.manual_seed(0)  # every rank draws all E experts and keeps its rows: the W = 1 layer's slices
    layer = MoELayer(args.embed_dim, args.ffn_dim, args.experts, routing, 2, F.relu,
                     num_tasks=args.tasks, dropless=True,
                     expert_parallel=ExpertParallelPlan(rank, world) if world > 1 else None)
    if world > 1 and a2a == "padded":
        experts = layer.experts
        layer.expert_fn = lambda x, c: padded_run(x, c, experts)
    return layer


def batch(args, rank):
    g = torch.Generator().manual_seed(100 + rank)
    length = 32
    n_sent = args.tokens // length
    x = torch.randn(length, n_sent, args.embed_dim, generator=g)  # (L, B, D)
    task_ids = torch.arange(n_sent) % args.tasks
    return x, task_ids


def measure(args, routing, world, rank, a2a):
    layer = make_layer(args, routing, world, rank, a2a)
    x, task_ids = batch(args, rank)
    x.requires_grad_(True)
    sent = []

    def step():
        y, stats = layer(x, None, task_ids)
        y.float().pow(2).mean().backward()
        sent.append(float(stats.a2a_sent) if stats.a2a_sent is not None else 0.0)

    seconds = benchlib.timed(step, min_repeats=args.repeats)
    row = torch.tensor([seconds, sent[-1]])
    if world > 1:
        dist.all_reduce(row[:1], op=dist.ReduceOp.MAX)
        dist.all_reduce(row[1:])
    # both directions (tokens out, results back), fp32
    return {"routing": routing, "world": world, "a2a": a2a if world > 1 else "-",
            "step_ms": 1000 * float(row[0]), "rows_routed_per_rank": args.tokens * 2,
            "bytes_sent_per_layer": float(row[1]) * args.embed_dim * 4 * 2}


def _worker(rank, world, port, args, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows = [measure(args, routing, world, rank, a2a)
                for routing in ("token", "task") for a2a in ("split", "padded")]
        if rank == 0:
            torch.save(rows, out)
        # without it a rank could tear down gloo while the other still had the last
        # collective in flight: "terminate called without an active exception" (SIGABRT)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def layer_rows(args):
    torch.set_num_threads(1)
    rows = [measure(args, routing, 1, 0, "-") for routing in ("token", "task")]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "w2.pt")
        mp.spawn(_worker, args=(2, free_port(), args, out), nprocs=2, join=True)
        rows += torch.load(out, weights_only=True)
    return rows


def train_flags(save_dir, max_update, extra=()):
    """fairseq-train flags of the timed run: the tiny task-MoE recipe, CPU, no checkpoints."""
    return ["--arch", "transformer_taskmoe_tiny", "--criterion", "label_smoothed_cross_entropy_moe",
            "--label-smoothing", "0.1", "--optimizer", "adam", "--lr", "0.003", "--max-tokens", "400",
            "--max-update", str(max_update), "--save-dir", save_dir, "--no-progress-bar",
            "--log-format", "simple", "--log-interval", "1", "--num-workers", "0", "--seed", "1",
            "--sampling-method", "temperature", "--sampling-temperature", "1.5", "--cpu", "--no-save", *extra]


def train_wps(args):
    """fairseq-train words/s, task-MoE vs dense with the same active params (W = 1)."""
    data = Path(args.data)
    if not (data / "dict.txt").exists() and not list(data.glob("dict.*.txt")):  # the toy corpus, built once
        data = benchlib.toy_corpus(data, langs=("de", "fr", "es"))
    models = {"task-moe": ["--moe-encoder-routing", "task", "--moe-decoder-routing", "task"],
              "dense": ["--moe-freq", "0", "--encoder-ffn-embed-dim", "256",
                        "--decoder-ffn-embed-dim", "256"]}
    rows = []
    for name, flags in models.items():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [str(Path(sys.executable).parent / "fairseq-train"), *benchlib.task_flags(data),
                   *train_flags(tmp, args.train_updates, flags)]
            log = subprocess.run(cmd, capture_output=True, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
            if log.returncode:
                raise RuntimeError(f"{name}: fairseq-train failed\n{log.stderr[-2000:]}")
            wps = [float(w) for w in re.findall(r"\| wps ([0-9.]+)", log.stdout + log.stderr)]
            # the per-interval lines after warm-up; the epoch summary repeats them
            rows.append({"model": name, "wps_median": sorted(wps[1:] or wps)[len(wps[1:] or wps) // 2],
                         "updates": args.train_updates})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048, help="tokens per rank per step")
    p.add_argument("--embed-dim", type=int, default=256)
    p.add_argument("--ffn-dim", type=int, default=512)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-updates", type=int, default=0, help="also time fairseq-train (0: skip)")
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "ep_bench_toy"),
                   help="binarized corpus for --train-updates (the toy corpus is built here if it holds none)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "expert_parallel.json"))
    args = p.parse_args(argv)
    rows = layer_rows(args)
    print(benchlib.table(rows, ["routing", "world", "a2a", "step_ms", "bytes_sent_per_layer"]))
    result = {"env": benchlib.environment(), "config": vars(args), "layer": rows}
    if args.train_updates:
        result["train"] = train_wps(args)
        dense = next(r["wps_median"] for r in result["train"] if r["model"] == "dense")
        for r in result["train"]:
            r["vs_dense"] = r["wps_median"] / dense
        print(benchlib.table(result["train"], ["model", "wps_median", "vs_dense", "updates"]))
    benchlib.write_json(result, args.out)
    print(args.out)
    return result


if __name__ == "__main__":
    main()
