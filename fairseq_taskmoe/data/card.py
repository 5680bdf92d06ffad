"""Data card (DATA_CARD.md + data_card.json) and the console summary table."""
import json
import os


def write_card(out, card):
    """``card`` is the dict stored as data_card.json; the markdown is rendered from it."""
    with open(os.path.join(out, "data_card.json"), "w", encoding="utf-8") as fh:
        json.dump(card, fh, indent=2, ensure_ascii=False, sort_keys=True)
    with open(os.path.join(out, "DATA_CARD.md"), "w", encoding="utf-8") as fh:
        fh.write(render_markdown(card))


def summary_table(counts):
    """Plain-text table of pair counts: one row per language, columns train/valid/test."""
    rows = ["%-10s %9s %7s %7s" % ("pair", "train", "valid", "test")]
    for lang in sorted(counts):
        c = counts[lang]
        rows.append("%-10s %9d %7d %7d" % ("en-" + lang, c["train"], c["valid"], c["test"]))
    total = {k: sum(c[k] for c in counts.values()) for k in ("train", "valid", "test")}
    rows.append("%-10s %9d %7d %7d" % ("total", total["train"], total["valid"], total["test"]))
    return "\n".join(rows)


def render_markdown(card):
    lines = [
        "# Data card: %s" % card["name"],
        "",
        "English-centric parallel corpus mined from the gettext localisation catalogs shipped in",
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
        "| pair | train | valid | test |",
        "|---|---:|---:|---:|",
    ]
    for lang in card["languages"]:
        c = card["counts"][lang]
        lines.append("| en-%s | %d | %d | %d |" % (lang, c["train"], c["valid"], c["test"]))
    lines += [
        "",
        "Split by a hash of the normalised English source (%.1f%% valid, %.1f%% test buckets, at most"
        % (card["valid_percent"], card["test_percent"]),
        "%d strings each per pair): no English string is in two splits, across all languages." % card["max_eval"],
        "Valid/test keep one reference per English string; train keeps every distinct pair.",
        "",
        "## Origin",
        "",
        "| package | version | licence | catalogs read | corrupt (skipped) |",
        "|---|---|---|---:|---:|",
    ]
    for src in card["sources"]:
        lines.append("| %s | %s | %s | %d | %d |" % (
            src["name"], src["version"], src["licence"], src["catalogs"], src["corrupt"]))
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
        "`spm.model` (shared sentencepiece, vocab %d), `dict.{lang}.txt` (one joined dictionary),"
        % card["vocab_size"],
        "`{split}.en-xx.{en,xx}.{bin,idx}`, `raw/{valid,test}.en-xx.{en,xx}` (detokenised, for BLEU),",
        "`langs.txt`, `lang_pairs.txt`.",
        "",
    ]
    return "\n".join(lines)
