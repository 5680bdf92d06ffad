"""The ``transformer_taskmoe`` args of an upcycled model, from the dense args and the flags.

The dense model's own args are kept (dimensions, norms, dropout, dictionaries,
language tokens); only the model/task names and the ``--moe-*`` flags change.
Every ``--moe-*`` flag the tool does not take gets ``MoEConfig``'s default,
so the written checkpoint says exactly what a fine-tuning command line must
repeat (``fine_tune_flags``).
"""

import argparse
import copy
import os
from dataclasses import dataclass, field, fields
from typing import List, Optional, Tuple

from fairseq_taskmoe.config import MoEConfig, MoESettings, moe_config_from_args
from fairseq_taskmoe.tasks.translation_multi_taskmoe import task_names_for_pairs
from fairseq_taskmoe.upcycle.source import DenseSource, known_languages

MOE_ARCH = "transformer_taskmoe"
MOE_TASK = "translation_multi_simple_epoch_taskmoe"
PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class UpcycleOptions:
    """What ``fairseq-taskmoe-upcycle`` takes; None means ``MoEConfig``'s default."""

    expert_count: Optional[int] = None
    freq: Optional[int] = None
    top_k: Optional[int] = None
    encoder_routing: Optional[str] = None
    decoder_routing: Optional[str] = None
    task_by: Optional[str] = None
    lang_pairs: Tuple[str, ...] = ()  # empty: the dense model's pairs
    langs: Tuple[str, ...] = ()  # empty: the dense model's language list
    expert_noise: float = 0.0
    seed: int = 1
    data: Optional[str] = None


@dataclass
class UpcyclePlan:
    model_ns: argparse.Namespace  # transformer_taskmoe model args (what the checkpoint stores)
    task_ns: argparse.Namespace
    moe: MoESettings
    pairs: List[str] = field(default_factory=list)
    langs: List[str] = field(default_factory=list)  # language-token order (multilingual)


def _check_pairs(pairs, langs, path):
    for pair in pairs:
        if pair.count("-") != 1 or not all(pair.split("-")):
            raise ValueError(f"--lang-pairs takes comma-separated src-tgt pairs (e.g. en-de,de-en); "
                             f"got {pair!r}")
        missing = [lang for lang in pair.split("-") if lang not in langs]
        if missing:
            raise ValueError(
                f"--lang-pairs {pair}: language {missing[0]!r} has no language token in the "
                f"dictionary of {path} (its languages: {', '.join(langs)}); upcycling keeps the "
                "dense vocabulary, so it cannot add a language (give --langs only to name the "
                "languages the model was trained with, in their token order)")


def _moe_fields(opts: UpcycleOptions) -> dict:
    values = {f.name: f.default for f in fields(MoEConfig)}
    for flag, value in (("moe_expert_count", opts.expert_count), ("moe_freq", opts.freq),
                        ("moe_top_k", opts.top_k), ("moe_encoder_routing", opts.encoder_routing),
                        ("moe_decoder_routing", opts.decoder_routing), ("moe_task_by", opts.task_by)):
        if value is not None:
            values[flag] = value
    # Token routing with a capacity limit drops tokens (residual only), so the upcycled model
    # would not start from the dense function; dropless routes every token.
    values["moe_dropless"] = "token" in (str(values["moe_encoder_routing"]),
                                         str(values["moe_decoder_routing"]))
    return values


def build_plan(src: DenseSource, opts: UpcycleOptions) -> UpcyclePlan:
    """Validate the flags against the dense checkpoint; the upcycled model's args."""
    if opts.expert_noise < 0:
        raise ValueError(f"--expert-noise must be >= 0, got {opts.expert_noise}")
    values = _moe_fields(opts)
    if values["moe_freq"] < 1:
        raise ValueError(f"--moe-freq must be >= 1 (an MoE layer every Nth layer), got "
                         f"{values['moe_freq']}; 0 would leave the model dense")
    pairs, langs = list(opts.lang_pairs), []
    if src.multilingual:
        langs = known_languages(src, list(opts.langs))
        pairs = pairs or src.pairs()
        if not pairs:
            raise ValueError(f"{src.path}: the checkpoint names no language pairs; pass --lang-pairs")
        _check_pairs(pairs, langs, src.path)
        values["moe_task_names"] = ",".join(task_names_for_pairs(str(values["moe_task_by"]), pairs))
    else:
        if opts.lang_pairs or opts.langs:
            raise ValueError(f"--lang-pairs / --langs: {src.path} is a bilingual --task translation "
                             "model (no language tokens); leave them out")
        routed = [side for side in ("encoder", "decoder") if str(values[f"moe_{side}_routing"]) == "task"]
        if routed:
            raise ValueError(
                f"--moe-{routed[0]}-routing task: {src.path} is a bilingual --task translation model, "
                "one task, so task routing would send every sentence to the same experts; use "
                f"--moe-{routed[0]}-routing token or sentence (or none)")
        values["moe_task_names"] = ""

    model_ns, task_ns = copy.copy(src.model_ns), copy.copy(src.task_ns)
    task = MOE_TASK if src.multilingual else src.task
    for ns in (model_ns, task_ns):
        for name, value in values.items():
            setattr(ns, name, value)
        ns.arch = MOE_ARCH
        ns.task = task
        ns.user_dir = PLUGIN_DIR
        if opts.data:
            ns.data = os.path.abspath(opts.data)
        if src.multilingual:
            # An explicit language list: later --lang-pairs subsets keep the language-token ids.
            ns.lang_pairs = ",".join(pairs)
            ns.langs = list(langs)
            ns.lang_dict = None
    model_ns._name = MOE_ARCH
    task_ns._name = task
    try:
        moe = moe_config_from_args(model_ns)
    except TypeError as err:  # e.g. a non-integer count
        raise ValueError(f"invalid --moe-* value: {err}") from err
    layers = {side: int(model_ns.encoder_layers if side == "encoder" else model_ns.decoder_layers)
              for side in ("encoder", "decoder")}
    if not any(spec for side in layers for spec in moe.layer_plan(side, layers[side])):
        raise ValueError(f"no layer becomes an MoE layer: --moe-freq {moe.freq} with "
                         f"{layers['encoder']} encoder / {layers['decoder']} decoder layers and "
                         f"--moe-encoder-routing {moe.encoder_routing} / --moe-decoder-routing "
                         f"{moe.decoder_routing}; use a smaller --moe-freq")
    return UpcyclePlan(model_ns, task_ns, moe, pairs, langs)


# Spelled out in the fine-tuning command even where they equal MoEConfig's defaults.
ALWAYS_SHOWN = ("moe_expert_count", "moe_freq", "moe_top_k", "moe_encoder_routing",
                "moe_decoder_routing", "moe_task_by", "moe_dropless")


CORE_DIMS = tuple(f"{side}_{name}" for side in ("encoder", "decoder")
                  for name in ("embed_dim", "ffn_embed_dim", "layers", "attention_heads"))


def _model_flag_actions():
    from fairseq_taskmoe.models.transformer_taskmoe import TransformerTaskMoEModel

    parser = argparse.ArgumentParser(add_help=False)
    TransformerTaskMoEModel.add_args(parser)
    return [a for a in parser._actions if a.option_strings]


def _differing(ns, actions, given: dict) -> dict:
    """{dest: value} of the flags whose value in ``ns`` differs from the arch default, where the
    defaults are computed with ``given`` already set (derived defaults such as
    decoder_output_dim = decoder_embed_dim then follow the given dims)."""
    from fairseq_taskmoe.models.transformer_taskmoe import base_taskmoe_architecture

    defaults = argparse.Namespace(**given)
    base_taskmoe_architecture(defaults)
    out = {}
    for action in actions:
        value = getattr(ns, action.dest, None)
        default = getattr(defaults, action.dest, action.default)
        if action.dest in ALWAYS_SHOWN or (value is not None and value != default
                                           and not action.dest.startswith("moe_")):
            out[action.dest] = value  # (the task fills --moe-task-names from --lang-pairs)
    return out


def model_flags(ns: argparse.Namespace) -> List[str]:
    """``--arch transformer_taskmoe`` plus every model flag whose value differs from that arch's
    default (the MoE flags always), so the command line builds the same model."""
    actions = _model_flag_actions()
    # The dims are always spelled out; then, pass by pass, every flag whose value differs from
    # the default the arch derives from the flags given so far (decoder_output_dim follows
    # decoder_embed_dim, so it is not repeated unless it differs).
    given = {dest: getattr(ns, dest) for dest in CORE_DIMS if getattr(ns, dest, None) is not None}
    for _ in range(len(actions)):
        found = {k: v for k, v in _differing(ns, actions, given).items() if k not in given}
        if not found:
            break
        given.update(found)
    flags, moe = ["--arch", MOE_ARCH], []
    for action in actions:
        if action.dest not in given or given[action.dest] is None:
            continue
        value, flag = given[action.dest], action.option_strings[-1]
        target = moe if action.dest in ALWAYS_SHOWN else flags
        if isinstance(action, argparse._StoreTrueAction) or isinstance(value, bool):
            if value:
                target.append(flag)
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        if str(value) != "":
            target.extend([flag, str(value)])
    return flags + moe


def fine_tune_flags(plan: UpcyclePlan) -> List[str]:
    """The task and model flags a ``fairseq-train --finetune-from-model`` run must repeat.

    fairseq-train builds the model from its command line, then loads the weights: the
    shapes come from these flags, not from the checkpoint.
    """
    ns = plan.model_ns
    flags = ["--user-dir", PLUGIN_DIR, "--task", ns.task]
    if ns.task == MOE_TASK:
        flags += ["--lang-pairs", ",".join(plan.pairs), "--langs", ",".join(plan.langs)]
        if getattr(ns, "encoder_langtok", None):
            flags += ["--encoder-langtok", str(ns.encoder_langtok)]
        if getattr(ns, "decoder_langtok", False):
            flags += ["--decoder-langtok"]
        if str(getattr(ns, "lang_tok_style", "multilingual")) != "multilingual":
            flags += ["--lang-tok-style", str(ns.lang_tok_style)]
    else:
        flags += ["--source-lang", str(ns.source_lang), "--target-lang", str(ns.target_lang)]
    return flags + model_flags(ns)
