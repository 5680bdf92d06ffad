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
import json
import logging
import os
import sys
from typing import Dict, List

import torch

from fairseq_taskmoe.tasks.translation_multi_taskmoe import task_key

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


def moe_layer_ids(model, side: str) -> List[int]:
    """Indices of the layers of ``side`` whose FFN is an MoE block, in forward order."""
    from fairseq_taskmoe.moe.layer import MoELayer

    layers = getattr(model, side).layers
    return [i for i, layer in enumerate(layers) if any(isinstance(m, MoELayer) for m in layer.modules())]


def pair_counts(ckpt: str, data: str, pair: str, split: str, max_sentences: int):
    """{side: [(E,) counts per MoE layer]} summed over ``pair``'s ``split``, and the model."""
    from fairseq import checkpoint_utils

    src, tgt = pair.split("-")
    overrides = {"data": data, "source_lang": src, "target_lang": tgt}
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([ckpt], arg_overrides=overrides)
    model = models[0].float().eval()
    task.load_dataset(split)
    itr = task.get_batch_iterator(dataset=task.dataset(split), max_tokens=4000,
                                  num_workers=0).next_epoch_itr(shuffle=False)
    sums, seen = {}, 0
    with torch.no_grad():
        for sample in itr:
            if max_sentences and seen >= max_sentences:
                break
            task.add_task_ids(sample)
            net = sample["net_input"]
            _, extra = model(net["src_tokens"], net["src_lengths"], net["prev_output_tokens"],
                             task_ids=net.get("task_ids"), features_only=True)
            for side, stats in extra["moe_stats"].items():
                counts = [s.expert_counts.double() for s in stats]
                sums[side] = counts if side not in sums else [a + b for a, b in zip(sums[side], counts)]
            seen += net["src_tokens"].size(0)
    return sums, model, seen


def usage(ckpt: str, data: str, pairs: List[str], split="valid", group_by="target_lang",
          max_sentences=0, log=print) -> dict:
    """The JSON report: per MoE layer, (G, E) counts and shares, top-k share and NMI."""
    if group_by not in GROUP_BY:
        raise ValueError(f"--group-by must be one of {', '.join(GROUP_BY)}; got {group_by!r}")
    groups: Dict[str, Dict[str, list]] = {}
    model, sentences = None, {}
    for pair in pairs:
        sums, model, seen = pair_counts(ckpt, data, pair, split, max_sentences)
        sentences[pair] = seen
        key = task_key(group_by, *pair.split("-"))
        for side, counts in sums.items():
            cur = groups.setdefault(key, {}).get(side)
            groups[key][side] = counts if cur is None else [a + b for a, b in zip(cur, counts)]
        log(f"routing: {pair} {seen} sentences")
    names = sorted(groups)
    cfg = model.encoder.moe_cfg
    layers = []
    for side in ("encoder", "decoder"):
        ids = moe_layer_ids(model, side)
        for j, layer_id in enumerate(ids):
            counts = torch.stack([groups[g][side][j] for g in names])  # (G, E)
            layers.append({
                "side": side, "layer": layer_id, "routing": str(getattr(cfg, f"moe_{side}_routing")),
                "experts": counts.size(1), "counts": counts.tolist(), "shares": shares(counts).tolist(),
                "top_k_share": top_k_share(counts, int(cfg.moe_top_k)),
                "uniform_top_k_share": min(1.0, int(cfg.moe_top_k) / counts.size(1)),
                "nmi": normalized_mutual_information(counts)})
    summary = {side: {m: sum(l[m] for l in layers if l["side"] == side) / max(1, sum(
        l["side"] == side for l in layers)) for m in ("top_k_share", "nmi")} for side in ("encoder", "decoder")}
    return {"checkpoint": os.path.abspath(ckpt), "split": split, "group_by": group_by, "groups": names,
            "pairs": pairs, "sentences": sentences, "top_k": int(cfg.moe_top_k), "layers": layers,
            "summary": summary}


def heatmap(report: dict, path: str):
    """One panel per MoE layer: languages x experts, colour = share of the language's assignments."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def print_table(report: dict):
    print(f"{'side':<8} {'layer':>5} {'routing':<16} {'top-k share':>11} {'(uniform)':>9} {'NMI':>6}")
    for l in report["layers"]:
        print(f"{l['side']:<8} {l['layer']:>5} {l['routing']:<16} {l['top_k_share']:>11.3f} "
              f"{l['uniform_top_k_share']:>9.3f} {l['nmi']:>6.3f}")
    for side, s in report["summary"].items():
        print(f"specialisation {side}: top-k share {s['top_k_share']:.3f}, NMI {s['nmi']:.3f}")


def get_parser():
    p = argparse.ArgumentParser(prog="fairseq-taskmoe-routing", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="binarized data dir")
    p.add_argument("--split", default="valid")
    p.add_argument("--pairs", default="", help="comma-separated pairs (default: the model's --lang-pairs)")
    p.add_argument("--group-by", default="target_lang", choices=GROUP_BY)
    p.add_argument("--max-sentences", type=int, default=0, help="per pair, about (0: the whole split)")
    p.add_argument("--json", required=True, help="output JSON")
    p.add_argument("--png", default=None, help="heatmap PNG (languages x experts, one panel per layer)")
    return p


def main(argv=None) -> dict:
    import fairseq_taskmoe  # noqa: F401  (registers the plugin, installs the safe loader)
    from fairseq_taskmoe.extract.checkpoint_io import load_source, task_args

    args = get_parser().parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    pairs = [p for p in args.pairs.split(",") if p]
    if not pairs:
        ns = task_args(load_source(args.checkpoint))
        lp = getattr(ns, "lang_pairs", None) or []
        pairs = lp if isinstance(lp, list) else str(lp).split(",")
    if not pairs:
        raise ValueError("--pairs: the checkpoint stores no --lang-pairs; give --pairs en-de,...")
    report = usage(args.checkpoint, args.data, pairs, args.split, args.group_by, args.max_sentences)
    print_table(report)
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, args.json)
    if args.png:
        heatmap(report, args.png)
    return report


def cli_main():
    # force: importing fairseq already set the root logger to DEBUG (its wav2vec2_classification
    # module calls basicConfig(level=DEBUG)), which would print every library's debug lines.
    logging.basicConfig(level=logging.WARNING, force=True)
    try:
        main()
    except (ValueError, FileNotFoundError) as err:
        print(f"fairseq-taskmoe-routing: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli_main()
