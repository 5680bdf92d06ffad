"""Model ``transformer_taskmoe`` and its architectures.

A fairseq ``transformer`` (argparse flavour, so every stock ``--encoder-*`` /
``--decoder-*`` flag works) whose every ``--moe-freq``-th FFN is an MoE block.
``build_model`` does what stock ``TransformerModel.build_model`` does, or
refuses the stock flag by name (``UNSUPPORTED_STOCK_FLAGS``).
"""

import logging

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerModel
from fairseq.models.transformer.transformer_config import (
    DEFAULT_MAX_SOURCE_POSITIONS,
    DEFAULT_MAX_TARGET_POSITIONS,
    DEFAULT_MIN_PARAMS_TO_WRAP,
)
from fairseq.models.transformer.transformer_legacy import base_architecture, transformer_wmt_en_de_big

from fairseq_taskmoe.config import MoEConfig, moe_config_from_args
from fairseq_taskmoe.models.decoder import TaskMoEDecoder
from fairseq_taskmoe.models.encoder import TaskMoEEncoder
from fairseq_taskmoe.parallel import expert_parallel_from_args

logger = logging.getLogger(__name__)

# Stock flags build_model refuses: (attribute, flag, why).
UNSUPPORTED_STOCK_FLAGS = (
    ("encoder_layers_to_keep", "--encoder-layers-to-keep",
     "layer dropping would renumber the layers that --moe-freq / --moe-layout place experts in"),
    ("decoder_layers_to_keep", "--decoder-layers-to-keep",
     "layer dropping would renumber the layers that --moe-freq / --moe-layout place experts in"),
    ("merge_src_tgt_embed", "--merge-src-tgt-embed",
     "it merges the dictionaries into task.src_dict / task.tgt_dict, which the multilingual task "
     "does not read; use one joined dictionary and --share-all-embeddings"),
)


def refuse_unsupported_stock_flags(args):
    for attr, flag, why in UNSUPPORTED_STOCK_FLAGS:
        if getattr(args, attr, None):
            raise ValueError(f"transformer_taskmoe does not support {flag}: {why}")


@register_model("transformer_taskmoe")
class TransformerTaskMoEModel(TransformerModel):
    """Transformer with token / sentence / task-level MoE layers.

    The forward pass returns fairseq's ``(logits, extra)`` with
    ``extra["moe_stats"]`` holding each MoE layer's ``MoEStats``.
    """

    def __init__(self, args, encoder, decoder):
        super().__init__(args, encoder, decoder)
        self.moe_cfg = encoder.moe_cfg

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        # No argparse defaults, so architectures can set their own (as stock transformer does).
        gen_parser_from_dataclass(parser, MoEConfig(), delete_default=True)

    @classmethod
    def build_model(cls, args, task):
        base_taskmoe_architecture(args)
        moe_cfg = moe_config_from_args(args)
        if "task" in (moe_cfg.encoder_routing, moe_cfg.decoder_routing) and not moe_cfg.task_names:
            raise ValueError(
                "task routing needs --moe-task-names (the translation_multi_simple_epoch_taskmoe "
                "task fills it from --lang-pairs); use --task translation_multi_simple_epoch_taskmoe"
            )
        refuse_unsupported_stock_flags(args)
        # Expert parallel, decided once: rank and world size (torch.distributed, W = 1 when not
        # initialized) go to every MoE layer, which builds only this rank's experts.
        expert_parallel = expert_parallel_from_args(args, task)
        # as stock TransformerModel.build_model does
        if getattr(args, "max_source_positions", None) is None:
            args.max_source_positions = DEFAULT_MAX_SOURCE_POSITIONS
        if getattr(args, "max_target_positions", None) is None:
            args.max_target_positions = DEFAULT_MAX_TARGET_POSITIONS
        if getattr(args, "offload_activations", False):
            args.checkpoint_activations = True  # offloading implies checkpointing
        if getattr(args, "checkpoint_activations", False):
            # fairseq's checkpoint wrapper passes non-tensor outputs around autograd, so an
            # MoE layer's MoEStats would come back detached and the aux loss lose its gradient.
            logger.warning("transformer_taskmoe: --checkpoint-activations / --offload-activations "
                           "wrap the dense layers only; MoE layers run unwrapped")
        if not args.share_all_embeddings:
            args.min_params_to_wrap = getattr(args, "min_params_to_wrap", DEFAULT_MIN_PARAMS_TO_WRAP)
        cfg = TransformerConfig.from_namespace(args)
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        if cfg.share_all_embeddings:
            if src_dict != tgt_dict:
                raise ValueError("--share-all-embeddings requires a joined dictionary")
            if cfg.encoder.embed_dim != cfg.decoder.embed_dim:
                raise ValueError("--share-all-embeddings requires --encoder-embed-dim to match "
                                 "--decoder-embed-dim")
            if cfg.decoder.embed_path and cfg.decoder.embed_path != cfg.encoder.embed_path:
                raise ValueError("--share-all-embeddings not compatible with --decoder-embed-path")
            enc_embed = cls.build_embedding(cfg, src_dict, cfg.encoder.embed_dim, cfg.encoder.embed_path)
            dec_embed = enc_embed
            cfg.share_decoder_input_output_embed = True
            args.share_decoder_input_output_embed = True
        else:
            enc_embed = cls.build_embedding(cfg, src_dict, cfg.encoder.embed_dim, cfg.encoder.embed_path)
            dec_embed = cls.build_embedding(cfg, tgt_dict, cfg.decoder.embed_dim, cfg.decoder.embed_path)
        encoder = TaskMoEEncoder(cfg, moe_cfg, src_dict, enc_embed, expert_parallel)
        decoder = TaskMoEDecoder(cfg, moe_cfg, tgt_dict, dec_embed, no_encoder_attn=cfg.no_cross_attention,
                                 expert_parallel=expert_parallel)
        # names the experts by their place in the model and installs the checkpoint hooks
        return expert_parallel.attach(cls(args, encoder, decoder))

    def forward(self, src_tokens, src_lengths, prev_output_tokens, task_ids=None,
                return_all_hiddens: bool = True, features_only: bool = False,
                alignment_layer=None, alignment_heads=None, **unused):
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, task_ids=task_ids,
                                   return_all_hiddens=return_all_hiddens)
        return self.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=features_only,
                            alignment_layer=alignment_layer, alignment_heads=alignment_heads,
                            src_lengths=src_lengths, return_all_hiddens=return_all_hiddens)


def _moe_defaults(args, **overrides):
    defaults = {f: getattr(MoEConfig(), f) for f in MoEConfig.__dataclass_fields__}
    defaults.update(overrides)
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


@register_model_architecture("transformer_taskmoe", "transformer_taskmoe")
def base_taskmoe_architecture(args):
    _moe_defaults(args)
    base_architecture(args)


@register_model_architecture("transformer_taskmoe", "transformer_taskmoe_tiny")
def tiny_architecture(args):
    """For tests and the CPU demo: 2+2 layers, d=64, 4 experts in layer 2 of each side."""
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 64)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 128)
    args.encoder_layers = getattr(args, "encoder_layers", 2)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 4)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 64)
    args.decoder_ffn_embed_dim = getattr(args, "decoder_ffn_embed_dim", 128)
    args.decoder_layers = getattr(args, "decoder_layers", 2)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 4)
    args.share_decoder_input_output_embed = getattr(args, "share_decoder_input_output_embed", True)
    _moe_defaults(args, moe_expert_count=4)
    base_architecture(args)


@register_model_architecture("transformer_taskmoe", "transformer_taskmoe_base")
def base_paper_architecture(args):
    """The paper's setting: Transformer-base, 6+6 layers, 32 experts in every other layer."""
    _moe_defaults(args, moe_expert_count=32, moe_freq=2)
    base_architecture(args)


@register_model_architecture("transformer_taskmoe", "transformer_taskmoe_big")
def big_architecture(args):
    """Transformer-big (d=1024, FFN 4096, 16 heads) with 32 experts in every other layer."""
    _moe_defaults(args, moe_expert_count=32, moe_freq=2)
    transformer_wmt_en_de_big(args)
