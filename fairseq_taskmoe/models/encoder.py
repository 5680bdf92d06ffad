"""Encoder: fairseq's TransformerEncoderBase with MoE layers and task ids.

Legend: L source length, B batch, D model dim.

Overrides ``build_encoder_layer`` (the factory hook) and the layer loop in
``forward_scriptable`` (to pass ``task_ids`` in and collect MoE stats); pinned
by the test that a model without MoE layers equals stock ``transformer``.
"""

from typing import Optional

import torch
from fairseq.models.transformer import TransformerEncoderBase
from torch import Tensor

from fairseq_taskmoe.config import MoESettings
from fairseq_taskmoe.models.layers import MoEEncoderLayer, fused_ffn_cfg


class TaskMoEEncoder(TransformerEncoderBase):
    def __init__(self, cfg, moe_cfg: MoESettings, dictionary, embed_tokens, expert_parallel=None):
        # Read by build_encoder_layer, which fairseq calls once per layer in order.
        self.moe_cfg = moe_cfg
        self.expert_parallel = expert_parallel  # parallel.ExpertParallelPlan, or None: all experts here
        self._plan = moe_cfg.layer_plan("encoder", cfg.encoder.layers)
        self._next_layer = 0
        super().__init__(cfg, dictionary, embed_tokens)

    def build_encoder_layer(self, cfg):
        spec = self._plan[self._next_layer]
        self._next_layer += 1
        if spec is None:
            return super().build_encoder_layer(cfg)
        if "ffn_dim" in spec:
            return super().build_encoder_layer(fused_ffn_cfg(cfg, "encoder", spec["ffn_dim"]))
        return MoEEncoderLayer(cfg, self.moe_cfg, spec["experts"], self.expert_parallel)

    def forward(self, src_tokens, src_lengths: Optional[Tensor] = None, return_all_hiddens: bool = False,
                token_embeddings: Optional[Tensor] = None, task_ids: Optional[Tensor] = None, **unused):
        return self.forward_scriptable(src_tokens, src_lengths, return_all_hiddens, token_embeddings,
                                       task_ids)

    def forward_scriptable(self, src_tokens, src_lengths: Optional[Tensor] = None,
                           return_all_hiddens: bool = False,
                           token_embeddings: Optional[Tensor] = None,
                           task_ids: Optional[Tensor] = None):
        """Stock encoder loop plus ``task_ids`` in and ``moe_stats`` out.

        Returns fairseq's encoder_out dict with two extra keys: ``task_ids``
        ([(B,)] or []) and ``moe_stats`` (list of ``MoEStats``, one per MoE layer).
        """
        encoder_padding_mask = src_tokens.eq(self.padding_idx)  # (B, L)
        has_pads = encoder_padding_mask.any()
        x, encoder_embedding = self.forward_embedding(src_tokens, token_embeddings)
        x = x * (1 - encoder_padding_mask.unsqueeze(-1).type_as(x) * has_pads.type_as(x))
        x = x.transpose(0, 1)  # (L, B, D)

        encoder_states = [x] if return_all_hiddens else []
        moe_stats = []
        pad_mask = encoder_padding_mask if has_pads else None
        for layer in self.layers:
            if isinstance(layer, MoEEncoderLayer):
                x, stats = layer(x, encoder_padding_mask=pad_mask, task_ids=task_ids)
                moe_stats.append(stats)
            else:
                x = layer(x, encoder_padding_mask=pad_mask)
            if return_all_hiddens:
                encoder_states.append(x)

        if self.layer_norm is not None:
            x = self.layer_norm(x)
        src_lengths = src_tokens.ne(self.padding_idx).sum(dim=1, dtype=torch.int32).reshape(-1, 1)
        return {
            "encoder_out": [x],  # (L, B, D)
            "encoder_padding_mask": [encoder_padding_mask],  # (B, L)
            "encoder_embedding": [encoder_embedding],  # (B, L, D)
            "encoder_states": encoder_states,
            "fc_results": [],
            "src_tokens": [],
            "src_lengths": [src_lengths],
            "task_ids": [task_ids] if task_ids is not None else [],
            "moe_stats": moe_stats,
        }

    def reorder_encoder_out(self, encoder_out, new_order):
        out = super().reorder_encoder_out(encoder_out, new_order)
        out["task_ids"] = [t.index_select(0, new_order) for t in encoder_out.get("task_ids", [])]
        out["moe_stats"] = []  # training-only statistics; not needed while decoding
        return out
