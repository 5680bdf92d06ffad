"""Read and validate the dense checkpoint that ``fairseq-taskmoe-upcycle`` starts from.

Accepted: a fairseq encoder-decoder transformer (any ``--arch`` of the
``transformer`` model family, or ``transformer_taskmoe*`` with no MoE layer),
trained with ``translation`` (bilingual) or ``translation_multi_simple_epoch``
(or ours, ``translation_multi_simple_epoch_taskmoe``). Its arguments may be
stored as ``cfg.model`` (an argparse Namespace, or a plain dict as in a
dataclass config or a ``--format stock`` extract) or, in old checkpoints, as
``args``. Everything here reads the loaded state only: nothing is allocated
before the args and the state agree.
"""

import argparse
import copy
import os
from dataclasses import dataclass
from typing import List, Optional

from fairseq_taskmoe.checkpoints import load_source

MULTILINGUAL_TASKS = ("translation_multi_simple_epoch", "translation_multi_simple_epoch_taskmoe")
BILINGUAL_TASKS = ("translation",)
SUPPORTED_TASKS = MULTILINGUAL_TASKS + BILINGUAL_TASKS


@dataclass
class DenseSource:
    """A validated dense checkpoint."""

    path: str
    state: dict  # the loaded checkpoint (its "model" is the dense state dict)
    model_ns: argparse.Namespace  # model args, the arch's defaults filled in (a copy)
    task_ns: argparse.Namespace  # task args (a copy)
    arch: str
    task: str  # one of SUPPORTED_TASKS

    @property
    def multilingual(self) -> bool:
        return self.task in MULTILINGUAL_TASKS

    def pairs(self) -> List[str]:
        """Language pairs the dense model was trained on (multilingual), else [src-tgt]."""
        if self.multilingual:
            pairs = getattr(self.task_ns, "lang_pairs", None) or []
            return list(pairs) if isinstance(pairs, (list, tuple)) else [p for p in str(pairs).split(",") if p]
        src, tgt = getattr(self.task_ns, "source_lang", None), getattr(self.task_ns, "target_lang", None)
        return [f"{src}-{tgt}"] if src and tgt else []


def _as_namespace(group, path: str, what: str) -> Optional[argparse.Namespace]:
    if group is None:
        return None
    if isinstance(group, argparse.Namespace):
        return copy.copy(group)
    if isinstance(group, dict):
        if any(isinstance(v, dict) for k, v in group.items() if k in ("encoder", "decoder")):
            raise ValueError(f"{path}: the {what} config is nested (encoder.* / decoder.* groups); "
                             "fairseq-taskmoe-upcycle reads the flat transformer args "
                             "(encoder_embed_dim, ...) that --arch transformer* checkpoints store")
        return argparse.Namespace(**group)
    raise ValueError(f"{path}: unreadable {what} config (a {type(group).__name__})")


def _groups(state: dict, path: str):
    """(model Namespace, task Namespace) of a fairseq checkpoint, whichever way it stores them."""
    cfg = state.get("cfg")
    model = task = None
    if isinstance(cfg, dict):
        model = _as_namespace(cfg.get("model"), path, "model")
        task = _as_namespace(cfg.get("task"), path, "task")
    legacy = _as_namespace(state.get("args"), path, "args")
    model, task = model or legacy, task or legacy or model
    if model is None:
        raise ValueError(f"{path}: the checkpoint stores no model args (neither cfg.model nor args)")
    return model, task


def _name(ns, *attrs) -> Optional[str]:
    for attr in attrs:
        value = getattr(ns, attr, None)
        if value:
            return str(value)
    return None


def _check_transformer(arch: str, path: str):
    from fairseq.models import ARCH_MODEL_REGISTRY
    from fairseq.models.transformer import TransformerModelBase

    from fairseq_taskmoe.models.transformer_taskmoe import TransformerTaskMoEModel

    if arch not in ARCH_MODEL_REGISTRY:
        raise ValueError(f"{path}: unknown --arch {arch!r} (not registered with fairseq); "
                         "fairseq-taskmoe-upcycle needs a fairseq transformer checkpoint")
    cls = ARCH_MODEL_REGISTRY[arch]
    if not issubclass(cls, TransformerModelBase):
        raise ValueError(f"{path}: --arch {arch} is a {cls.__name__}, not a fairseq transformer; "
                         "upcycling copies transformer FFNs into experts, so it needs a checkpoint "
                         "trained with --arch transformer* (or transformer_taskmoe* with --moe-freq 0)")
    return cls, issubclass(cls, TransformerTaskMoEModel)


def _check_no_moe(state: dict, model_ns, ours: bool, path: str):
    moe_keys = [k for k in state["model"] if ".moe." in k]
    if ours:
        from fairseq_taskmoe.config import moe_config_from_args

        try:
            cfg = moe_config_from_args(model_ns)
        except ValueError as err:
            raise ValueError(f"{path}: invalid MoE args in the checkpoint: {err}") from err
        if cfg.layout is not None:
            raise ValueError(f"{path}: a --moe-layout model (an extract); upcycle the dense model "
                             "it came from, or a transformer_taskmoe model trained with --moe-freq 0")
        layers = {side: int(getattr(model_ns, f"{side}_layers")) for side in ("encoder", "decoder")}
        if any(spec for side, n in layers.items() for spec in cfg.layer_plan(side, n)):
            moe_keys = moe_keys or ["(per its --moe-freq / --moe-*-routing args)"]
    if moe_keys:
        raise ValueError(f"{path}: the checkpoint already has MoE layers ({moe_keys[0]}, ...); "
                         "fairseq-taskmoe-upcycle starts from a dense model (fine-tune an MoE "
                         "checkpoint with fairseq-train --finetune-from-model instead)")


def read_dense(path) -> DenseSource:
    """Load ``path`` (weights_only) and check that it is a dense transformer we can upcycle."""
    from fairseq.models import ARCH_CONFIG_REGISTRY

    path = os.fspath(path)
    state = load_source(path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    model_ns, task_ns = _groups(state, path)
    arch = _name(model_ns, "arch", "_name")
    if arch is None:
        raise ValueError(f"{path}: the model args name no --arch")
    _, ours = _check_transformer(arch, path)
    _check_no_moe(state, model_ns, ours, path)
    task = _name(task_ns, "task", "_name")
    if task not in SUPPORTED_TASKS:
        raise ValueError(f"{path}: trained with --task {task}; fairseq-taskmoe-upcycle supports "
                         f"{', '.join(SUPPORTED_TASKS)}")
    ARCH_CONFIG_REGISTRY[arch](model_ns)  # the arch's defaults, as fairseq applies them on load
    for side in ("encoder", "decoder"):
        n = getattr(model_ns, f"{side}_layers", None)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{path}: model arg {side}_layers={n!r} is not a layer count")
        have = {k.split(".")[2] for k in state["model"] if k.startswith(f"{side}.layers.")}
        if len(have) != n:
            raise ValueError(f"{path}: model args say {side}_layers={n}, the state has {len(have)} "
                             f"{side} layers")
    return DenseSource(path, state, model_ns, task_ns, arch, task)


def known_languages(src: DenseSource, langs_override: Optional[List[str]] = None) -> List[str]:
    """The language list (language-token order) of a multilingual model, as fairseq derives it.

    ``--langs`` (``langs_override``) wins; then the checkpoint's ``--langs``; then its
    ``--lang-dict`` file (must be readable here); else the sorted languages of its pairs
    (fairseq's inference when neither flag was given at training).
    """
    if langs_override:
        return list(langs_override)
    ns = src.task_ns
    langs = getattr(ns, "langs", None)
    if langs:
        return list(langs) if isinstance(langs, (list, tuple)) else [l for l in str(langs).split(",") if l]
    lang_dict = getattr(ns, "lang_dict", None)
    if lang_dict:
        if not os.path.isfile(lang_dict):
            raise FileNotFoundError(
                f"{src.path} was trained with --lang-dict {lang_dict}, which is not readable here; "
                "pass --langs with the languages of that file, in its order")
        with open(lang_dict, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    return sorted({lang for pair in src.pairs() for lang in pair.split("-")})
