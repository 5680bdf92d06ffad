"""Data card (DATA_CARD.md + data_card.json) and the console summary table."""
import json
import os


def write_card(out, card):
    """``card`` is the dict stored as data_card.json; the markdown is rendered from it."""
    with open(os.path.join(out, "data_card.json"), "w", encoding="utf-8") as fh:
        json.dump(card, fh, indent=2, ensure_ascii=False, sort_keys=True)
    with open(os.path.join(out, "DATA_CARD.md"), "w", encoding="utf-8") as fh:
        fh.write(render_markdown(card))


def _columns(counts):
    """Count columns present in ``counts`` (train/valid/test, plus the doc ones when built)."""
    first = next(iter(counts.values()), {})
    return [k for k in ("train", "train_doc", "valid", "test", "valid_doc", "test_doc") if k in first]


def summary_table(counts):
    """Plain-text table of pair counts: one row per language, one column per split.

    ``train_doc`` is the part of train that comes from documentation (already inside train).
    """
    cols = _columns(counts)
    fmt = "%-10s" + " %9s" * len(cols)
    rows = [fmt % tuple(["pair"] + cols)]
    for lang in sorted(counts):
        rows.append(fmt % tuple(["en-" + lang] + [counts[lang][k] for k in cols]))
    rows.append(fmt % tuple(["total"] + [sum(c[k] for c in counts.values()) for k in cols]))
    return "\n".join(rows)


def _contribution_table(card):
    """Clean pairs each source adds to each chosen language (before dedup and splitting)."""
    langs = card["languages"]
    lines = ["", "Clean pairs each package adds per chosen language (before deduplication and splitting):", "",
             "| package | %s |" % " | ".join(langs), "|---|%s" % "---:|" * len(langs)]
    for src in card["sources"]:
        by_lang = src.get("pairs_by_lang", {})
        lines.append("| %s | %s |" % (src["name"], " | ".join(str(by_lang.get(l, 0)) for l in langs)))
    return lines


def render_markdown(card):
    lines = [
        "# Data card: %s" % card["name"],
        "",
        "English-centric parallel corpus mined from the gettext localisation catalogs (and, with",
        "--docs, the translated desktop help) shipped in",
        "permissively licensed software packages. Built by `fairseq-taskmoe-prepare-data` on",
        "%s in %.0f s (%s)." % (card["built_at"], card["seconds"], card["command"]),
        "",
        "Languages (%d): %s" % (len(card["languages"]), ", ".join(card["languages"])),
        "",
        "Language codes: `ll[_Script][_RR]`, underscores only (fairseq splits pairs on `-`).",
        "Pairs are binarised once as `en-xx`; fairseq's `translation_multi_simple_epoch` reads",
        "them for both `en-xx` and `xx-en` (see `lang_pairs.txt`).",
        "",
        "## Pairs per split",
        "",
    ]
    cols = _columns(card["counts"])
    lines.append("| pair | %s |" % " | ".join(cols))
    lines.append("|---|%s" % "---:|" * len(cols))
    for lang in card["languages"]:
        c = card["counts"][lang]
        lines.append("| en-%s | %s |" % (lang, " | ".join(str(c[k]) for k in cols)))
    if "test_doc" in cols:
        lines += [
            "",
            "Two kinds of text: `ui` (gettext catalogs: menus, buttons, messages) and `doc` (paragraphs",
            "of translated desktop help, aligned with their English originals). `train` holds both",
            "(`train_doc` of them are doc); `valid`/`test` hold UI strings only and `valid_doc`/`test_doc`",
            "documentation sentences only (English side of at least %d words), so the two kinds are"
            % card["doc_min_eval_words"],
            "scored apart: `--gen-subset test_doc` (fairseq) or `--subset test_doc` (evaluate).",
        ]
    lines += [
        "",
        "Split by a hash of the normalised English source (%.1f%% valid, %.1f%% test buckets, at most"
        % (card["valid_percent"], card["test_percent"]),
        "%d strings each per pair): no English string is in two splits, across all languages." % card["max_eval"],
        "Valid/test keep one reference per English string; train keeps every distinct pair.",
        "",
        "## Origin",
        "",
        "| package | kind | version | licence | files read | skipped (corrupt / unaligned) |",
        "|---|---|---|---|---:|---:|",
    ]
    for src in card["sources"]:
        lines.append("| %s | %s | %s | %s | %d | %d |" % (
            src["name"], src.get("kind", "ui"), src["version"], src["licence"], src["catalogs"], src["corrupt"]))
    lines += _contribution_table(card)
    lines += ["", "## Cleaning", "", "Pairs dropped, by reason (all languages read, before language selection):", ""]
    for reason, n in sorted(card["dropped"].items()):
        lines.append("- %s: %d" % (reason, n))
    if card.get("corrupt_files"):
        lines += ["", "Corrupt catalogs skipped:", ""]
        lines += ["- `%s`" % f for f in card["corrupt_files"][:50]]
    lines += [
        "",
        "## Files",
        "",
        "`spm.model` (shared sentencepiece, vocab %d%s), `dict.{lang}.txt` (one joined dictionary),"
        % (card["vocab_size"], _vocab_note(card)),
        "`{split}.en-xx.{en,xx}.{bin,idx}`, `raw/{split}.en-xx.{en,xx}` for every split but train",
        "(detokenised, for BLEU),",
        "`langs.txt`, `lang_pairs.txt`.",
        "",
    ]
    return "\n".join(lines)


def _vocab_note(card):
    asked = card.get("vocab_size_requested", card["vocab_size"])
    if asked == card["vocab_size"]:
        return ""
    return "; --vocab-size %d was asked, but the training text only yields %d pieces" % (asked, card["vocab_size"])
