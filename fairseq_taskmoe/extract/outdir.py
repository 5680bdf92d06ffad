"""Where an extract may be written, and which vocabulary files go with it.

``--force`` replaces only an earlier extract (a directory holding
``extract.json``) and never a directory that holds an input of the run (the
checkpoint, the data dirs): anything else could be a training run or a corpus.

Vocabulary files (``dict.*.txt``, ``spm.model``) come only from a directory the
user named (``--data``) or from the checkpoint's own directory (an earlier
extract has them there). The checkpoint's recorded training data dir
(``cfg.task.data``) is never followed: a checkpoint from elsewhere would
decide which of your files get copied. It is only quoted as a hint.
"""

import glob
import json
import os
from typing import Iterable, Optional, Sequence

from fairseq_taskmoe.checkpoints import atomic_copy, check_writable, recover_dir

MARKER = "extract.json"


def is_extract_dir(path: str) -> bool:
    """An earlier extract: a directory whose extract.json is a JSON object naming its ``tasks``."""
    marker = os.path.join(path, MARKER)
    if not (os.path.isdir(path) and os.path.isfile(marker)):
        return False
    try:
        with open(marker) as f:
            report = json.load(f)
        return isinstance(report, dict) and "tasks" in report
    except (OSError, ValueError):
        return False


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def check_out_dir(out_dir: str, force: bool, inputs: Iterable[str], log=None):
    """Refuse an ``--out`` that would lose data; ``log`` gets notes about interrupted earlier runs."""
    if not out_dir:
        raise ValueError("--out is required")
    for note in recover_dir(out_dir, is_extract_dir):
        if log is not None:
            log(note)
    for item in inputs:
        if item and _inside(item, out_dir):
            raise ValueError(f"--out {out_dir} contains an input of this run ({item}); it is never "
                             "replaced, even with --force: choose another --out")
    check_writable(out_dir)
    if not os.path.lexists(out_dir):
        return
    if not force:
        raise FileExistsError(f"--out {out_dir} already exists; pass --force to replace it (only an "
                              f"earlier extract, a directory with {MARKER}, can be replaced)")
    if not is_extract_dir(out_dir):
        raise ValueError(f"--out {out_dir} exists and is not an earlier extract (no {MARKER}); "
                         "--force replaces only extracts: choose another --out or remove it yourself")


def _has_dicts(directory: str) -> bool:
    return bool(glob.glob(os.path.join(glob.escape(directory), "dict.*.txt")))


def vocab_dir(data_dir: Optional[str], checkpoint: str, recorded: Optional[str]) -> str:
    """The directory the dictionaries are copied from: ``--data``, else next to the checkpoint."""
    if data_dir:
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(f"--data {data_dir}: no such directory")
        if not _has_dicts(data_dir):
            raise ValueError(f"--data {data_dir}: no dict.*.txt in it (give the binarized data dir "
                             "the model was trained on)")
        return os.path.abspath(data_dir)
    beside = os.path.dirname(os.path.abspath(checkpoint))
    if _has_dicts(beside):
        return beside
    hint = f" (the checkpoint records its training data dir as {recorded})" if recorded else ""
    raise ValueError(f"--data is needed: there is no dict.*.txt next to {checkpoint}, and the output "
                     f"must carry the vocabulary; pass --data DIR, the binarized data dir{hint}")


def check_langs(directory: str, langs: Sequence[str], flag: str):
    """Every language of the kept pairs has its dict.LANG.txt in ``directory``."""
    missing = [l for l in langs if not os.path.isfile(os.path.join(directory, f"dict.{l}.txt"))]
    if missing:
        raise ValueError(f"{flag} {directory}: no dictionary for {', '.join(missing)} "
                         f"(expected {', '.join(f'dict.{l}.txt' for l in missing)})")


def copy_vocab(data_dir: str, dest: str) -> list:
    """Copy ``dict.*.txt`` and a sentencepiece model (``spm.model`` in or next to the data)."""
    copied = []
    for path in sorted(glob.glob(os.path.join(glob.escape(data_dir), "dict.*.txt"))):
        atomic_copy(path, os.path.join(dest, os.path.basename(path)))
        copied.append(os.path.basename(path))
    for cand in (os.path.join(data_dir, "spm.model"), os.path.join(os.path.dirname(data_dir), "spm.model")):
        if os.path.isfile(cand):
            atomic_copy(cand, os.path.join(dest, "spm.model"))
            copied.append("spm.model")
            break
    return copied
