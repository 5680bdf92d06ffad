"""MoEConfig: every ``--moe-*`` model flag, typed and documented; MoESettings: them parsed once.

The README's flag table is generated from this dataclass
(``python -m fairseq_taskmoe.config``), so help text lives here only.
``MoEConfig`` is the CLI and what checkpoints store (strings, as argparse gave
them, so old checkpoints keep loading); ``moe_config_from_args`` validates it
once into a frozen ``MoESettings`` (layout as a mapping, task names as a tuple,
choices as plain ``str``) that every consumer reads instead of re-parsing.
"""

import json
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Tuple

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from fairseq_taskmoe.moe.experts import EXPERT_IMPLS
from fairseq_taskmoe.moe.routing import ROUTINGS, SECOND_POLICIES, check_top_k

SIDES = ("encoder", "decoder")
ROUTING_CHOICES = ChoiceEnum([*ROUTINGS, "none"])
TASK_BY_CHOICES = ChoiceEnum(["target_lang", "lang_pair", "source_lang"])
SECOND_EXPERT_CHOICES = ChoiceEnum(list(SECOND_POLICIES))
EXPERT_IMPL_CHOICES = ChoiceEnum(list(EXPERT_IMPLS))


@dataclass
class MoEConfig(FairseqDataclass):
    moe_expert_count: int = field(
        default=8, metadata={"help": "number of experts E in each MoE layer (paper: 32)"}
    )
    moe_freq: int = field(
        default=2,
        metadata={"help": "an MoE layer replaces the FFN of every Nth layer (layers N-1, 2N-1, ...); "
                  "paper: 2; 0 disables MoE layers"},
    )
    moe_top_k: int = field(default=2, metadata={"help": "experts per token, 1 or 2"})
    moe_encoder_routing: ROUTING_CHOICES = field(
        default="token",
        metadata={"help": "encoder routing: token (per-token gate), sentence (token gate logits "
                  "averaged over the sentence), sentence-pooled (gate on the mean-pooled sentence), "
                  "task (gate on the task id only; extractable), none (dense encoder)"},
    )
    moe_decoder_routing: ROUTING_CHOICES = field(
        default="task",
        metadata={"help": "decoder routing, same choices as --moe-encoder-routing; sentence modes use "
                  "a causal prefix mean in the decoder"},
    )
    moe_task_by: TASK_BY_CHOICES = field(
        default="target_lang",
        metadata={"help": "what a task is: target_lang (paper's best for decoders; unseen pairs into a "
                  "known language work), lang_pair, or source_lang"},
    )
    moe_task_names: str = field(
        default="",
        metadata={"help": "comma-separated task names in gate order; filled from --lang-pairs by the "
                  "translation_multi_simple_epoch_taskmoe task, stored in the checkpoint; resuming or "
                  "fine-tuning keeps the checkpoint's list (rows matched by name, a task the "
                  "checkpoint lacks is an error unless --moe-new-tasks)"},
    )
    moe_new_tasks: bool = field(
        default=False,
        metadata={"help": "fine-tuning with a fresh optimizer (--finetune-from-model or "
                  "--reset-optimizer): tasks of --lang-pairs that the checkpoint lacks get new "
                  "task-gate rows after the checkpoint's, initialised as at the start of training"},
    )
    moe_capacity_factor: float = field(
        default=1.25,
        metadata={"help": "token routing, training, encoder: each expert takes at most "
                  "ceil(factor * k * tokens / E) tokens; overflow is dropped (residual only); must be "
                  "> 0 (--moe-dropless for no limit); decoder token routing is always dropless "
                  "(a batch-wide queue would leak future positions)"},
    )
    moe_eval_capacity_factor: float = field(
        default=0.0,
        metadata={"help": "token routing, evaluation/inference capacity factor (encoder); <= 0 means "
                  "dropless"},
    )
    moe_dropless: bool = field(
        default=False,
        metadata={"help": "never drop tokens (token routing too); sentence and task routing, and "
                  "decoder token routing, are always dropless"},
    )
    moe_second_expert_policy: SECOND_EXPERT_CHOICES = field(
        default="all",
        metadata={"help": "top-2 second expert in training: all (always), sampling (sampled by gate "
                  "probability), random (kept with probability 2*g2, GShard; a dropped second takes "
                  "no capacity slot); inference uses all. A token that loses one of its two experts "
                  "(random policy or capacity) gives the other weight 1"},
    )
    moe_gate_fp32: bool = field(
        default=False,
        metadata={"help": "compute the gate in fp32 with autocast off under --fp16/--bf16/--amp (the "
                  "gate softmax and top-k always run in fp32)"},
    )
    moe_expert_impl: EXPERT_IMPL_CHOICES = field(
        default="auto",
        metadata={"help": "how experts run: grouped (one torch._grouped_mm per FFN matmul for all "
                  "experts), loop (one matmul per active expert), auto (grouped where "
                  "torch._grouped_mm takes the device, dtype and dims and is the faster one: CUDA; "
                  "the loop on CPU, as bench/moe_layer.py measured). Same results; the training "
                  "log names the path taken"},
    )
    moe_layout: str = field(
        default="",
        metadata={"help": "JSON per-layer override written by fairseq-taskmoe-extract: "
                  '{"encoder": {"1": {"experts": 3}}, "decoder": {"1": {"ffn_dim": 4096}}}; '
                  "empty means every --moe-freq-th layer has --moe-expert-count experts"},
    )
    moe_gather_checkpoint: bool = field(
        default=False,
        metadata={"help": "expert parallel (W > 1): gather every rank's experts and Adam moments to "
                  "rank 0 and write one complete checkpoint, as with W = 1 (small models only); by "
                  "default each rank writes its own experts-<set>-rank-<r>.pt beside fairseq's "
                  "checkpoint_*.pt (docs/PARALLEL.md)"},
    )


# {side: {layer index: {"experts": N} or {"ffn_dim": W}}}
Layout = Dict[str, Dict[int, Dict[str, int]]]


@dataclass(frozen=True)
class MoESettings:
    """The ``--moe-*`` flags parsed once (``moe_config_from_args``); read-only.

    Field names drop the ``moe_`` prefix of the flag. ``layout`` is None
    without ``--moe-layout`` (every ``freq``-th layer has ``expert_count``
    experts), else the parsed per-layer override (treat as read-only).
    """

    expert_count: int
    freq: int
    top_k: int
    encoder_routing: str
    decoder_routing: str
    task_by: str
    task_names: Tuple[str, ...]
    new_tasks: bool
    capacity_factor: float
    eval_capacity_factor: float
    dropless: bool
    second_expert_policy: str
    gate_fp32: bool
    expert_impl: str
    layout: Optional[Layout]
    gather_checkpoint: bool

    def routing(self, side: str) -> str:
        """``--moe-encoder-routing`` or ``--moe-decoder-routing``."""
        if side not in SIDES:
            raise ValueError(f"unknown side {side!r}; valid: {', '.join(SIDES)}")
        return self.encoder_routing if side == "encoder" else self.decoder_routing

    def layer_plan(self, side: str, num_layers: int) -> List[Optional[dict]]:
        """Per layer: None (dense, stock FFN), {"experts": N} or {"ffn_dim": W} (fused dense)."""
        if self.layout is not None:
            spec = self.layout.get(side, {})
            return [dict(spec[i]) if i in spec else None for i in range(num_layers)]
        if self.routing(side) == "none" or self.freq == 0:
            return [None] * num_layers
        return [{"experts": self.expert_count} if (i + 1) % self.freq == 0 else None
                for i in range(num_layers)]


def moe_config_from_args(args) -> MoESettings:
    """Validated ``MoESettings`` from a flat argparse Namespace (or DictConfig).

    Flags that ``args`` lacks (or holds as None) take ``MoEConfig``'s defaults.
    """
    cfg = MoEConfig()
    for f in fields(MoEConfig):
        if hasattr(args, f.name) and getattr(args, f.name) is not None:
            setattr(cfg, f.name, getattr(args, f.name))
    validate(cfg)
    return MoESettings(
        expert_count=cfg.moe_expert_count,
        freq=cfg.moe_freq,
        top_k=cfg.moe_top_k,
        encoder_routing=str(cfg.moe_encoder_routing),
        decoder_routing=str(cfg.moe_decoder_routing),
        task_by=str(cfg.moe_task_by),
        task_names=split_task_names(cfg.moe_task_names),
        new_tasks=bool(cfg.moe_new_tasks),
        capacity_factor=cfg.moe_capacity_factor,
        eval_capacity_factor=cfg.moe_eval_capacity_factor,
        dropless=bool(cfg.moe_dropless),
        second_expert_policy=str(cfg.moe_second_expert_policy),
        gate_fp32=bool(cfg.moe_gate_fp32),
        expert_impl=str(cfg.moe_expert_impl),
        layout=parse_layout(cfg.moe_layout) if cfg.moe_layout else None,
        gather_checkpoint=bool(cfg.moe_gather_checkpoint),
    )


def _check_choice(flag, value, choice_enum):
    valid = [str(c) for c in choice_enum]
    if str(value) not in valid:
        raise ValueError(f"--{flag} must be one of {', '.join(valid)}; got {value!r}")


def validate(cfg: MoEConfig):
    """Check the flags as given (before ``MoESettings`` converts them)."""
    _check_choice("moe-encoder-routing", cfg.moe_encoder_routing, ROUTING_CHOICES)
    _check_choice("moe-decoder-routing", cfg.moe_decoder_routing, ROUTING_CHOICES)
    _check_choice("moe-task-by", cfg.moe_task_by, TASK_BY_CHOICES)
    _check_choice("moe-second-expert-policy", cfg.moe_second_expert_policy, SECOND_EXPERT_CHOICES)
    _check_choice("moe-expert-impl", cfg.moe_expert_impl, EXPERT_IMPL_CHOICES)
    check_top_k(cfg.moe_top_k, cfg.moe_expert_count)
    if cfg.moe_freq < 0:
        raise ValueError(f"--moe-freq must be >= 0 (0 disables MoE), got {cfg.moe_freq}")


def validate_training(cfg: MoESettings):
    """Checks that apply only when training (a checkpoint's args may still hold them)."""
    if not cfg.dropless and cfg.capacity_factor <= 0:
        raise ValueError(f"--moe-capacity-factor must be > 0 in training, got "
                         f"{cfg.capacity_factor}; use --moe-dropless for token routing without "
                         "a capacity limit")


def split_task_names(text) -> Tuple[str, ...]:
    """``--moe-task-names`` (comma-separated, as checkpoints store it) as a tuple; None -> ()."""
    return tuple(t for t in str(text or "").split(",") if t)


def parse_layout(text: str) -> Layout:
    """``--moe-layout`` JSON -> {side: {layer index (int): spec}}."""
    try:
        layout = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--moe-layout is not valid JSON: {err}") from err
    if not isinstance(layout, dict):
        raise ValueError(f"--moe-layout: expected a JSON object "
                         f'{{"encoder": {{...}}, "decoder": {{...}}}}, got {layout!r}')
    parsed = {}
    for side in layout:
        if side not in SIDES:
            raise ValueError(f"--moe-layout: unknown side {side!r}; valid: {', '.join(SIDES)}")
        if not isinstance(layout[side], dict):
            raise ValueError(f"--moe-layout {side}: expected an object of layers, got {layout[side]!r}")
        parsed[side] = {}
        for idx, spec in layout[side].items():
            if not (idx.isdigit() and str(int(idx)) == idx):
                raise ValueError(f"--moe-layout {side} layer {idx!r}: the layer index must be a "
                                 'non-negative integer written as a string, e.g. "1"')
            if not (isinstance(spec, dict) and len(spec) == 1 and
                    ("experts" in spec or "ffn_dim" in spec)):
                raise ValueError(f"--moe-layout {side} layer {idx}: expected "
                                 f'{{"experts": N}} or {{"ffn_dim": W}}, got {spec!r}')
            parsed[side][int(idx)] = dict(spec)
    return parsed


def flag_table_markdown() -> str:
    """Markdown table of every --moe-* flag (model and criterion), for the README."""
    from fairseq_taskmoe.criterions.label_smoothed_cross_entropy_moe import (
        LabelSmoothedCrossEntropyMoECriterionConfig,
    )

    rows = ["| flag | default | where | help |", "| --- | --- | --- | --- |"]
    sources = [(f, "model") for f in fields(MoEConfig) if f.name.startswith("moe_")]
    sources += [(f, "criterion") for f in fields(LabelSmoothedCrossEntropyMoECriterionConfig)
                if f.name.startswith("moe_")]
    for f, where in sources:
        help_text = f.metadata["help"].replace("|", "\\|")
        rows.append(f"| `--{f.name.replace('_', '-')}` | `{f.default}` | {where} | {help_text} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(flag_table_markdown())
