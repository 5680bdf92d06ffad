"""``--format ctranslate2``: a stock extract converted by CTranslate2's own fairseq converter.

CTranslate2 has no MoE layer, so only a stock extract (one task, every MoE side
task-routed or dense, see ``extract/stock.py``) converts. The conversion is
``ctranslate2.converters.FairseqConverter`` unchanged; the one thing we adapt is
the container of the model args: the converter reads them by attribute
(``checkpoint["args"]``), while the stock extract keeps plain dicts so that stock
fairseq can load it with torch's ``weights_only`` loader. The converter input is
therefore a copy of the stock checkpoint whose ``args`` is an
``argparse.Namespace`` of ``cfg.model`` (the plugin's allowlist lets the
converter load it with ``weights_only=True``); it lives in the temp dir only.

The converter is subclassed at its ``_load`` hook (the method that returns the model
spec) to trim the stock format's FFN zero padding before the spec is validated,
quantized and saved (``ct2_ffn_trim``): the dense layers run at their real width.

``ctranslate2`` is imported here, lazily: ``import fairseq_taskmoe`` never needs it.
"""

import argparse
import os
import shutil
from typing import Dict, List, Optional


from fairseq_taskmoe.checkpoints import atomic_torch_save
from fairseq_taskmoe.checkpoints.atomic import space_error
from fairseq_taskmoe.serve import ct2_ffn_trim

# ctranslate2.specs.model_spec.ACCEPTED_MODEL_TYPES (4.x), listed here so that a bad
# --quantization is refused before anything is read or written.
QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
                 "bfloat16", "float32")
DEFAULT_QUANTIZATION = "int8"
MODEL_FILES = ("model.bin", "config.json")


def import_ctranslate2():
    try:
        import ctranslate2
    except ImportError as err:
        raise ValueError(f"--format ctranslate2 needs the ctranslate2 package ({err}); install it "
                         "with `pip install ctranslate2==4.8.5` (pinned in requirements.txt)") from err
    return ctranslate2


def check_quantization(quantization: Optional[str]) -> str:
    """The quantization to use; a clear ValueError for an unknown one or a missing ctranslate2."""
    quantization = quantization or DEFAULT_QUANTIZATION
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}; got {quantization!r}")
    import_ctranslate2()
    return quantization


def langtoks(task_cfg: dict) -> Dict[str, object]:
    """How the model marks languages: fairseq's --encoder-langtok / --decoder-langtok."""
    if task_cfg.get("lang_tok_replacing_bos_eos"):
        raise ValueError("--format ctranslate2: the model was trained with --lang-tok-replacing-bos-eos, "
                         "which CTranslate2's fairseq converter does not support; use --format stock")
    style = task_cfg.get("lang_tok_style") or "multilingual"
    if style != "multilingual":
        raise ValueError(f"--format ctranslate2: --lang-tok-style {style} is not supported (only "
                         "'multilingual', tokens __xx__)")
    return {"encoder_langtok": task_cfg.get("encoder_langtok"),
            "decoder_langtok": bool(task_cfg.get("decoder_langtok"))}


def lang_token(lang: str) -> str:
    """fairseq's multilingual language token (``get_lang_tok`` with the default style)."""
    return f"__{lang}__"


def trimming_converter(*args, ffn_widths=None, **kwargs):
    """``FairseqConverter(*args, **kwargs)`` whose spec has its FFN zero padding trimmed.

    ``ffn_widths``: {side: real FFN width per layer} (None: found from the zero units).
    After ``convert``, the converter's ``ffn_trim`` holds ``ct2_ffn_trim.trim_spec``'s report.
    """
    from ctranslate2.converters import FairseqConverter

    class TrimmingFairseqConverter(FairseqConverter):
        ffn_trim = None

        def _load(self):
            spec = super()._load()
            self.ffn_trim = ct2_ffn_trim.trim_spec(spec, ffn_widths)
            return spec

    return TrimmingFairseqConverter(*args, **kwargs)


def convert(stock_state: dict, dest: str, vocab_dir: str, pairs: List[str], quantization: str,
            stock_overhead: Optional[dict] = None) -> dict:
    """Write a CTranslate2 model of ``stock_state`` into ``dest`` (an empty temp dir).

    ``stock_overhead``: ``stock.pad_to_common_width``'s report for this state, whose real
    per-layer FFN widths say which units are padding; without it the padding is found
    from the weights (trailing units that are exactly zero).

    Returns the ``ctranslate2`` entry of extract.json: quantization, pairs and
    language-token conventions the translator needs (``serve/ct2_translator.py``), and
    ``ffn_trim``: the FFN width per layer and the units trimmed per layer.
    """
    import_ctranslate2()
    task_cfg = stock_state["cfg"]["task"]
    info = dict(langtoks(task_cfg), quantization=quantization, pairs=list(pairs),
                max_source_positions=int(stock_state["cfg"]["model"].get("max_source_positions") or 1024))
    src, tgt = pairs[0].split("-")
    work = os.path.join(dest, ".ctranslate2-convert")
    os.mkdir(work)
    try:
        converter_input = dict(stock_state, args=argparse.Namespace(**stock_state["cfg"]["model"]))
        path = os.path.join(work, "checkpoint.pt")
        atomic_torch_save(converter_input, path)
        model_dir = os.path.join(work, "model")
        converter = trimming_converter(path, vocab_dir, source_lang=src, target_lang=tgt,
                                       ffn_widths=ct2_ffn_trim.known_widths(stock_overhead))
        try:
            converter.convert(model_dir, quantization=quantization)
        except OSError as err:
            if err.filename is None:  # the converter's own writes name no file: name the export
                raise type(err)(err.errno, err.strerror or str(err), dest) from err
            raise
        except RuntimeError as err:
            # CTranslate2's C++ writer says "basic_ios::clear" on a full disk: name the cause.
            cause = space_error(work, dest)
            if cause is not None:
                raise cause from err
            raise
        info["ffn_trim"] = converter.ffn_trim
        for name in os.listdir(model_dir):
            os.replace(os.path.join(model_dir, name), os.path.join(dest, name))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info


def is_ctranslate2_dir(path: str) -> bool:
    return os.path.isdir(path) and all(os.path.isfile(os.path.join(path, f)) for f in MODEL_FILES)
