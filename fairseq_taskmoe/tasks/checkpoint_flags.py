"""The decoding command line checked against the checkpoint it decodes.

fairseq-generate and fairseq-interactive build the task (its dictionaries, with a
language token per language appended in the order of the language list) from the
command line, and only then load the checkpoint. Nothing in fairseq compares the
two, so a command line that differs from training gives wrong output or a
traceback:
- ``--langs`` in another order than at training swaps the language tokens
  (every output is garbage, exit 0);
- no ``--langs`` and a subset of the training ``--lang-pairs``: the inferred
  language list is shorter, so the dictionary is, and loading ends in
  ``size mismatch for encoder.embed_tokens.weight``;
- missing ``--encoder-langtok src --decoder-langtok``: the source lacks its tag
  and the first output token is free (silent);
- an unknown language: a traceback from fairseq's dataset manager.

The checkpoint knows its settings (``cfg.task``, which for fairseq's argparse-era
tasks holds every training flag). The rule: what the command line leaves out is
taken from the checkpoint (no ``--langs``: the checkpoint's language list, so a
subset of ``--lang-pairs`` simply works); what it states differently is refused,
naming the exact flags to pass. ``--langs`` is never silently replaced.

This runs in the task's ``setup_task``, before any dictionary is built; it reads
the checkpoints with ``mmap`` (only the args and the task gates are touched) and
runs the layout / NaN-gate checks of ``checkpoints.validate`` on plugin models.
"""

import logging
import os
from dataclasses import dataclass
from typing import List, Optional

from fairseq_taskmoe.checkpoints.cli import UsageError

logger = logging.getLogger(__name__)

# The stock extract's own record of what it serves (the checkpoint has no task gate).
SERVED_KEY = "taskmoe_extract"


@dataclass
class CheckpointFlags:
    """What a checkpoint says about the task flags it was trained (or extracted) with."""
    path: str
    langs: Optional[List[str]]  # order = language-token ids; None: not recoverable (--lang-dict elsewhere)
    lang_pairs: List[str]
    encoder_langtok: Optional[str]
    decoder_langtok: bool
    lang_tok_style: str
    lang_tok_replacing_bos_eos: bool
    served: Optional[dict] = None  # a stock extract: {"tasks", "moe_task_by", "pairs"}


def _get(group, name, default=None):
    if isinstance(group, dict):
        return group.get(name, default)
    return getattr(group, name, default)


def _csv(value) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _read_lang_dict(path) -> Optional[List[str]]:
    if not path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def language_list(group) -> Optional[List[str]]:
    """fairseq's language list for a task config (``MultilingualDatasetManager.load_langs``)."""
    if _get(group, "lang_dict"):
        return _read_lang_dict(_get(group, "lang_dict"))
    if _get(group, "langs"):
        return _csv(_get(group, "langs"))
    pairs = _csv(_get(group, "lang_pairs"))
    return sorted({lang for pair in pairs for lang in pair.split("-")}) or None


def task_group(state):
    """``cfg.task`` (Namespace or dict) of a loaded checkpoint, else its legacy ``args``."""
    cfg = state.get("cfg") if isinstance(state, dict) else None
    task = _get(cfg, "task") if cfg is not None else None
    return task if task is not None else state.get("args")


def served_record(state, path: str) -> Optional[dict]:
    """What a ``--format stock`` extract serves: its own record, else extract.json beside it."""
    record = state.get(SERVED_KEY) if isinstance(state, dict) else None
    if isinstance(record, dict) and record.get("tasks"):
        return record
    model = _get(state.get("cfg"), "model") if isinstance(state, dict) and state.get("cfg") is not None else None
    if _get(model, "_name") != "transformer":
        return None
    report = os.path.join(os.path.dirname(os.path.abspath(path)), "extract.json")
    if os.path.isfile(report):
        import json

        try:
            with open(report, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        if data.get("format") == "stock" and data.get("tasks"):
            return {k: data.get(k) for k in ("tasks", "moe_task_by", "pairs")}
    return None


def flags_of(state, path: str) -> CheckpointFlags:
    group = task_group(state)
    if group is None:
        raise UsageError(f"{path}: not a fairseq checkpoint (neither cfg.task nor args)")
    return CheckpointFlags(
        path=path, langs=language_list(group), lang_pairs=_csv(_get(group, "lang_pairs")),
        encoder_langtok=_get(group, "encoder_langtok") or None,
        decoder_langtok=bool(_get(group, "decoder_langtok")),
        lang_tok_style=str(_get(group, "lang_tok_style") or "multilingual"),
        lang_tok_replacing_bos_eos=bool(_get(group, "lang_tok_replacing_bos_eos")),
        served=served_record(state, path))


def inspect_checkpoint(path: str, state=None) -> CheckpointFlags:
    """Read ``path`` (weights-only, mmap), check a task-MoE model's layout and gates, return its flags."""
    from fairseq_taskmoe.checkpoints import load_checkpoint_safely, model_args
    from fairseq_taskmoe.checkpoints.validate import check_moe_state

    from fairseq_taskmoe.checkpoints import UnsafeCheckpointError

    try:
        if state is None:
            state = load_checkpoint_safely(path, mmap=True)
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise UsageError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
        try:
            model_ns = model_args(state, path)
        except ValueError:
            model_ns = None  # a stock transformer (e.g. a --format stock extract): no MoE to check
        sharded = "expert_parallel" in state or "_expert_shards" in state["model"]
        if model_ns is not None and not sharded:  # a shard set's experts live in other files
            check_moe_state(state, model_ns, path)
    except (UsageError, UnsafeCheckpointError):
        raise
    except ValueError as err:  # corrupt file, layout or NaN gates: one line under fairseq's CLIs too
        raise UsageError(str(err)) from err
    return flags_of(state, path)


def langtok_flags(encoder_langtok, decoder_langtok) -> str:
    parts = ([f"--encoder-langtok {encoder_langtok}"] if encoder_langtok else []) + (
        ["--decoder-langtok"] if decoder_langtok else [])
    return " ".join(parts) or "neither --encoder-langtok nor --decoder-langtok"


def reconcile(args, flags: CheckpointFlags) -> None:
    """Adapt ``args`` (a decoding command line) to ``flags`` where it is silent; refuse a conflict."""
    where = f"the checkpoint {flags.path}"
    have = (_get(args, "encoder_langtok") or None, bool(_get(args, "decoder_langtok")))
    want = (flags.encoder_langtok, flags.decoder_langtok)
    if have != want:
        raise UsageError(f"{where} was trained with {langtok_flags(*want)}; the command line has "
                         f"{langtok_flags(*have)}. Pass exactly: {langtok_flags(*want)}")
    style = str(_get(args, "lang_tok_style") or "multilingual")
    if style != flags.lang_tok_style:
        raise UsageError(f"{where} was trained with --lang-tok-style {flags.lang_tok_style}; "
                         f"pass --lang-tok-style {flags.lang_tok_style} (got {style})")
    if bool(_get(args, "lang_tok_replacing_bos_eos")) != flags.lang_tok_replacing_bos_eos:
        wanted = "with" if flags.lang_tok_replacing_bos_eos else "without"
        raise UsageError(f"{where} was trained {wanted} --lang-tok-replacing-bos-eos; decode {wanted} it")
    if flags.langs is None:
        return
    langs = ",".join(flags.langs)
    given = _read_lang_dict(_get(args, "lang_dict")) if _get(args, "lang_dict") else _csv(_get(args, "langs"))
    if given and given != flags.langs:
        flag = "--lang-dict" if _get(args, "lang_dict") else "--langs"
        raise UsageError(f"{flag} gives the languages {','.join(given)}, but {where} was trained with "
                         f"{langs} (the order fixes the language-token ids, so another order swaps "
                         f"languages). Pass --langs {langs}, or leave {flag} out: the task then takes "
                         "the checkpoint's list")
    for flag, lang in (("-s/--source-lang", _get(args, "source_lang")),
                       ("-t/--target-lang", _get(args, "target_lang"))):
        if lang is not None and lang not in flags.langs:
            raise UsageError(f"{flag} {lang}: not a language of {where}; its languages: "
                             f"{', '.join(flags.langs)}")
    for pair in _csv(_get(args, "lang_pairs")):
        unknown = [lang for lang in pair.split("-") if lang not in flags.langs]
        if unknown:
            raise UsageError(f"--lang-pairs {pair}: {', '.join(unknown)} is not a language of {where}; "
                             f"its languages: {', '.join(flags.langs)}")
    if not given:
        if not _get(args, "lang_dict"):
            args.langs = list(flags.langs)  # the dictionaries get the checkpoint's language tokens
        logger.info("language list taken from %s: %s", flags.path, langs)


def check_served_pair(flags: CheckpointFlags, src: str, tgt: str) -> None:
    """Refuse a pair whose task a ``--format stock`` extract does not hold (no gate refuses it)."""
    from fairseq_taskmoe.tasks.translation_multi_taskmoe import task_key

    served = flags.served
    if not served or src is None or tgt is None:
        return
    task_by = served.get("moe_task_by") or "target_lang"
    key = task_key(task_by, src, tgt)
    if key not in served["tasks"]:
        raise UsageError(f"{src}-{tgt}: task {key!r} (--moe-task-by {task_by}) is not in this extract "
                         f"{flags.path} (tasks: {', '.join(served['tasks'])}); extract that pair's task")


def decoding_paths(args) -> List[str]:
    """The checkpoints a decoding command line names (``--path a.pt:b.pt``), or []."""
    path = _get(args, "path")
    if not isinstance(path, str) or not path:
        return []
    return [p for p in path.split(os.pathsep) if p]


def check_decoding_command_line(args) -> Optional[CheckpointFlags]:
    """fairseq-generate / -interactive: inspect every ``--path`` and reconcile ``args`` with them."""
    paths = decoding_paths(args)
    if not paths:
        return None
    for p in paths:
        if not os.path.isfile(p):
            raise UsageError(f"--path {p}: no such checkpoint file")
    found = [inspect_checkpoint(p) for p in paths]
    for other in found[1:]:
        if other.langs != found[0].langs:
            raise UsageError(f"--path: {found[0].path} and {other.path} were trained with different "
                             "language lists; decode them separately")
    for flags in found:
        reconcile(args, flags)
        check_served_pair(flags, _get(args, "source_lang"), _get(args, "target_lang"))
    return found[0]
