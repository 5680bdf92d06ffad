"""``from_pretrained(path).translate(sentences, src, tgt)`` for every kind of model the plugin writes.

    from fairseq_taskmoe.serve import from_pretrained
    model = from_pretrained("extracts/en-de-ct2")            # engine picked by what the path holds
    model.translate(["Hello world."], src="en", tgt="de")   # -> ["Hallo Welt."]

- a directory with model.bin + config.json: a CTranslate2 export (``CTranslate2Translator``);
- a checkpoint file, or a directory with checkpoint.pt (a plugin or stock extract): fairseq
  (``FairseqTranslator``); a full training checkpoint needs ``data=`` (its dict.*.txt).
"""

import os
from typing import Optional

from fairseq_taskmoe.serve.ctranslate2_export import MODEL_FILES, is_ctranslate2_dir


def engine_of(path: str) -> str:
    """"ctranslate2" or "fairseq" by what ``path`` holds; ValueError when it is neither."""
    if is_ctranslate2_dir(path):
        return "ctranslate2"
    if os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in MODEL_FILES):
        missing = [f for f in MODEL_FILES if not os.path.isfile(os.path.join(path, f))]
        raise ValueError(f"{path}: not a CTranslate2 model directory ({', '.join(missing)} missing)")
    if os.path.isfile(path) or os.path.isfile(os.path.join(path, "checkpoint.pt")):
        return "fairseq"
    raise ValueError(f"{path}: neither a CTranslate2 model directory (model.bin + config.json) nor a "
                     "fairseq checkpoint / extract directory (checkpoint.pt)")


def from_pretrained(path: str, data: Optional[str] = None, checkpoint_file: Optional[str] = None,
                    spm_model: Optional[str] = None, device: str = "cpu", threads: int = 0,
                    compute_type: str = "default"):
    """A translator with ``translate(sentences, src, tgt, beam=4, lenpen=1.0, batch_size=32)``.

    Args:
        data: where dict.*.txt are (fairseq engine; default: next to the checkpoint).
        spm_model: sentencepiece model (default: spm.model in / next to the model or data dir;
            none: sentences are taken as already tokenized).
        threads: CTranslate2 intra-op threads (0: its default); fairseq uses torch's setting.
        compute_type: CTranslate2 compute type ("default": the export's quantization).

    Raises ``UnsafeEnvironmentError`` while TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set (as the
    command line does), ValueError for a path, model or language it cannot serve.
    """
    from fairseq_taskmoe.checkpoints import refuse_unsafe_torch_env

    # As the CLI: with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD set, fairseq's loaders unpickle anything.
    refuse_unsafe_torch_env()
    path = os.fspath(path)
    data = os.fspath(data) if data is not None else None
    spm_model = os.fspath(spm_model) if spm_model is not None else None
    if engine_of(path) == "ctranslate2":
        from fairseq_taskmoe.serve.ct2_translator import CTranslate2Translator

        return CTranslate2Translator(path, device=device, threads=threads, compute_type=compute_type,
                                     spm_model=spm_model)
    from fairseq_taskmoe.serve.fairseq_translator import FairseqTranslator

    return FairseqTranslator(path, data=data, checkpoint_file=checkpoint_file, spm_model=spm_model,
                             device=device)
