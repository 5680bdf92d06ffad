"""The tables and statistics of bench/quality.py, from scores already decoded (or recomputed
from the hypotheses saved next to the results: ``quality.py --from-hypotheses``).

Every "B vs A" claim (COMPARISONS) gets, for each seed where both were trained, the paired
bootstrap over clusters of segments that share an English string and, for comparison, over
segments (fairseq_taskmoe.scoring.bootstrap; statistic: BLEU / chrF averaged over directions,
the tables' "avg"), then the exact seed-level sign-flip test over the per-seed differences and
a label by the rule of fairseq_taskmoe.scoring.seeds ("significant at the seed level",
"suggestive", "no difference found").
"""

from typing import Dict, List

import benchlib

from fairseq_taskmoe.evaluate import paired_bootstrap, read_lines, score
from fairseq_taskmoe.scoring.bootstrap import paired_bootstrap_resample
from fairseq_taskmoe.scoring.clusters import cluster_keys
from fairseq_taskmoe.scoring.loops import loop_shares
from fairseq_taskmoe.scoring.seeds import ALPHA, claim_label, seed_level_test

# (baseline, system) pairs compared, seed by seed where both have the seed
COMPARISONS = [("token-moe", "task-moe"), ("token-moe", "task-moe-both"), ("task-moe", "task-moe-both"),
               ("dense-active", "task-moe"), ("dense-active", "token-moe"), ("dense-active", "student")]


def model_of(run):
    return run.rsplit(".s", 1)[0]


def test_sets(data, subset, pairs) -> Dict[str, dict]:
    """{pair: {"references", "clusters", "cluster_source"}} from the data dir's raw/ files."""
    from fairseq_taskmoe.evaluate import raw_reference_file

    out = {}
    for pair in pairs:
        src, tgt = pair.split("-")
        keys, source = cluster_keys(data, subset, src, tgt)
        refs = read_lines(raw_reference_file(data, subset, src, tgt))
        if len(keys) != len(refs):
            raise ValueError(f"{subset} {pair}: {len(refs)} references but {len(keys)} cluster keys")
        out[pair] = {"references": refs, "clusters": keys, "cluster_source": source}
    return out


def records(subset, scores, sets) -> List[dict]:
    """The hypothesis records of one subset (fairseq_taskmoe.scoring.records)."""
    out = [{"kind": "references", "subset": subset, "pair": pair, **ts} for pair, ts in sets.items()]
    return out + [{"kind": "hypotheses", "run": run, "subset": subset, "pair": pair, "hypotheses": r["hypotheses"]}
                  for run, res in scores.items() for pair, r in res.items()]


def rescore(hyps_by_pair, sets) -> Dict[str, dict]:
    """{pair: scores + hypotheses} recomputed from saved hypotheses, as fairseq_taskmoe.evaluate scores."""
    return {pair: {**score(hyps, sets[pair]["references"], pair.split("-")[1]), "hypotheses": hyps}
            for pair, hyps in hyps_by_pair.items()}


def summarize(scores, pairs):
    """Per model: seeds, per-direction and average mean / sd over seeds, for BLEU, chrF, chrF++."""
    by_model = {}
    for run, res in scores.items():
        by_model.setdefault(model_of(run), []).append(res)
    rows = []
    for model, runs in by_model.items():
        row = {"model": model, "seeds": len(runs)}
        for metric in ("bleu", "chrf", "chrf++"):
            per_seed_avg = [sum(r[p][metric] for p in pairs) / len(pairs) for r in runs]
            row[f"avg {metric}"], row[f"avg {metric} sd"] = benchlib.mean_sd(per_seed_avg)
            for pair in pairs:
                row[f"{pair} {metric}"], row[f"{pair} {metric} sd"] = benchlib.mean_sd(r[pair][metric] for r in runs)
        shares = [loop_shares({p: r[p]["hypotheses"] for p in pairs}) for r in runs]
        row["loops %"] = 100 * sum(s["all"]["share"] for s in shares) / len(shares)
        rows.append(row)
    return rows


def table_rows(rows, pairs):
    """Display rows: "mean ± sd" cells (sd only where a model has several seeds): one table of
    averages (a row per model), one of BLEU per direction (a row per direction)."""
    def cell(row, key):
        mean, sd = row[key], row[f"{key} sd"]
        return f"{mean:.2f} ± {sd:.2f}" if row["seeds"] > 1 else f"{mean:.2f}"

    keys = ["avg bleu", "avg chrf", "avg chrf++"]
    averages = [{"model": r["model"], "seeds": r["seeds"], **{k: cell(r, k) for k in keys},
                 "loops %": f"{r['loops %']:.1f}"} for r in rows]
    per_pair = [{"direction": p, **{r["model"]: cell(r, f"{p} bleu") for r in rows}} for p in pairs]
    return averages, ["model", "seeds", *keys, "loops %"], per_pair, ["direction", *[r["model"] for r in rows]]


def same_hypotheses(a, b):
    pairs = sorted(set(a) & set(b))
    same = sum(x == y for p in pairs for x, y in zip(a[p]["hypotheses"], b[p]["hypotheses"]))
    total = sum(len(a[p]["hypotheses"]) for p in pairs)
    return {"identical": same, "total": total, "exact": same == total and total > 0}


def concatenated(res, sets, pairs):
    """(hypotheses, references, target language per segment, direction, cluster) over ``pairs``."""
    cols = ([], [], [], [], [])
    for pair in pairs:
        n = len(sets[pair]["references"])
        for col, values in zip(cols, (res[pair]["hypotheses"], sets[pair]["references"], [pair.split("-")[1]] * n,
                                      [pair] * n, sets[pair]["clusters"])):
            col += values
    return cols


def sacrebleu_bootstrap(scores, sets, pairs, seeds):
    """sacrebleu's segment bootstrap of the concatenation (runs 1 and 2 reported it; kept for continuity)."""
    out = []
    for base, system in COMPARISONS:
        for seed in seeds:
            a, b = f"{base}.s{seed}", f"{system}.s{seed}"
            if a in scores and b in scores:
                hyps_a, refs, langs, _, _ = concatenated(scores[a], sets, pairs)
                out.append({"baseline": a, "system": b,
                            **paired_bootstrap(hyps_a, concatenated(scores[b], sets, pairs)[0], refs, langs, names=(a, b))})
    return out


def claims(scores, sets, pairs, seeds, n_samples=1000, comparisons=None):
    """Per (baseline, system) pair of ``comparisons`` (default COMPARISONS) with at least one
    shared seed: per-seed cluster and segment bootstraps, the seed-level test of BLEU and chrF,
    and the label (BLEU; the rule in scoring/seeds.py)."""
    out = []
    for base, system in comparisons or COMPARISONS:
        per_seed = []
        for seed in seeds:
            a, b = f"{base}.s{seed}", f"{system}.s{seed}"
            if a not in scores or b not in scores:
                continue
            hyps_a, refs, langs, groups, clusters = concatenated(scores[a], sets, pairs)
            hyps_b = concatenated(scores[b], sets, pairs)[0]
            per_seed.append({"seed": seed, **{
                unit: paired_bootstrap_resample(hyps_a, hyps_b, refs, langs, groups, keys, "macro", n_samples)
                for unit, keys in (("cluster", clusters), ("segment", None))}})
        if not per_seed:
            continue
        seed_level = {m: seed_level_test([s["cluster"][m]["diff"] for s in per_seed]) for m in ("bleu", "chrf")}
        label = claim_label(seed_level["bleu"], [s["cluster"]["bleu"]["p_value"] for s in per_seed])
        out.append({"baseline": base, "system": system, "per_seed": per_seed, "seed_level": seed_level,
                    "label": label, "alpha": ALPHA})
    return out


def claims_table(claim_list):
    """One row per claim: mean BLEU difference, seed-level p, per-seed differences with the cluster
    and segment bootstrap p-values, the label."""
    rows = []
    for c in claim_list:
        sl = c["seed_level"]["bleu"]
        per_seed = "; ".join(f"s{s['seed']} {s['cluster']['bleu']['diff']:+.2f} "
                             f"(p {s['cluster']['bleu']['p_value']:.3f} / {s['segment']['bleu']['p_value']:.3f})"
                             for s in c["per_seed"])
        rows.append({"B vs A": f"{c['system']} vs {c['baseline']}", "seeds": sl["seeds"],
                     "ΔBLEU mean": f"{sl['mean_diff']:+.2f}",
                     "95% over seeds": f"[{sl['ci95_over_seeds'][0]:+.2f}, {sl['ci95_over_seeds'][1]:+.2f}]",
                     "seed-level p (min)": f"{sl['p_value']:.3f} ({sl['min_p_value']:.3f})",
                     "per seed: ΔBLEU (p cluster / segment)": per_seed, "label": c["label"]})
    return benchlib.table(rows, ["B vs A", "seeds", "ΔBLEU mean", "95% over seeds", "seed-level p (min)",
                                 "per seed: ΔBLEU (p cluster / segment)", "label"])


def claims_method(sets, n_samples):
    """The footnote of claims_table: what was resampled and how labels are given."""
    source = sorted({ts["cluster_source"] for ts in sets.values()})
    n_clusters = len({k for ts in sets.values() for k in ts["clusters"]})
    return (f"per seed: paired bootstrap, {n_samples} resamples, of {n_clusters} clusters (segments sharing an "
            f"English string, keys {'/'.join(source)}) and of {sum(len(ts['clusters']) for ts in sets.values())} "
            f"segments; seed level: exact sign-flip test over seeds (min p = 2/2^seeds). Labels (alpha {ALPHA}): "
            "significant at the seed level = seed-level p <= alpha; suggestive = all seeds one sign and the cluster "
            "bootstrap p <= alpha in at least half the seeds; otherwise no difference found")


def loops_table(scores, pairs):
    """Loop share (%) per run: all directions, out of English, into English."""
    rows = []
    for run, res in scores.items():
        s = loop_shares({p: res[p]["hypotheses"] for p in pairs})
        rows.append({"run": run, **{g: f"{100 * s[g]['share']:.1f}" for g in ("all", "out-of-English", "into-English")
                                    if g in s}})
    return benchlib.table(rows, ["run", "all", "out-of-English", "into-English"])


def report_subset(subset, scores, sets, pairs, all_pairs, seeds, n_samples=1000):
    """Print the subset's tables; return its JSON (without the hypotheses, which go to the records)."""
    rows = summarize(scores, pairs)
    first = seeds[0]
    full, extracted = f"task-moe.s{first}", f"task-moe-extracted.s{first}"
    exact = same_hypotheses(scores[full], scores[extracted]) if extracted in scores and full in scores else None
    tests = sacrebleu_bootstrap(scores, sets, pairs, seeds)
    claim_list = claims(scores, sets, pairs, seeds, n_samples)
    signatures = sorted({f"{m}: {sig}" for res in scores.values() for r in res.values()
                         for m, sig in r["signatures"].items()})
    averages, avg_cols, per_pair, pair_cols = table_rows(rows, pairs)
    print(f"\n== {subset}: mean ± sd over seeds, averaged over {len(pairs)} directions")
    print(benchlib.table(averages, avg_cols))
    print(f"\n== {subset}: BLEU per direction, mean ± sd over seeds")
    print(benchlib.table(per_pair, pair_cols))
    print(f"\n== {subset}: B vs A, average BLEU over directions")
    print(claims_table(claim_list) if claim_list else "no comparable runs")
    print(claims_method(sets, n_samples))
    print(f"\n== {subset}: share of hypotheses that loop (%)")
    print(loops_table(scores, pairs))
    print(f"extracted task-MoE == full task-MoE: {exact}")
    for sig in signatures:
        print(f"signature {sig}")
    return {"pairs": pairs, "pairs_without_split": [p for p in all_pairs if p not in pairs], "rows": rows,
            "extracted_equals_full": exact, "claims": claim_list, "paired_bootstrap": tests,
            "clusters": {"count": len({k for ts in sets.values() for k in ts["clusters"]}),
                         "keys": sorted({ts["cluster_source"] for ts in sets.values()})},
            "loops": {run: loop_shares({p: res[p]["hypotheses"] for p in pairs}) for run, res in scores.items()},
            "signatures": signatures,
            "scores": {run: {p: {k: v for k, v in r.items() if k != "hypotheses"} for p, r in res.items()}
                       for run, res in scores.items()}}


def recompute(path, n_samples=1000):
    """The ``subsets`` JSON of quality.py, recomputed from a ``.hyps.jsonl.gz`` without decoding."""
    from fairseq_taskmoe.scoring.records import read_records

    refs, hyps = read_records(path)
    subsets = {}
    for subset in dict.fromkeys(s for s, _ in refs):
        pairs = [p for s, p in refs if s == subset]
        sets = {p: {k: refs[(subset, p)][k] for k in ("references", "clusters", "cluster_source")} for p in pairs}
        runs = list(dict.fromkeys(r for r, s, _ in hyps if s == subset))  # the order they were scored in
        scores = {run: rescore({p: hyps[(run, subset, p)] for p in pairs}, sets) for run in runs}
        seeds = list(dict.fromkeys(int(r.rsplit(".s", 1)[1]) for r in runs))  # the first seed first
        subsets[subset] = report_subset(subset, scores, sets, pairs, pairs, seeds, n_samples)
    return subsets
