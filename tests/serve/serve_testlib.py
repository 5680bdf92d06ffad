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


def ct2_variable_shapes(model_dir):
    """{variable name: shape} of a CTranslate2 ``model.bin`` (its header fields, data skipped).

    Layout read (ctranslate2 4.x ``ModelSpec._serialize``): u32 version, string spec name,
    u32 revision, u32 variable count, then per variable: string name, u8 rank, rank x u32
    dims, u8 dtype id, u32 byte count, the bytes. A string is a u16 length (NUL included),
    the characters and the NUL.
    """
    import struct
    from pathlib import Path

    data = Path(model_dir, "model.bin").read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    def string():
        nonlocal pos
        (length,) = take("H")
        pos += length
        return data[pos - length:pos - 1].decode("utf-8")

    take("I")
    string()
    take("I")
    (count,) = take("I")
    shapes = {}
    for _ in range(count):
        name = string()
        (rank,) = take("B")
        shapes[name] = take("I" * rank)
        _, nbytes = take("BI")
        pos += nbytes
    return shapes
