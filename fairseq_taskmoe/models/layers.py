"""Transformer layers whose FFN is an MoE block, and the configs their FFNs are built from.

Legend: L length, B batch, D model dim.

fairseq's layer ``forward`` runs the FFN inline (``fc2(act(fc1(x)))``), with no
hook to pass padding, task ids or incremental state to it or to return an aux
loss. These subclasses keep fairseq's attention modules, norms and dropout and
rewrite only ``forward``, returning the MoE stats beside the output. Options
that add extra modules inside the layer (``--scale-attn``, ``--scale-fc``,
``--scale-heads``, ``--scale-resids``, ``--cross-self-attention``) are refused.
"""

import copy
from typing import Dict, Optional

import torch
from fairseq.modules.transformer_layer import (
    TransformerDecoderLayerBase,
    TransformerEncoderLayerBase,
)
from torch import Tensor

from fairseq_taskmoe.config import MoESettings
from fairseq_taskmoe.moe.layer import MoELayer, MoELayerConfig


def fused_ffn_cfg(cfg, side, ffn_dim):
    """A copy of cfg whose ``side`` FFN width is ``ffn_dim`` (extracted fused layers)."""
    new = copy.deepcopy(cfg)
    getattr(new, side).ffn_embed_dim = ffn_dim
    return new


def moe_layer_config(cfg, side: str, moe: MoESettings, num_experts: int,
                     activation_fn) -> MoELayerConfig:
    """The MoE block of a ``side`` layer: fairseq's TransformerConfig ``cfg`` plus the MoE flags."""
    side_cfg = getattr(cfg, side)
    return MoELayerConfig(
        embed_dim=side_cfg.embed_dim,
        ffn_dim=side_cfg.ffn_embed_dim,
        num_experts=num_experts,
        routing=moe.routing(side),
        top_k=moe.top_k,
        activation_fn=activation_fn,
        activation_dropout=cfg.activation_dropout or cfg.relu_dropout or 0.0,
        num_tasks=len(moe.task_names),
        causal=side == "decoder",
        capacity_factor=moe.capacity_factor,
        eval_capacity_factor=moe.eval_capacity_factor,
        dropless=moe.dropless,
        second_policy=moe.second_expert_policy,
        gate_fp32=moe.gate_fp32,
        expert_impl=moe.expert_impl,
    )


def _refuse_extras(cfg, side):
    bad = [flag for flag, on in (
        ("--scale-attn", getattr(cfg, "scale_attn", False)),
        ("--scale-fc", getattr(cfg, "scale_fc", False)),
        ("--scale-heads", getattr(cfg, "scale_heads", False)),
        ("--scale-resids", getattr(cfg, "scale_resids", False)),
        ("--cross-self-attention", getattr(cfg, "cross_self_attention", False)),
    ) if on]
    if bad:
        raise ValueError(f"transformer_taskmoe {side} MoE layers do not support {', '.join(bad)}")


def _moe_sublayer(layer, x, padding_mask, task_ids, incremental_state=None):
    """fairseq's FFN sublayer (norm, residual, dropout) with ``layer.moe`` in place of fc1/fc2."""
    residual = x
    if layer.normalize_before:
        x = layer.final_layer_norm(x)
    x, stats = layer.moe(x, padding_mask, task_ids, incremental_state)
    x = layer.dropout_module(x)
    x = layer.residual_connection(x, residual)
    if not layer.normalize_before:
        x = layer.final_layer_norm(x)
    return x, stats


class MoEEncoderLayer(TransformerEncoderLayerBase):
    def __init__(self, cfg, moe: MoESettings, num_experts: int, expert_parallel=None):
        _refuse_extras(cfg, "encoder")
        super().__init__(cfg)
        self.moe = MoELayer(moe_layer_config(cfg, "encoder", moe, num_experts, self.activation_fn),
                            expert_parallel=expert_parallel)

    def build_fc1(self, *args, **kwargs):
        return None  # the experts replace fc1/fc2

    def build_fc2(self, *args, **kwargs):
        return None

    def forward(self, x, encoder_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor] = None,
                task_ids: Optional[Tensor] = None):
        """x: (L, B, D) -> ((L, B, D), MoEStats)."""
        if attn_mask is not None:
            attn_mask = attn_mask.masked_fill(attn_mask.to(torch.bool),
                                              -1e8 if x.dtype == torch.float32 else -1e4)
        residual = x
        if self.normalize_before:
            x = self.self_attn_layer_norm(x)
        x, _ = self.self_attn(query=x, key=x, value=x, key_padding_mask=encoder_padding_mask,
                              need_weights=False, attn_mask=attn_mask)
        x = self.dropout_module(x)
        x = self.residual_connection(x, residual)
        if not self.normalize_before:
            x = self.self_attn_layer_norm(x)

        return _moe_sublayer(self, x, encoder_padding_mask, task_ids)


class MoEDecoderLayer(TransformerDecoderLayerBase):
    def __init__(self, cfg, moe: MoESettings, num_experts: int, no_encoder_attn=False,
                 expert_parallel=None):
        _refuse_extras(cfg, "decoder")
        super().__init__(cfg, no_encoder_attn)
        self.moe = MoELayer(moe_layer_config(cfg, "decoder", moe, num_experts, self.activation_fn),
                            expert_parallel=expert_parallel)

    def build_fc1(self, *args, **kwargs):
        return None

    def build_fc2(self, *args, **kwargs):
        return None

    def forward(self, x, encoder_out: Optional[Tensor] = None,
                encoder_padding_mask: Optional[Tensor] = None,
                incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
                self_attn_mask: Optional[Tensor] = None,
                self_attn_padding_mask: Optional[Tensor] = None,
                need_attn: bool = False, need_head_weights: bool = False,
                task_ids: Optional[Tensor] = None):
        """x: (L, B, D) -> ((L, B, D), attn, MoEStats)."""
        if need_head_weights:
            need_attn = True
        residual = x
        if self.normalize_before:
            x = self.self_attn_layer_norm(x)
        x, _ = self.self_attn(query=x, key=x, value=x, key_padding_mask=self_attn_padding_mask,
                              incremental_state=incremental_state, need_weights=False,
                              attn_mask=self_attn_mask)
        x = self.dropout_module(x)
        x = self.residual_connection(x, residual)
        if not self.normalize_before:
            x = self.self_attn_layer_norm(x)

        attn = None
        if self.encoder_attn is not None and encoder_out is not None:
            residual = x
            if self.normalize_before:
                x = self.encoder_attn_layer_norm(x)
            x, attn = self.encoder_attn(query=x, key=encoder_out, value=encoder_out,
                                        key_padding_mask=encoder_padding_mask,
                                        incremental_state=incremental_state, static_kv=True,
                                        need_weights=need_attn or (not self.training and self.need_attn),
                                        need_head_weights=need_head_weights)
            x = self.dropout_module(x)
            x = self.residual_connection(x, residual)
            if not self.normalize_before:
                x = self.encoder_attn_layer_norm(x)

        x, stats = _moe_sublayer(self, x, self_attn_padding_mask, task_ids, incremental_state)
        return x, attn, stats
