import pytest

from fairseq_taskmoe.data.split import assign_split, source_key, split_pairs


def _pairs(lang, n=3000):
    return [("Open the file number %d" % i, "%s Datei %d" % (lang, i)) for i in range(n)]


def test_no_english_string_in_two_splits_across_languages():
    by_lang = {lang: split_pairs(_pairs(lang) + [("open the file number 7.", lang + " x")], 5, 5, 10_000)
               for lang in ("de", "fr", "ja")}
    where = {}
    for lang, splits in by_lang.items():
        for split, pairs in splits.items():
            for src, _ in pairs:
                where.setdefault(source_key(src), set()).add(split)
    assert all(len(s) == 1 for s in where.values())
    assert by_lang["de"]["test"] and by_lang["de"]["valid"]
    # same English strings are held out for every language
    tests = [{s for s, _ in by_lang[l]["test"]} for l in by_lang]
    assert tests[0] == tests[1] == tests[2]


def test_bucket_sizes_and_cap():
    splits = split_pairs(_pairs("de", 10_000), 2.0, 3.0, max_eval=10_000)
    assert 150 < len(splits["valid"]) < 250 and 250 < len(splits["test"]) < 350
    capped = split_pairs(_pairs("de", 10_000), 2.0, 3.0, max_eval=50)
    assert len(capped["valid"]) == len(capped["test"]) == 50
    assert len(capped["train"]) == len(splits["train"])  # capped eval strings are not moved to train


def test_dedup_train_and_single_reference_in_eval():
    pairs = _pairs("de", 2000)
    dup = pairs + pairs + [(s, t + " (alt)") for s, t in pairs] + pairs
    splits = split_pairs(dup, 5, 5, 10_000)
    assert len(splits["train"]) == len(set(splits["train"]))
    assert all(not t.endswith("(alt)") for _, t in splits["test"])  # most frequent reference wins
    assert len({s for s, _ in splits["test"]}) == len(splits["test"])


def test_normalised_variants_share_a_split():
    assert len({assign_split(s, 30, 30) for s in ("Save", "save", "Save.", " SAVE! ")}) == 1


def test_bad_percent():
    with pytest.raises(ValueError, match="--valid-percent"):
        split_pairs([], 60, 50)
