"""Sequence-level distillation data (Kim & Rush 2016) for bench/quality.py.

The teacher's beam output on training sources becomes the student's targets:
``fairseq-generate --gen-subset train`` per direction (H- lines, sentencepiece
pieces, no detokenization), sources read back from the binarized train split,
both written as piece text and binarized with ``fairseq-preprocess`` using the
teacher's dictionary. Each direction gets its own ``train.SRC-TGT.*`` files
(fairseq's multilingual loader prefers them over the reversed pair), and the
valid/test files of the original data are linked in.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

from fairseq_taskmoe.data.binarize import pair_file


def _bin(name, python_bin):
    return str(Path(python_bin).parent / name)


def source_pieces(data, src, tgt, ids):
    """Source sentences ``ids`` of the train split of src->tgt, as piece strings."""
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(Path(data) / f"dict.{src}.txt"))
    dataset = data_utils.load_indexed_dataset(str(pair_file(data, "train", src, tgt, src)), dictionary)
    return {i: dictionary.string(dataset[i]) for i in ids}


def train_subset_as(data, split, dest, src, tgt, max_sentences):
    """``dest`` holding the first ``max_sentences`` train pairs of src->tgt as split ``split``.

    fairseq-generate on the "train" split of a multilingual task loads every
    training pair behind one sampler (and one collater that stamps the first
    pair's language ids), and its --num-shards is ignored by that task; under
    any other split name it loads only -s/-t. So the subset is written out.
    """
    from fairseq.data import Dictionary, data_utils, indexed_dataset

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for lang in (src, tgt):
        prefix = pair_file(data, "train", src, tgt, lang)
        dictionary = Dictionary.load(str(Path(data) / f"dict.{lang}.txt"))
        dataset = data_utils.load_indexed_dataset(str(prefix), dictionary)
        n = min(len(dataset), max_sentences) if max_sentences else len(dataset)
        out = dest / f"{split}.{src}-{tgt}.{lang}"
        builder = indexed_dataset.make_builder(str(out) + ".bin", "mmap", vocab_size=len(dictionary))
        for i in range(n):
            builder.add_item(dataset[i])
        builder.finalize(str(out) + ".idx")
    for path in Path(data).glob("dict.*.txt"):
        if not (dest / path.name).exists():
            shutil.copy2(path, dest / path.name)
    return dest


def teacher_outputs(python_bin, ckpt, data, src, tgt, lang_pairs, task_flags, max_sentences, beam, env, work):
    """{train sentence id: hypothesis pieces} for the first ``max_sentences`` sources (0: all)."""
    linked = train_subset_as(data, "distill", Path(work) / f"{src}-{tgt}", src, tgt, max_sentences)
    flags = [str(linked), *task_flags[1:]]  # task_flags[0] is the data dir
    cmd = [_bin("fairseq-generate", python_bin), *flags, "-s", src, "-t", tgt, "--path", str(ckpt),
           "--gen-subset", "distill", "--beam", str(beam), "--max-tokens", "8000", "--num-workers", "0",
           "--max-len-a", "1.2", "--max-len-b", "10",
           "--skip-invalid-size-inputs-valid-test"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"teacher fairseq-generate {src}-{tgt} failed:\n{proc.stderr[-3000:]}")
    hyps = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^H-(\d+)\t[^\t]*\t(.*)$", line)
        if m:
            hyps[int(m.group(1))] = m.group(2)
    return hyps


def build_student_data(python_bin, ckpt, data, out, pairs, lang_pairs, task_flags, max_sentences, beam,
                       env, log=print):
    """Binarized distilled corpus in ``out`` (skipped when ``out/DONE`` exists)."""
    out = Path(out)
    if (out / "DONE").is_file():
        log(f"distill: {out} exists, skipped")
        return out
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    report = {}
    for pair in pairs:
        src, tgt = pair.split("-")
        hyps = teacher_outputs(python_bin, ckpt, data, src, tgt, lang_pairs, task_flags, max_sentences,
                               beam, env, out / "links")
        srcs = source_pieces(data, src, tgt, sorted(hyps))
        # An empty hypothesis is what the teacher said (EOS only): kept, as in Kim & Rush.
        ids = [i for i in sorted(hyps) if srcs[i].strip()]
        (raw / f"train.{src}-{tgt}.{src}").write_text("".join(srcs[i] + "\n" for i in ids))
        (raw / f"train.{src}-{tgt}.{tgt}").write_text("".join(hyps[i] + "\n" for i in ids))
        report[pair] = len(ids)
        log(f"distill: {pair} {len(ids)} teacher translations")
        preprocess = [_bin("fairseq-preprocess", python_bin), "--source-lang", src, "--target-lang", tgt,
                      "--trainpref", str(raw / f"train.{src}-{tgt}"), "--destdir", str(out),
                      "--srcdict", str(Path(data) / f"dict.{src}.txt"),
                      "--tgtdict", str(Path(data) / f"dict.{tgt}.txt"), "--workers", "1"]
        proc = subprocess.run(preprocess, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"fairseq-preprocess {pair} failed:\n{proc.stderr[-3000:]}")
    for path in Path(data).iterdir():  # valid/test splits and vocabularies of the original data
        if path.name.startswith(("valid.", "test.")) or path.name.startswith("dict.") or path.name in (
                "spm.model", "lang_pairs.txt", "langs.txt"):
            target = out / path.name
            if target.exists() or target.is_symlink():
                target.unlink()
            shutil.copy2(path, target) if path.name.startswith("dict.") else target.symlink_to(path.resolve())
    (out / "DONE").write_text(str(report) + "\n")
    return out
