"""The README.md, langs.txt and lang_pairs.txt written into every extract and export.

An extract holds no list of the languages its dictionaries were built with, yet stock
fairseq needs that list, in that order, as ``--langs`` (the order fixes the language-token
ids; tests/tasks/test_checkpoint_flags.py shows what another order does). So the list
goes into ``langs.txt`` and the exact commands for the extract's engine into README.md,
written from the extract's own record; ``tests/extract/test_extract_readme.py`` runs
those commands as written.
"""

from typing import List, Optional

from fairseq_taskmoe.serve.ctranslate2_export import lang_token


def _flags(langtoks: dict) -> str:
    enc = langtoks.get("encoder_langtok")
    return " ".join(([f"--encoder-langtok {enc}"] if enc else [])
                     + (["--decoder-langtok"] if langtoks.get("decoder_langtok") else []))


def _example(spm: bool) -> str:
    return "The file could not be opened." if spm else "the cat sees a house"


def render(report: dict, langs: Optional[List[str]], langtoks: dict, spm: bool) -> str:
    """README.md of an extract whose extract.json content is ``report``.

    ``langs``: the model's language list in training order (None: not recorded, e.g. a
    ``--lang-dict`` file that is gone); ``langtoks``: ``--encoder-langtok`` / ``--decoder-langtok``.
    """
    fmt, pairs = report["format"], report["pairs"]
    src, tgt = pairs[0].split("-")
    langs_csv = ",".join(langs) if langs else "LANGS"
    example = _example(spm)
    bpe = " --bpe sentencepiece --sentencepiece-model spm.model" if spm else ""
    remove_bpe = " --remove-bpe sentencepiece" if spm else ""
    lines = [
        f"# Task-MoE extract: {', '.join(report['tasks'])} ({fmt} format)",
        "",
        f"Written by `fairseq-taskmoe-extract --format {fmt}` from `{report['source_checkpoint']}` "
        f"(sha256 `{report['source_sha256'][:16]}...`).",
        f"Tasks (`--moe-task-by {report['moe_task_by']}`): {', '.join(report['tasks'])}; language pairs: "
        f"{', '.join(pairs)} (`lang_pairs.txt`). Other pairs are refused by the plugin's tools; stock "
        "fairseq and plain CTranslate2 cannot tell, so ask them only for these pairs.",
        f"Languages of the model, in the order of its language tokens: {langs_csv} (`langs.txt`); "
        f"language tags: {_flags(langtoks) or 'none'}.",
        "Input: " + ("raw text, cut into pieces by `spm.model` (sentencepiece)." if spm else
                     "tokens separated by spaces (no sentencepiece model came with the data)."),
        "All commands below run from inside this directory. Details: `extract.json`.",
        "",
        "## The plugin (`pip install fairseq-taskmoe`)",
        "",
        "```bash",
        f"echo \"{example}\" | fairseq-taskmoe-translate . -s {src} -t {tgt}",
        "```",
        "",
        "```python",
        "from fairseq_taskmoe.serve import from_pretrained",
        f"print(from_pretrained(\".\").translate([\"{example}\"], src=\"{src}\", tgt=\"{tgt}\", beam=4))",
        "```",
        "",
    ]
    if fmt == "plugin":
        lines += [
            "## fairseq (with the plugin as `--user-dir`)",
            "",
            "```bash",
            f"echo \"{example}\" | fairseq-interactive . --user-dir \"$(python -c 'import fairseq_taskmoe, "
            f"os; print(os.path.dirname(fairseq_taskmoe.__file__))')\" --task "
            f"translation_multi_simple_epoch_taskmoe --lang-pairs {','.join(pairs)} --langs {langs_csv} "
            f"{_flags(langtoks)} -s {src} -t {tgt} --path checkpoint.pt --beam 4{bpe}",
            "```",
            "",
        ]
    if fmt == "stock":
        lines += [
            "## Stock fairseq (no plugin)",
            "",
            "`--langs` must be exactly the list above, in that order: without it fairseq infers "
            "the languages from `--lang-pairs`, and the dictionary no longer fits the model (or, "
            "in another order, the language tokens swap and every output is wrong).",
            "",
            "```bash",
            f"echo \"{example}\" | fairseq-interactive . --task translation_multi_simple_epoch "
            f"--lang-pairs {','.join(pairs)} --langs {langs_csv} {_flags(langtoks)} -s {src} -t {tgt} "
            f"--path checkpoint.pt --beam 4{bpe}",
            "```",
            "",
            "Over a binarized test split (`DATA` holds `test.{src}-{tgt}.*` made with these "
            "dictionaries; `--required-batch-size-multiple 1` or stock fairseq skips the last "
            "`n mod 8` sentences):".replace("{src}", src).replace("{tgt}", tgt),
            "",
            "```bash",
            f"fairseq-generate DATA --task translation_multi_simple_epoch --lang-pairs {','.join(pairs)} "
            f"--langs {langs_csv} {_flags(langtoks)} -s {src} -t {tgt} --path checkpoint.pt "
            f"--required-batch-size-multiple 1 --beam 4{remove_bpe}",
            "```",
            "",
            "fairseq's hub (`TransformerModel.from_pretrained`) cannot translate with the stock task "
            "`translation_multi_simple_epoch`: it fails with `build_generator() got an unexpected "
            "keyword argument 'prefix_allowed_tokens_fn'`, a bug of stock fairseq (the hub passes an "
            "argument that task does not take), which no argument works around. With the plugin "
            "installed, the hub works through the plugin's task; its output keeps the target "
            f"language tag `{lang_token(tgt)}` first (the hub decodes every token), strip it:",
            "",
            "```python",
            "import fairseq_taskmoe  # registers the plugin's task",
            "from fairseq.models.transformer import TransformerModel",
            f"hub = TransformerModel.from_pretrained(\".\", checkpoint_file=\"checkpoint.pt\", "
            f"data_name_or_path=\".\", task=\"translation_multi_simple_epoch_taskmoe\", "
            f"source_lang=\"{src}\", target_lang=\"{tgt}\", lang_pairs=\"{','.join(pairs)}\", "
            f"langs={list(langs) if langs else 'LANGS'}"
            + (", bpe=\"sentencepiece\", sentencepiece_model=\"spm.model\"" if spm else "") + ")",
            f"print(hub.translate(\"{example}\", beam=4).split(\" \", 1)[-1])",
            "```",
            "",
        ]
    if fmt == "ctranslate2":
        enc = langtoks.get("encoder_langtok")
        src_tag = {"src": lang_token(src), "tgt": lang_token(tgt)}.get(enc or "")
        prefix_src = f"[\"{src_tag}\"] + " if src_tag else ""
        dec = langtoks.get("decoder_langtok")
        lines += [
            "## Plain CTranslate2 (no fairseq, no plugin)",
            "",
            (f"The source starts with the language token `{src_tag}`; " if src_tag else "")
            + (f"the target language token `{lang_token(tgt)}` goes in as `target_prefix` and comes "
               "back as the first output token: strip it. " if dec else "")
            + "Getting these wrong does not fail: it silently changes the translations. "
            "CTranslate2 appends `</s>` to the source itself. `fairseq-taskmoe-translate` also "
            "re-ranks the beam with fairseq's length normalisation; plain `translate_batch` "
            "may rank a few hypotheses differently.",
            "",
            "```python",
            "import ctranslate2",
        ]
        if spm:
            lines += ["import sentencepiece", "sp = sentencepiece.SentencePieceProcessor(model_file=\"spm.model\")"]
        lines += [
            "translator = ctranslate2.Translator(\".\", device=\"cpu\")",
            f"sentences = [\"{example}\"]",
            "tokens = [" + prefix_src + ("sp.encode(s, out_type=str)" if spm else "s.split()")
            + " for s in sentences]",
            "results = translator.translate_batch(tokens, beam_size=4"
            + (f", target_prefix=[[\"{lang_token(tgt)}\"]] * len(tokens)" if dec else "") + ")",
            "for r in results:",
            "    out = r.hypotheses[0]" + ("[1:]  # drop the target language token" if dec else ""),
            "    print(" + ("sp.decode(out)" if spm else "\" \".join(out)") + ")",
            "```",
            "",
        ]
    return "\n".join(lines)


def langs_txt(langs: Optional[List[str]]) -> Optional[str]:
    return "\n".join(langs) + "\n" if langs else None


def lang_pairs_txt(pairs: List[str]) -> str:
    return ",".join(pairs) + "\n"
