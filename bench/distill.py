"""Sequence-level distillation data (Kim & Rush 2016) for bench/quality.py.

The teacher's beam output on training sources becomes the student's targets:
per direction, a seeded uniform sample of ``max_sentences`` training pairs
(its own sample per direction; all pairs when 0) is written out as a split and
translated with ``fairseq-generate`` (H- lines, sentencepiece pieces, no
detokenization), sources read back from that split,
both written as piece text and binarized with ``fairseq-preprocess`` using the
teacher's dictionary. Each direction gets its own ``train.SRC-TGT.*`` files
(fairseq's multilingual loader prefers them over the reversed pair), and the
valid/test files of the original data are linked in.
"""

import json
import random
import re
import shutil
import subprocess
from pathlib import Path

from fairseq_taskmoe.data.binarize import pair_file


def _bin(name, python_bin):
    return str(Path(python_bin).parent / name)


def source_pieces(data, split, src, tgt, ids):
    """Source sentences ``ids`` of ``split`` of src->tgt, as piece strings."""
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(Path(data) / f"dict.{src}.txt"))
    dataset = data_utils.load_indexed_dataset(str(pair_file(data, split, src, tgt, src)), dictionary)
    return {i: dictionary.string(dataset[i]) for i in ids}


def sample_ids(n_total, max_sentences, seed, src, tgt):
    """Sorted ids of a uniform sample, without replacement, of ``max_sentences`` of ``n_total``
    training pairs (all when 0 or more than there are). Each direction draws its own sample
    (the seed is mixed with the direction), and the sample does not depend on the file order:
    the first N pairs of a corpus built catalog by catalog would be a few packages' strings."""
    if not max_sentences or max_sentences >= n_total:
        return list(range(n_total))
    return sorted(random.Random(f"{seed}:{src}-{tgt}").sample(range(n_total), max_sentences))


def train_subset_as(data, split, dest, src, tgt, max_sentences, seed=1):
    """(``dest``, ids): ``dest`` holds a seeded sample of ``max_sentences`` train pairs of
    src->tgt (:func:`sample_ids`) as split ``split``; ``ids`` are their train ids.

    fairseq-generate on the "train" split of a multilingual task loads every
    training pair behind one sampler (and one collater that stamps the first
    pair's language ids), and its --num-shards is ignored by that task; under
    any other split name it loads only -s/-t. So the subset is written out.
    """
    from fairseq.data import Dictionary, data_utils, indexed_dataset

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    ids = None
    for lang in (src, tgt):
        prefix = pair_file(data, "train", src, tgt, lang)
        dictionary = Dictionary.load(str(Path(data) / f"dict.{lang}.txt"))
        dataset = data_utils.load_indexed_dataset(str(prefix), dictionary)
        ids = ids if ids is not None else sample_ids(len(dataset), max_sentences, seed, src, tgt)
        out = dest / f"{split}.{src}-{tgt}.{lang}"
        builder = indexed_dataset.make_builder(str(out) + ".bin", "mmap", vocab_size=len(dictionary))
        for i in ids:
            builder.add_item(dataset[i])
        builder.finalize(str(out) + ".idx")
    for path in Path(data).glob("dict.*.txt"):
        if not (dest / path.name).exists():
            shutil.copy2(path, dest / path.name)
    return dest, ids


def teacher_outputs(python_bin, ckpt, data, src, tgt, lang_pairs, task_flags, max_sentences, beam, env, work,
                    seed=1):
    """(sample dir, train ids of the sample, {sample index: hypothesis pieces})."""
    linked, ids = train_subset_as(data, "distill", Path(work) / f"{src}-{tgt}", src, tgt, max_sentences, seed)
    flags = [str(linked), *task_flags[1:]]  # task_flags[0] is the data dir
    cmd = [_bin("fairseq-generate", python_bin), *flags, "-s", src, "-t", tgt, "--path", str(ckpt),
           "--gen-subset", "distill", "--beam", str(beam), "--max-tokens", "8000", "--num-workers", "0",
           "--max-len-a", "1.2", "--max-len-b", "10", "--required-batch-size-multiple", "1",
           "--skip-invalid-size-inputs-valid-test"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"teacher fairseq-generate {src}-{tgt} failed:\n{proc.stderr[-3000:]}")
    hyps = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^H-(\d+)\t[^\t]*\t(.*)$", line)
        if m:
            hyps[int(m.group(1))] = m.group(2)
    return linked, ids, hyps


def build_student_data(python_bin, ckpt, data, out, pairs, lang_pairs, task_flags, max_sentences, beam,
                       env, log=print, seed=1):
    """Binarized distilled corpus in ``out`` (skipped when ``out/DONE`` exists, and direction by
    direction after an interruption); ``out/sample.json`` records, per direction, the train ids the
    teacher translated."""
    out = Path(out)
    if (out / "DONE").is_file():
        log(f"distill: {out} exists, skipped")
        return out
    raw = out / "teacher_text"  # not raw/: that name holds detokenized references in a data dir
    raw.mkdir(parents=True, exist_ok=True)
    report = {}
    for pair in pairs:
        src, tgt = pair.split("-")
        done = out / f"sample.{pair}.json"  # a direction finished by an interrupted run is kept
        if done.is_file():
            report[pair] = json.loads(done.read_text())
            log(f"distill: {pair} done, skipped")
            continue
        linked, train_ids, hyps = teacher_outputs(python_bin, ckpt, data, src, tgt, lang_pairs, task_flags,
                                                  max_sentences, beam, env, out / "links", seed)
        srcs = source_pieces(linked, "distill", src, tgt, sorted(hyps))
        # An empty hypothesis is what the teacher said (EOS only): kept, as in Kim & Rush.
        ids = [i for i in sorted(hyps) if srcs[i].strip()]
        (raw / f"train.{src}-{tgt}.{src}").write_text("".join(srcs[i] + "\n" for i in ids))
        (raw / f"train.{src}-{tgt}.{tgt}").write_text("".join(hyps[i] + "\n" for i in ids))
        report[pair] = {"requested": max_sentences or "all", "sampled": len(train_ids),
                        "translated": len(ids), "train_ids": [train_ids[i] for i in ids]}
        log(f"distill: {pair} {len(ids)} teacher translations of a sample of {len(train_ids)} train pairs")
        preprocess = [_bin("fairseq-preprocess", python_bin), "--source-lang", src, "--target-lang", tgt,
                      "--trainpref", str(raw / f"train.{src}-{tgt}"), "--destdir", str(out),
                      "--srcdict", str(Path(data) / f"dict.{src}.txt"),
                      "--tgtdict", str(Path(data) / f"dict.{tgt}.txt"), "--workers", "1"]
        proc = subprocess.run(preprocess, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"fairseq-preprocess {pair} failed:\n{proc.stderr[-3000:]}")
        done.write_text(json.dumps(report[pair]) + "\n")
    for path in Path(data).iterdir():  # valid/test splits and vocabularies of the original data
        if path.name.startswith(("valid.", "test.")) or path.name.startswith("dict.") or path.name in (
                "spm.model", "lang_pairs.txt", "langs.txt"):
            target = out / path.name
            if target.exists() or target.is_symlink():
                target.unlink()
            shutil.copy2(path, target) if path.name.startswith("dict.") else target.symlink_to(path.resolve())
    (out / "sample.json").write_text(json.dumps(report) + "\n")
    (out / "DONE").write_text(json.dumps({p: r["translated"] for p, r in report.items()}) + "\n")
    return out
