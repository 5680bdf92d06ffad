"""The paired bootstrap over clusters: the widths it must have (derived in
fairseq_taskmoe/scoring/bootstrap.py), its scores against sacrebleu's, and its p-values at the
extremes."""

import random

import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF

from fairseq_taskmoe import evaluate
from fairseq_taskmoe.scoring.bootstrap import paired_bootstrap_resample

WORDS = "the a cat dog house tree runs big small red blue green eats sees old new file open save".split()


def noisy(ref, rng, keep):
    return " ".join(w if rng.random() < keep else rng.choice(WORDS) for w in ref.split())


def segments(n, seed=0):
    """(references, baseline, system): random sentences, B a little closer to them than A."""
    rng = random.Random(seed)
    refs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]
    return refs, [noisy(r, rng, 0.55) for r in refs], [noisy(r, rng, 0.6) for r in refs]


def sd_ratio(average, refs, a, b, clusters, groups=None, n_samples=2000):
    langs = ["de"] * len(refs)
    seg = paired_bootstrap_resample(a, b, refs, langs, groups, None, average, n_samples)
    clu = paired_bootstrap_resample(a, b, refs, langs, groups, clusters, average, n_samples)
    assert clu["bleu"]["diff"] == seg["bleu"]["diff"]  # the same observed statistic
    assert clu["resampled"]["units"] == len(set(clusters)) and seg["resampled"]["units"] == len(refs)
    return {m: clu[m]["diff_sd"] / seg[m]["diff_sd"] for m in ("bleu", "chrf")}, clu, seg


@pytest.mark.parametrize("average", ["micro", "macro"])
def test_identical_copies_widen_the_interval_by_sqrt_of_the_cluster_size(average):
    """Each cluster is c identical copies of one segment (as one English string tested in c
    directions would be if the model translated it identically): the cluster bootstrap resamples
    m = N / c units, the segment bootstrap N, so its sd is sqrt(c) = 2 times larger. For
    "macro" the copies are c directions, one copy each."""
    m, c = 300, 4
    refs, a, b = segments(m)
    copies = lambda xs: [x for _ in range(c) for x in xs]  # noqa: E731  direction-major, like the test sets
    clusters = copies([f"k{i}" for i in range(m)])
    groups = [f"d{j}" for j in range(c) for _ in range(m)]
    ratio, clu, seg = sd_ratio(average, copies(refs), copies(a), copies(b), clusters, groups)
    for metric, r in ratio.items():
        assert r == pytest.approx(np.sqrt(c), rel=0.1), metric
    # the 95% interval is wider by the same factor
    width = lambda t: t["bleu"]["diff_ci95"][1] - t["bleu"]["diff_ci95"][0]  # noqa: E731
    assert width(clu) / width(seg) == pytest.approx(np.sqrt(c), rel=0.15)


def test_independent_segments_give_the_same_interval_either_way():
    """Clusters of 4 independent segments: a cluster's variance is 4 times a segment's, and there
    are 4 times fewer clusters, so both bootstraps agree."""
    refs, a, b = segments(1200, seed=1)
    order = list(range(1200))
    random.Random(2).shuffle(order)
    clusters = [f"k{order[i] // 4}" for i in range(1200)]
    ratio, _, _ = sd_ratio("micro", refs, a, b, clusters)
    for metric, r in ratio.items():
        assert r == pytest.approx(1.0, rel=0.12), metric


def test_singleton_clusters_are_the_segment_bootstrap():
    refs, a, b = segments(200, seed=3)
    langs = ["de"] * 200
    seg = paired_bootstrap_resample(a, b, refs, langs, n_samples=300)
    one = paired_bootstrap_resample(a, b, refs, langs, clusters=[f"s{i}" for i in range(200)], n_samples=300)
    assert {k: v for k, v in one.items() if k != "resampled"} == {k: v for k, v in seg.items() if k != "resampled"}


def test_scores_are_sacrebleus_and_macro_averages_directions():
    refs, a, b = segments(120, seed=4)
    ja_refs = ["猫が犬を見る", "大きな赤い家", "古い木と新しい木"] * 10
    ja_a, ja_b = ["猫が犬を見た", "大きな家", "古い木"] * 10, ["猫が犬を見た", "大きな赤い家", "古い木と木"] * 10
    hyps_a, hyps_b, all_refs = a + ja_a, b + ja_b, refs + ja_refs
    langs = ["de"] * 120 + ["ja"] * 30
    macro = paired_bootstrap_resample(hyps_a, hyps_b, all_refs, langs, n_samples=50)
    per_dir = [BLEU(tokenize="13a").corpus_score(b, [refs]).score,
               BLEU(tokenize="char").corpus_score(ja_b, [ja_refs]).score]
    assert macro["bleu"]["b"] == pytest.approx(sum(per_dir) / 2, abs=1e-4)
    chrf = [CHRF().corpus_score(a, [refs]).score, CHRF().corpus_score(ja_a, [ja_refs]).score]
    assert macro["chrf"]["a"] == pytest.approx(sum(chrf) / 2, abs=1e-4)
    # micro: the concatenation, each segment tokenized for its language, as evaluate.paired_bootstrap
    micro = paired_bootstrap_resample(hyps_a, hyps_b, all_refs, langs, average="micro", n_samples=200)
    sacre = evaluate.paired_bootstrap(hyps_a, hyps_b, all_refs, langs, names=("a", "b"), n_samples=200)
    assert round(micro["bleu"]["b"], 2) == sacre["BLEU"]["b"] and round(micro["chrf"]["a"], 2) == sacre["chrF"]["a"]
    # sacrebleu's own segment bootstrap: similar 95% half-width (different resamples)
    assert micro["bleu"]["b_ci95"] == pytest.approx(sacre["BLEU"]["b_ci95"], rel=0.3)


def test_p_values_at_the_extremes_and_bad_input():
    refs, a, _ = segments(100, seed=5)
    langs = ["de"] * 100
    same = paired_bootstrap_resample(a, a, refs, langs, n_samples=200)
    assert same["bleu"]["p_value"] == same["chrf"]["p_value"] == 1.0 and same["bleu"]["diff"] == 0
    better = paired_bootstrap_resample(a, refs, refs, langs, clusters=[i // 5 for i in range(100)], n_samples=200)
    assert better["bleu"]["b"] == 100.0 and better["bleu"]["p_value"] == pytest.approx(1 / 201)
    assert better["bleu"]["diff_ci95"][0] > 0
    with pytest.raises(ValueError, match="equal, non-zero lengths.*99 cluster keys"):
        paired_bootstrap_resample(a, a, refs, langs, clusters=list(range(99)))
    with pytest.raises(ValueError, match="average must be one of macro, micro"):
        paired_bootstrap_resample(a, a, refs, langs, average="mean")
