"""Paired bootstrap of "system B vs system A" that resamples clusters of segments (or segments).

Legend: N segments, C resampling units (clusters, or segments), G groups (directions), S
resamples, K sufficient statistics of a metric (BLEU: 2 lengths + 4 matches + 4 totals; chrF:
3 counts per n-gram order).

Why clusters: the test sets of the 16 directions share English strings (an en->xx source is
the xx->en reference, and the same string is tested in every language), so their segments are
correlated, and resampling segments as if independent understates the variance. A cluster is
every segment that shares a normalised English string (``clusters.py``); a resample draws C
clusters with replacement and takes all segments of each drawn cluster, in every direction.

The statistic is what the tables report: ``average="macro"`` is the mean over groups
(directions) of each group's corpus score, ``"micro"`` the corpus score of the concatenation.
BLEU tokenizes every segment with its target language's tokenizer (``evaluate.bleu_tokenizer``)
and then scores with ``tokenize="none"``; corpus scores are sacrebleu's, from summed
per-segment statistics, so a resample costs one matrix product, not a re-tokenization.

Expected widths (what the tests pin): BLEU and chrF are smooth, scale-invariant functions of
the mean per-unit statistics, so to first order the bootstrap variance is
grad' Sigma grad / (units), with Sigma the covariance of per-unit statistics. If every cluster
is c identical copies of one segment, a cluster's statistics are c times the segment's (same
score), so the cluster bootstrap sees m = N/c units where the segment bootstrap sees N: its
standard deviation is sqrt(c) times larger. If the c segments of a cluster are independent,
a cluster's covariance is c times a segment's and the two agree.

Returned per metric: both observed scores, the observed difference (B - A), its bootstrap
standard deviation and 95% percentile interval, each system's 95% half-width (as sacrebleu
reports it), and a two-sided p-value for H0 "no difference": the resampled differences centred
on their mean are the null distribution, p = (1 + #{|d* - mean(d*)| >= |d|}) / (S + 1); identical
outputs give d = 0 and p = 1.
"""

from typing import Dict, Optional, Sequence

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

METRICS = ("bleu", "chrf")
AVERAGES = ("macro", "micro")


def _bleu_tokenizer(lang):
    from fairseq_taskmoe.evaluate import bleu_tokenizer  # one home for the per-language choice

    return bleu_tokenizer(lang)


def segment_stats(hypotheses: Sequence[str], references: Sequence[str], langs: Sequence[str],
                  metric: str) -> np.ndarray:
    """(N, K) int64 sacrebleu sufficient statistics, one row per segment; BLEU tokenized per language."""
    if metric == "bleu":
        tok = {lang: BLEU(tokenize=_bleu_tokenizer(lang)).tokenizer for lang in set(langs)}
        hyps = [tok[lang](h.rstrip()) for h, lang in zip(hypotheses, langs)]
        refs = [tok[lang](r.rstrip()) for r, lang in zip(references, langs)]
        stats = BLEU(tokenize="none")._extract_corpus_statistics(hyps, [refs])
    elif metric == "chrf":
        stats = CHRF()._extract_corpus_statistics(list(hypotheses), [list(references)])
    else:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return np.asarray(stats, dtype=np.int64).reshape(len(hypotheses), -1)


def _scorer(metric):
    return BLEU(tokenize="none") if metric == "bleu" else CHRF()


def score_from_stats(metric: str, stats, scorer=None) -> float:
    """sacrebleu's corpus score from summed statistics (K,)."""
    scorer = scorer or _scorer(metric)
    return float(scorer._compute_score_from_stats([int(x) for x in stats]).score)


def _group_scores(metric, unit_stats, weights):
    """(S, G) scores: group g of resample s sums its units' statistics weighted by how often the
    unit was drawn. unit_stats: list over G of (C, K); weights: (S, C)."""
    scorer = _scorer(metric)
    return np.array([[score_from_stats(metric, row, scorer) for row in weights @ stats]
                     for stats in unit_stats]).T


def _unit_stats(stats, unit_index, group_index, n_units, n_groups):
    """Per group, the (C, K) statistics of each unit's segments in that group."""
    out = []
    for g in range(n_groups):
        m = np.zeros((n_units, stats.shape[1]), dtype=np.int64)
        sel = group_index == g
        np.add.at(m, unit_index[sel], stats[sel])
        out.append(m)
    return out


def paired_bootstrap_resample(baseline: Sequence[str], system: Sequence[str], references: Sequence[str],
                              langs: Sequence[str], groups: Optional[Sequence[str]] = None,
                              clusters: Optional[Sequence[str]] = None, average: str = "macro",
                              n_samples: int = 1000, seed: int = 12345, metrics=METRICS) -> Dict[str, dict]:
    """Paired bootstrap of ``system`` (B) against ``baseline`` (A); see the module docstring.

    One entry per segment in ``baseline``/``system``/``references``/``langs`` (target language,
    for BLEU's tokenizer); ``groups``: the segment's direction (default: its language), the
    units of ``average="macro"``; ``clusters``: the segment's cluster key, None to resample
    segments. The same resampled units score both systems (paired).
    """
    n = len(references)
    groups = list(langs) if groups is None else list(groups)
    sizes = {len(baseline), len(system), len(langs), len(groups)} | ({len(clusters)} if clusters is not None else set())
    if sizes != {n} or n == 0:
        raise ValueError(f"paired bootstrap needs equal, non-zero lengths; got {len(baseline)} / {len(system)} "
                         f"hypotheses, {n} references, {len(langs)} languages, {len(groups)} groups"
                         + (f", {len(clusters)} cluster keys" if clusters is not None else ""))
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {', '.join(AVERAGES)}, got {average!r}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    keys = list(range(n)) if clusters is None else list(clusters)
    unit_names = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    unit_index = np.array([unit_names[k] for k in keys])
    group_names = {g: i for i, g in enumerate(dict.fromkeys(groups))} if average == "macro" else {None: 0}
    group_index = np.array([group_names[g] for g in groups]) if average == "macro" else np.zeros(n, dtype=int)
    n_units, n_groups = len(unit_names), len(group_names)
    rng = np.random.default_rng(seed)
    # (S, C) draw counts; one extra row of ones is the observed test set itself
    weights = np.vstack([np.ones((1, n_units), dtype=np.int64),
                         rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_samples)])
    out = {}
    for metric in metrics:
        scores = {}
        for name, hyps in (("a", baseline), ("b", system)):
            stats = segment_stats(hyps, references, langs, metric)
            scores[name] = _group_scores(metric, _unit_stats(stats, unit_index, group_index, n_units, n_groups),
                                         weights).mean(axis=1)  # (1 + S,)
        observed = {k: float(v[0]) for k, v in scores.items()}
        diff = scores["b"][1:] - scores["a"][1:]
        observed_diff = observed["b"] - observed["a"]
        null = np.abs(diff - diff.mean())
        p = (1 + int(np.sum(null >= abs(observed_diff) - 1e-9))) / (n_samples + 1)
        lo, hi = np.quantile(diff, [0.025, 0.975])
        out[metric] = {
            "a": round(observed["a"], 4), "b": round(observed["b"], 4), "diff": round(observed_diff, 4),
            "diff_sd": round(float(diff.std(ddof=1)) if n_samples > 1 else 0.0, 4),
            "diff_ci95": [round(float(lo), 4), round(float(hi), 4)], "p_value": p,
            "a_ci95": round(_half_width(scores["a"][1:]), 4), "b_ci95": round(_half_width(scores["b"][1:]), 4)}
    out["resampled"] = {"unit": "segment" if clusters is None else "cluster", "units": n_units, "segments": n,
                        "groups": n_groups if average == "macro" else 1, "average": average,
                        "resamples": n_samples, "seed": seed, "p_value": "two-sided, centred bootstrap"}
    return out


def _half_width(scores):
    lo, hi = np.quantile(scores, [0.025, 0.975])
    return float(hi - lo) / 2
