"""``fairseq-taskmoe-extract CKPT --tasks all``: every task of the checkpoint, one extract each.

Layout of ``--out`` (written to a temp dir and renamed into place, like every extract)::

    extract.json      tasks, and per task its directory, pairs and parameter counts
    <task>/           the task's extract (as ``--tasks <its pairs>`` writes it)
    spm.model, dict.*.txt   --format ctranslate2 only: written once for all tasks

The vocabulary is written once where the format allows it: a CTranslate2 export
carries its own ``shared_vocabulary.json`` and finds ``spm.model`` next to its
directory (``serve.text.find_spm``). A plugin or stock extract is a fairseq checkpoint
whose ``dict.*.txt`` must lie next to it (fairseq loads the dictionaries from the
checkpoint's directory), so each task directory keeps its own copy.
"""

import os
import re
from typing import Dict, List, Sequence

from fairseq_taskmoe.checkpoints import (
    atomic_dir, atomic_write_json, lang_pairs, load_source, model_args, sha256, task_args,
)
from fairseq_taskmoe.checkpoints.validate import check_moe_state
from fairseq_taskmoe.extract import outdir
from fairseq_taskmoe.tasks.translation_multi_taskmoe import task_key

ALL = "all"
SHARED_VOCAB_FORMATS = ("ctranslate2",)
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def wants_all(tasks: Sequence[str]) -> bool:
    """``--tasks all``; ``all`` mixed with language pairs is refused."""
    tasks = list(tasks)
    if ALL not in tasks:
        return False
    if tasks != [ALL]:
        raise ValueError(f"--tasks all takes no language pairs besides it; got {' '.join(tasks)}")
    return True


def pairs_by_task(checkpoint: str, state: dict = None) -> Dict[str, List[str]]:
    """{task name: the model's trained pairs of that task}, tasks in gate order."""
    state = state if state is not None else load_source(checkpoint)
    model_ns = model_args(state, checkpoint)
    task_ns = task_args(state) or model_ns
    moe_cfg, _ = check_moe_state(state, model_ns, checkpoint)
    out = {name: [] for name in moe_cfg.task_names}
    for pair in lang_pairs(task_ns):
        key = task_key(moe_cfg.task_by, *pair.split("-"))
        if key in out:
            out[key].append(pair)
    missing = [name for name, pairs in out.items() if not pairs]
    if missing:
        raise ValueError(f"{checkpoint}: tasks {', '.join(missing)} have no trained language pair "
                         f"(--lang-pairs {','.join(lang_pairs(task_ns))}); --tasks all cannot name them")
    for name in out:
        if not SAFE_NAME.match(name):
            raise ValueError(f"{checkpoint}: task name {name!r} cannot be a directory name; extract it "
                             "with --tasks SRC-TGT instead of --tasks all")
    return out


def extract_all(checkpoint: str, out_dir: str, fmt: str, force: bool = False, target_langs=(),
                data_dir=None, log=None, **kwargs) -> dict:
    """Write one extract per task of ``checkpoint`` under ``out_dir``; return extract.json's content.

    ``kwargs`` go to every per-task :func:`fairseq_taskmoe.extract.extract` call.
    """
    from fairseq_taskmoe.extract.api import extract

    if list(target_langs):
        raise ValueError("--tasks all extracts every task; leave out --target-langs")
    if data_dir and not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data {data_dir}: no such directory")
    outdir.check_out_dir(out_dir, force, [checkpoint, data_dir, kwargs.get("prune_data")], log)
    state = load_source(checkpoint)
    tasks = pairs_by_task(checkpoint, state)
    recorded = getattr(task_args(state) or model_args(state, checkpoint), "data", None)
    del state
    vocab = outdir.vocab_dir(data_dir, checkpoint, recorded)
    shared = fmt in SHARED_VOCAB_FORMATS
    report = {"source_checkpoint": os.path.abspath(checkpoint), "source_sha256": sha256(checkpoint),
              "tasks": list(tasks), "pairs": [p for ps in tasks.values() for p in ps], "format": fmt,
              "all_tasks": True, "vocab_dir": vocab, "extracts": {}}
    with atomic_dir(out_dir, replace=force) as tmp:
        for name, pairs in tasks.items():
            sub = extract(checkpoint, pairs, os.path.join(tmp, name), fmt=fmt, data_dir=vocab,
                          log=log, copy_vocab=not shared, **kwargs)
            report["extracts"][name] = {
                "dir": name, "pairs": pairs, "params_after": sub["params_after"],
                "decoder_experts_kept_fraction": sub["decoder_experts_kept_fraction"]}
            report.setdefault("params_before", sub["params_before"])
        report["vocab_files"] = outdir.copy_vocab(vocab, tmp) if shared else []
        atomic_write_json(os.path.join(tmp, outdir.MARKER), report, indent=2)
        outdir.check_out_dir(out_dir, force, [checkpoint, data_dir])  # still safe to replace
    return report
