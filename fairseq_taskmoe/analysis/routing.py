"""``fairseq-taskmoe-routing``: expert usage per language in every MoE layer.

    fairseq-taskmoe-routing CKPT --data data/loc8 [--split valid] [--pairs en-de,de-en]
        [--group-by target_lang] [--max-sentences 500] --json usage.json --png usage.png

Decodes each pair's split with teacher forcing (one pair at a time: fairseq's
multilingual collater stamps a mixed batch with the first pair's language ids),
sums each MoE layer's ``expert_counts`` per language and reports, per layer:

- ``top_k_share``: mean over languages of the share of a language's assignments
  that go to its k most used experts; k/E when usage is uniform, 1.0 when every
  language always uses the same k experts.
- ``nmi``: mutual information between language and expert, over all
  assignments, divided by the entropy of the language; 0 when all languages
  route alike, 1 when the expert determines the language.

The paper (Kudugunta et al. 2021) found decoder experts specialise by target
language while encoder experts do not. Legend: G languages (groups), E experts.
"""

import argparse
import errno
import os
from typing import Dict, List

import torch

from fairseq_taskmoe.analysis.stats import check_data_dir, check_pairs, expert_counts, moe_layer_ids, setup_pair
from fairseq_taskmoe.checkpoints import (
    atomic_file, atomic_write_json, check_writable, console_main, lang_pairs, load_source, model_args, run, task_args,
)
from fairseq_taskmoe.checkpoints.cli import HelpFormatter, add_verbose, split_list
from fairseq_taskmoe.checkpoints.validate import check_moe_state
from fairseq_taskmoe.tasks.translation_multi_taskmoe import task_key

PROG = "fairseq-taskmoe-routing"

GROUP_BY = ("target_lang", "source_lang", "lang_pair")


def shares(counts: torch.Tensor) -> torch.Tensor:
    """(G, E) assignment counts -> (G, E) per-language shares (rows sum to 1; empty rows 0)."""
    total = counts.sum(dim=1, keepdim=True)
    return torch.where(total > 0, counts / total.clamp_min(1e-12), torch.zeros_like(counts))


def top_k_share(counts: torch.Tensor, k: int) -> float:
    """Mean over languages with data of the share held by their k most used experts."""
    s = shares(counts)[counts.sum(dim=1) > 0]  # (G', E)
    if s.numel() == 0:
        return float("nan")
    return s.topk(min(k, s.size(1)), dim=1).values.sum(dim=1).mean().item()


def normalized_mutual_information(counts: torch.Tensor) -> float:
    """I(language; expert) / H(language) from (G, E) joint counts; 0.0 with one language."""
    p = counts.double() / counts.sum().clamp_min(1e-12)  # (G, E)
    pg, pe = p.sum(dim=1, keepdim=True), p.sum(dim=0, keepdim=True)
    nz = p > 0
    mi = (p[nz] * (p[nz] / (pg * pe).expand_as(p)[nz]).log()).sum().item()
    h_lang = -(pg[pg > 0] * pg[pg > 0].log()).sum().item()
    return mi / h_lang if h_lang > 0 else 0.0


def usage(state: dict, model_ns, task_ns, data: str, pairs: List[str], split="valid",
          group_by="target_lang", max_sentences=0, ckpt: str = "", log=print) -> dict:
    """The JSON report: per MoE layer, (G, E) counts and shares, top-k share and NMI.

    ``state`` is a checkpoint loaded by ``fairseq_taskmoe.checkpoints.load_source``
    and checked by ``check_moe_state``; the model is built from it once.
    """
    if group_by not in GROUP_BY:
        raise ValueError(f"--group-by must be one of {', '.join(GROUP_BY)}; got {group_by!r}")
    groups: Dict[str, Dict[str, Dict[int, torch.Tensor]]] = {}
    model, sentences = None, {}
    for pair in pairs:
        task, model = setup_pair(state, model_ns, task_ns, data, pair, model)
        sums, seen = expert_counts(task, model, split, "--split", max_sentences)
        sentences[pair] = seen
        key = task_key(group_by, *pair.split("-"))
        for side, counts in sums.items():
            cur = groups.setdefault(key, {}).setdefault(side, {})
            for layer, c in counts.items():
                cur[layer] = cur.get(layer, 0) + c
        log(f"routing: {pair} {seen} sentences")
    names = sorted(groups)
    cfg = model.encoder.moe_cfg
    layers = []
    for side in ("encoder", "decoder"):
        for layer_id in moe_layer_ids(model, side):
            counts = torch.stack([groups[g][side][layer_id] for g in names])  # (G, E)
            layers.append({
                "side": side, "layer": layer_id, "routing": cfg.routing(side),
                "experts": counts.size(1), "counts": counts.tolist(), "shares": shares(counts).tolist(),
                "top_k_share": top_k_share(counts, cfg.top_k),
                "uniform_top_k_share": min(1.0, cfg.top_k / counts.size(1)),
                "nmi": normalized_mutual_information(counts)})
    summary = {side: {m: sum(l[m] for l in layers if l["side"] == side) / max(1, sum(
        l["side"] == side for l in layers)) for m in ("top_k_share", "nmi")} for side in ("encoder", "decoder")}
    return {"checkpoint": os.path.abspath(ckpt) if ckpt else "", "split": split, "group_by": group_by,
            "groups": names, "pairs": pairs, "sentences": sentences, "top_k": cfg.top_k,
            "layers": layers, "summary": summary}


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ValueError("--png needs matplotlib, which is not installed: pip install matplotlib "
                         "(or pip install 'fairseq-taskmoe[plot]'), or leave --png out") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(report: dict, path: str):
    """One panel per MoE layer: languages x experts, colour = share of the language's assignments."""
    plt = _pyplot()
    layers = report["layers"]
    if not layers:
        raise ValueError("the model has no MoE layers: nothing to plot")
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers) + 1, 0.35 * len(report["groups"]) + 1.6),
                             squeeze=False)
    for ax, layer in zip(axes[0], layers):
        im = ax.imshow(layer["shares"], aspect="auto", cmap="viridis", vmin=0, vmax=0.5)
        ax.set_title(f"{layer['side']} layer {layer['layer']} ({layer['routing']})\n"
                     f"NMI {layer['nmi']:.2f}", fontsize=8)
        ax.set_yticks(range(len(report["groups"])), report["groups"], fontsize=7)
        ax.set_xlabel("expert", fontsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="share of assignments")
    try:
        with atomic_file(path, "wb") as f:
            fig.savefig(f, format="png", dpi=90, bbox_inches="tight")
    finally:
        plt.close(fig)


def print_table(report: dict):
    print(f"{'side':<8} {'layer':>5} {'routing':<16} {'top-k share':>11} {'(uniform)':>9} {'NMI':>6}")
    for l in report["layers"]:
        print(f"{l['side']:<8} {l['layer']:>5} {l['routing']:<16} {l['top_k_share']:>11.3f} "
              f"{l['uniform_top_k_share']:>9.3f} {l['nmi']:>6.3f}")
    for side, s in report["summary"].items():
        print(f"specialisation {side}: top-k share {s['top_k_share']:.3f}, NMI {s['nmi']:.3f}")


def get_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="a transformer_taskmoe checkpoint (or the shared file of a "
                                      "sharded expert-parallel save)")
    p.add_argument("--data", required=True, help="binarized data dir")
    p.add_argument("--split", default="valid", help="data split whose tokens are routed")
    p.add_argument("--pairs", nargs="+", default=[], metavar="SRC-TGT",
                   help="pairs to route, commas or spaces (default: the model's --lang-pairs)")
    p.add_argument("--group-by", default="target_lang", choices=GROUP_BY,
                   help="rows of the table: one per target language, source language or pair")
    p.add_argument("--max-sentences", type=int, default=0, help="per pair, about (0: the whole split)")
    p.add_argument("--json", required=True, help="output JSON")
    p.add_argument("--png", default=None, help="heatmap PNG (languages x experts, one panel per layer; "
                   "needs matplotlib)")
    add_verbose(p)
    return p


def check_output(path: str, flag: str):
    """Fail before the (slow) analysis if ``path`` cannot be written."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{flag} {path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    check_writable(path)


def main(argv=None) -> dict:
    args = get_parser().parse_args(argv)
    if args.max_sentences < 0:
        raise ValueError(f"--max-sentences must be >= 0, got {args.max_sentences}")
    check_data_dir(args.data, "--data")
    for flag, path in (("--json", args.json), ("--png", args.png)):
        if path:
            check_output(path, flag)
    if args.png:
        _pyplot()
    state = load_source(args.checkpoint)
    model_ns = model_args(state, args.checkpoint)
    task_ns = task_args(state) or model_ns
    check_moe_state(state, model_ns, args.checkpoint)
    known = lang_pairs(task_ns)
    pairs = check_pairs(split_list(args.pairs) or known, known, "--pairs")
    report = usage(state, model_ns, task_ns, args.data, pairs, args.split, args.group_by,
                   args.max_sentences, ckpt=args.checkpoint)
    print_table(report)
    atomic_write_json(args.json, report, indent=1)
    if args.png:
        heatmap(report, args.png)
    return report


def cli_main():
    console_main(PROG, main)


def run_main(argv=None) -> int:
    """``main`` behind the console script's error handling (what tests call in-process)."""
    return run(PROG, main, argv)


if __name__ == "__main__":
    cli_main()
