"""Print the demo's side-by-side: full vs extracted BLEU, the size reduction, and the share of
looping hypotheses per direction (fairseq_taskmoe.scoring.loops: a token 3-gram 3+ times, or a
token 4 times in a row; characters for ja/zh)."""

import json
import sys
from pathlib import Path

from fairseq_taskmoe.scoring.loops import loop_shares


def print_loops(results, title):
    shares = loop_shares({pair: r["hypotheses"] for pair, r in results["pairs"].items()})
    print(f"\n{title}")
    print(f"{'direction':<14}{'BLEU':>7}{'loops':>10}{'share':>8}")
    for pair, row in shares["pairs"].items():
        print(f"{pair:<14}{results['pairs'][pair]['bleu']:>7.2f}{row['loops']:>5}/{row['sentences']:<4}"
              f"{100 * row['share']:>7.1f}%")
    for group in ("out-of-English", "into-English", "all"):
        if group in shares:
            row = shares[group]
            print(f"{group:<21}{row['loops']:>5}/{row['sentences']:<4}{100 * row['share']:>7.1f}%")
    return shares

out, pair = Path(sys.argv[1]), sys.argv[2]
subset = sys.argv[3] if len(sys.argv) > 3 else "test"
full = json.loads((out / "scores_full.json").read_text())
ext = json.loads((out / "scores_extracted.json").read_text())
card = json.loads((out / f"extract-{pair}" / "extract.json").read_text())
f, e = full["pairs"][pair], ext["pairs"][pair]
same = f["hypotheses"] == e["hypotheses"]
print(f"\n{'model':<22}{'BLEU':>8}{'chrF':>8}{'params':>12}{'decoder params':>16}")
print(f"{'full task-MoE':<22}{f['bleu']:>8.2f}{f['chrf']:>8.2f}"
      f"{card['params_before']['total']:>12,}{card['params_before']['decoder']:>16,}")
print(f"{'extracted ' + pair:<22}{e['bleu']:>8.2f}{e['chrf']:>8.2f}"
      f"{card['params_after']['total']:>12,}{card['params_after']['decoder']:>16,}")
print(f"\nidentical hypotheses, line by line: {same}")
print(f"size: {card['params_after']['total'] / card['params_before']['total']:.1%} of the full model; "
      f"decoder experts kept: {card['decoder_experts_kept_fraction']:.1%}")
n_sent = sum(len(p["hypotheses"]) for p in full["pairs"].values())
print(f"average over all {len(full['pairs'])} directions on {subset} ({n_sent} sentences, full model): "
      f"BLEU {full['avg_bleu']:.2f}, chrF {full['avg_chrf']:.2f}")
shares = print_loops(full, f"hypotheses that loop, per direction ({subset}, full model, unfiltered):")
print(f"loop share: {100 * shares['all']['share']:.1f}% of {shares['all']['sentences']} hypotheses")
doc = out / "scores_full_doc.json"
if doc.exists():
    d = json.loads(doc.read_text())
    n_doc = sum(len(p["hypotheses"]) for p in d["pairs"].values())
    print(f"documentation sentences ({n_doc}, full model): BLEU {d['avg_bleu']:.2f}, chrF {d['avg_chrf']:.2f}")
    doc_shares = print_loops(d, "documentation sentences, hypotheses that loop:")
    print(f"loop share (documentation sentences): {100 * doc_shares['all']['share']:.1f}%")
if not same:
    sys.exit("extracted model's output differs from the full model's")
