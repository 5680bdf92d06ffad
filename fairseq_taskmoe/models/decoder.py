"""Decoder: fairseq's TransformerDecoderBase with MoE layers and task ids.

Legend: L target length, B batch, D model dim.

Overrides ``build_decoder_layer`` and the layer loop in
``extract_features_scriptable``; ``task_ids`` arrive through ``encoder_out``
(so they follow beam reordering) and the MoE stats of both sides leave through
the ``extra`` dict: ``extra["moe_stats"] = {"encoder": [...], "decoder": [...]}``.
"""

from typing import Dict, List, Optional

from fairseq.models.transformer import TransformerDecoderBase
from torch import Tensor

from fairseq_taskmoe.config import MoESettings
from fairseq_taskmoe.models.layers import MoEDecoderLayer, fused_ffn_cfg


class TaskMoEDecoder(TransformerDecoderBase):
    def __init__(self, cfg, moe_cfg: MoESettings, dictionary, embed_tokens, no_encoder_attn=False,
                 expert_parallel=None):
        self.moe_cfg = moe_cfg
        self.expert_parallel = expert_parallel  # parallel.ExpertParallelPlan, or None: all experts here
        self._plan = moe_cfg.layer_plan("decoder", cfg.decoder.layers)
        self._next_layer = 0
        super().__init__(cfg, dictionary, embed_tokens, no_encoder_attn=no_encoder_attn)

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        spec = self._plan[self._next_layer]
        self._next_layer += 1
        if spec is None:
            return super().build_decoder_layer(cfg, no_encoder_attn)
        if "ffn_dim" in spec:
            return super().build_decoder_layer(fused_ffn_cfg(cfg, "decoder", spec["ffn_dim"]),
                                               no_encoder_attn)
        return MoEDecoderLayer(cfg, self.moe_cfg, spec["experts"], no_encoder_attn, self.expert_parallel)

    def extract_features_scriptable(
        self,
        prev_output_tokens,
        encoder_out: Optional[Dict[str, List[Tensor]]],
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        full_context_alignment: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
    ):
        """Stock decoder loop plus task ids in and MoE stats out; returns ((B, L, D), extra)."""
        if alignment_layer is None:
            alignment_layer = self.num_layers - 1
        enc = padding_mask = task_ids = None
        if encoder_out is not None and len(encoder_out["encoder_out"]) > 0:
            enc = encoder_out["encoder_out"][0]
        if encoder_out is not None and len(encoder_out["encoder_padding_mask"]) > 0:
            padding_mask = encoder_out["encoder_padding_mask"][0]
        if encoder_out is not None and len(encoder_out.get("task_ids", [])) > 0:
            task_ids = encoder_out["task_ids"][0]

        positions = None
        if self.embed_positions is not None:
            positions = self.embed_positions(prev_output_tokens, incremental_state=incremental_state)
        if incremental_state is not None:
            prev_output_tokens = prev_output_tokens[:, -1:]
            if positions is not None:
                positions = positions[:, -1:]
        prev_output_tokens = prev_output_tokens.contiguous()
        x = self.embed_scale * self.embed_tokens(prev_output_tokens)
        if self.quant_noise is not None:
            x = self.quant_noise(x)
        if self.project_in_dim is not None:
            x = self.project_in_dim(x)
        if positions is not None:
            x += positions
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = self.dropout_module(x)
        x = x.transpose(0, 1)  # (L, B, D)

        self_attn_padding_mask = None
        if self.cross_self_attention or prev_output_tokens.eq(self.padding_idx).any():
            self_attn_padding_mask = prev_output_tokens.eq(self.padding_idx)  # (B, L)

        attn = None
        inner_states = [x]
        moe_stats = []
        for idx, layer in enumerate(self.layers):
            if incremental_state is None and not full_context_alignment:
                self_attn_mask = self.buffered_future_mask(x)
            else:
                self_attn_mask = None
            kwargs = dict(self_attn_mask=self_attn_mask, self_attn_padding_mask=self_attn_padding_mask,
                          need_attn=bool(idx == alignment_layer),
                          need_head_weights=bool(idx == alignment_layer))
            if isinstance(layer, MoEDecoderLayer):
                x, layer_attn, stats = layer(x, enc, padding_mask, incremental_state,
                                             task_ids=task_ids, **kwargs)
                moe_stats.append(stats)
            else:
                x, layer_attn, _ = layer(x, enc, padding_mask, incremental_state, **kwargs)
            inner_states.append(x)
            if layer_attn is not None and idx == alignment_layer:
                attn = layer_attn.float().to(x)

        if attn is not None:
            if alignment_heads is not None:
                attn = attn[:alignment_heads]
            attn = attn.mean(dim=0)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        x = x.transpose(0, 1)  # (B, L, D)
        if self.project_out_dim is not None:
            x = self.project_out_dim(x)
        encoder_stats = encoder_out.get("moe_stats", []) if encoder_out is not None else []
        return x, {"attn": [attn], "inner_states": inner_states,
                   "moe_stats": {"encoder": encoder_stats, "decoder": moe_stats}}
