"""Helpers for the serving tests (a unique module name; fixtures live in conftest.py)."""

from taskmoe_testlib import LANG_PAIRS, PLUGIN_DIR, run_cli


def fairseq_cli(name, data, ckpt, src, tgt, plugin=True, extra=(), input_text=None):
    task = (["--user-dir", PLUGIN_DIR, "--task", "translation_multi_simple_epoch_taskmoe"] if plugin
            else ["--task", "translation_multi_simple_epoch", "--required-batch-size-multiple", "1"])
    return run_cli(name, [
        data, *task, "--lang-pairs", LANG_PAIRS, "--encoder-langtok", "src", "--decoder-langtok",
        "-s", src, "-t", tgt, "--path", ckpt, "--num-workers", "0", *extra], input_text=input_text).stdout


def lines_by_id(stdout, prefix):
    """{sentence id: text} of fairseq's ``PREFIX-id`` lines (the last tab field)."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith(prefix + "-"):
            fields = line.split("\t")
            out[int(fields[0][len(prefix) + 1:])] = fields[-1]
    return out


def strip_langtok(source):
    """fairseq's S- line of a multilingual source starts with the language token."""
    words = source.split()
    return " ".join(words[1:] if words and words[0].startswith("__") else words)
