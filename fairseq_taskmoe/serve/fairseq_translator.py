"""Translate with fairseq: a full model, a plugin extract or a stock extract.

The language pair is an argument of each call (the multilingual tasks read it
from ``task.args``); language tags are stripped the way fairseq-generate and
fairseq-interactive strip them (``symbols_to_strip_from_output``), so the
strings equal fairseq-interactive's ``H-`` lines (or its ``D-`` lines with
sentencepiece).
"""

import argparse
import os
from typing import List, Optional

import torch

from fairseq_taskmoe.serve.text import Pieces, check_sentences, find_spm, has_dicts


def resolve_checkpoint(path: str, checkpoint_file: Optional[str] = None) -> str:
    """A checkpoint file: ``path`` itself, or ``checkpoint_file`` / checkpoint.pt inside a directory."""
    if os.path.isfile(path):
        return path
    ckpt = os.path.join(path, checkpoint_file or "checkpoint.pt")
    if os.path.isdir(path) and os.path.isfile(ckpt):
        return ckpt
    raise ValueError(f"{path}: neither a checkpoint file nor a directory with {os.path.basename(ckpt)} "
                     "(an extract) or model.bin + config.json (a CTranslate2 model)")


class FairseqTranslator:
    engine = "fairseq"

    def __init__(self, path: str, data: Optional[str] = None, checkpoint_file: Optional[str] = None,
                 spm_model: Optional[str] = None, device: str = "cpu"):
        import fairseq_taskmoe  # noqa: F401  (plugin task and model, safe loader)
        from fairseq import checkpoint_utils

        ckpt = resolve_checkpoint(path, checkpoint_file)
        here = os.path.dirname(os.path.abspath(ckpt))
        data = data or (here if has_dicts(here) else None)
        if not has_dicts(data):
            raise ValueError(f"{ckpt}: no dict.*.txt next to it; pass data=DIR (--data DIR), the "
                             "binarized data dir of the model")
        models, _, task = checkpoint_utils.load_model_ensemble_and_task([ckpt], arg_overrides={"data": data})
        self.models = [m.to(device).eval() for m in models]
        self.task, self.device = task, device
        self.pieces = Pieces(spm_model or find_spm(here, data))
        self.checkpoint = ckpt

    def _set_pair(self, src: str, tgt: str):
        langs = self.task.data_manager.lang_dict
        for flag, lang in (("src", src), ("tgt", tgt)):
            if langs.index(lang) == langs.unk():
                raise ValueError(f"{flag}={lang!r}: not a language of this model; languages: "
                                 f"{', '.join(self.task.langs)}")
        self.task.args.source_lang, self.task.args.target_lang = src, tgt
        if hasattr(self.task, "task_id") and getattr(self.task, "moe_task_names", None):
            self.task.task_id(src, tgt)  # a clear error for a pair the (extracted) model lacks

    def translate(self, sentences, src: str, tgt: str, beam: int = 4, lenpen: float = 1.0,
                  batch_size: int = 32, max_len_b: int = 200) -> List[str]:
        """Translations of ``sentences`` (raw text with sentencepiece, else tokens), in order."""
        from fairseq import utils
        from fairseq_cli.generate import get_symbols_to_strip_from_output

        sentences = check_sentences(sentences)
        self._set_pair(src, tgt)
        if not sentences:
            return []
        gen = self.task.build_generator(self.models, argparse.Namespace(
            beam=beam, lenpen=lenpen, max_len_a=0, max_len_b=max_len_b, nbest=1))
        strip = get_symbols_to_strip_from_output(gen)
        src_dict, tgt_dict = self.task.source_dictionary, self.task.target_dictionary
        tokens = [src_dict.encode_line(self.pieces.encode(s), add_if_not_exist=False).long() for s in sentences]
        dataset = self.task.build_dataset_for_inference(tokens, [t.numel() for t in tokens])
        order = sorted(range(len(tokens)), key=lambda i: tokens[i].numel())
        out = [None] * len(tokens)
        for start in range(0, len(order), batch_size):
            sample = dataset.collater([dataset[i] for i in order[start:start + batch_size]])
            sample = utils.move_to_cuda(sample) if self.device != "cpu" else sample
            with torch.no_grad():
                hypos = self.task.inference_step(gen, self.models, sample)
            for sid, hypo in zip(sample["id"].tolist(), hypos):
                _, text, _ = utils.post_process_prediction(
                    hypo[0]["tokens"].int().cpu(), "", None, None, tgt_dict, None, strip)
                out[sid] = self.pieces.decode(text)
        return out
