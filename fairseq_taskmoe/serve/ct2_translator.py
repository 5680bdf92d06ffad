"""Translate with a CTranslate2 export (``fairseq-taskmoe-extract --format ctranslate2``).

Inputs are built as fairseq builds them: ``[__src__] + pieces`` (the converter
sets ``add_source_eos``) and the decoder starts with ``</s>`` followed by the
forced target-language token ``__tgt__`` (fairseq's ``inference_step`` passes it
as a prefix token).

fairseq scores a finished hypothesis as (sum of log-probs, *including the forced
language token*) / length ** lenpen; CTranslate2 leaves the prefix's log-prob
out of the sum (same length). With lenpen != 0 the two can rank hypotheses of
different lengths differently, so by default (``fairseq_ranking=True``) the
beam's hypotheses are re-ranked with fairseq's formula, using the prefix
log-prob from ``score_batch``. A hypothesis that reaches ``max_len_b`` ends with a
forced </s> in fairseq (its log-prob counted) and without one in CTranslate2;
when it competes with finished hypotheses it is rescored exactly. The search
itself (cumulative log-probs) is the same in both engines, so the float32 export
returns fairseq-generate's hypotheses (tests/serve/test_ctranslate2.py).
"""

import json
import os
from typing import List, Optional

from fairseq_taskmoe.serve.ctranslate2_export import import_ctranslate2, is_ctranslate2_dir, lang_token
from fairseq_taskmoe.serve.text import Pieces, check_decoding, check_length, check_sentences, find_spm, non_empty

EOS = "</s>"
# CTranslate2 cuts longer inputs silently (translate_batch's max_input_length); exports
# written before extract.json recorded the model's limit get this one.
DEFAULT_MAX_SOURCE_POSITIONS = 1024


def _vocabulary(path: str) -> set:
    for name in ("shared_vocabulary.json", "source_vocabulary.json"):
        if os.path.isfile(os.path.join(path, name)):
            with open(os.path.join(path, name)) as f:
                return set(json.load(f))
    return set()


class CTranslate2Translator:
    engine = "ctranslate2"
    last_target_tokens = 0

    def __init__(self, path: str, device: str = "cpu", threads: int = 0, compute_type: str = "default",
                 spm_model: Optional[str] = None):
        if not is_ctranslate2_dir(path):
            raise ValueError(f"{path}: not a CTranslate2 model directory (needs model.bin and "
                             "config.json; write one with fairseq-taskmoe-extract --format ctranslate2)")
        report_path = os.path.join(path, "extract.json")
        if not os.path.isfile(report_path):
            raise ValueError(f"{path}: a CTranslate2 model without extract.json; only exports of "
                             "fairseq-taskmoe-extract --format ctranslate2 are supported (the file says "
                             "which language tokens the model expects)")
        with open(report_path) as f:
            report = json.load(f)
        self.info = report.get("ctranslate2") or {}
        self.tasks, self.task_by = report.get("tasks", []), report.get("moe_task_by", "target_lang")
        ct2 = import_ctranslate2()
        try:
            self.translator = ct2.Translator(path, device=device, compute_type=compute_type,
                                             inter_threads=1, intra_threads=threads)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{path}: CTranslate2 cannot load the model ({err})") from err
        self.vocab = _vocabulary(path)
        self.pieces = Pieces(spm_model or find_spm(path))
        self.quantization = self.info.get("quantization")

    def _langtoks(self, src: str, tgt: str):
        from fairseq_taskmoe.tasks.translation_multi_taskmoe import task_key

        key = task_key(self.task_by, src, tgt)
        if key not in self.tasks:
            raise ValueError(f"{src}-{tgt}: task {key!r} (--moe-task-by {self.task_by}) is not in this "
                             f"export (tasks: {', '.join(self.tasks)}); export that pair's extract")
        enc = {"src": src, "tgt": tgt}.get(self.info.get("encoder_langtok") or "")
        enc_tok = lang_token(enc) if enc else None
        dec_tok = lang_token(tgt) if self.info.get("decoder_langtok") else None
        for flag, tok in (("src", enc_tok), ("tgt", dec_tok)):
            if tok and tok not in self.vocab:
                raise ValueError(f"{flag}: language token {tok} is not in the model's vocabulary")
        return enc_tok, dec_tok

    def _fairseq_scores(self, source, res, prefix_logprob, lenpen, max_len_b):
        """fairseq's score of each hypothesis of ``res`` (see the module doc).

        A hypothesis cut at ``max_len_b`` has no </s> in CTranslate2, while fairseq forces
        one there and counts its log-prob; when such hypotheses compete with finished
        ones, they are rescored exactly (``score_batch`` appends </s>). When every
        hypothesis reached the limit CTranslate2's order is kept (no finished one to lose to).
        """
        cut = [len(h) >= max_len_b for h in res.hypotheses]
        exact = {}
        if any(cut) and not all(cut):
            idx = [k for k, c in enumerate(cut) if c]
            scored = self.translator.score_batch([source] * len(idx), [res.hypotheses[k] for k in idx])
            exact = {k: sum(r.log_probs) for k, r in zip(idx, scored)}
        scores = []
        for k, hyp in enumerate(res.hypotheses):
            norm = (len(hyp) + 1) ** lenpen  # + </s>
            total = exact[k] if k in exact else res.scores[k] * norm + prefix_logprob
            scores.append(total / norm)
        return scores

    def translate(self, sentences, src: str, tgt: str, beam: int = 4, lenpen: float = 1.0,
                  batch_size: int = 32, max_len_b: int = 200, min_len: int = 1,
                  fairseq_ranking: bool = True) -> List[str]:
        """Translations of ``sentences`` (raw text with sentencepiece, else tokens), in order.

        ``max_len_b`` / ``min_len`` bound the target length as fairseq's flags do (the forced
        language token included); ``self.last_target_tokens`` as in ``FairseqTranslator``.
        Empty sentences come back empty; an over-long one raises ``SentenceError``.
        """
        check_decoding(beam, batch_size, max_len_b, min_len)
        sentences = check_sentences(sentences)
        enc_tok, dec_tok = self._langtoks(src, tgt)
        outputs = [""] * len(sentences)
        self.last_target_tokens = 0
        keep = non_empty(sentences)
        if not keep:
            return outputs
        limit = int(self.info.get("max_source_positions") or DEFAULT_MAX_SOURCE_POSITIONS)
        source = []
        for i in keep:
            pieces = self.pieces.encode(sentences[i]).split()
            check_length(i, len(pieces), limit, 1 + (1 if enc_tok else 0))
            source.append(([enc_tok] if enc_tok else []) + pieces)
        prefix = [[dec_tok]] * len(source) if dec_tok else None
        rerank = fairseq_ranking and beam > 1
        results = self.translator.translate_batch(
            source, target_prefix=prefix, beam_size=beam, length_penalty=lenpen,
            max_batch_size=batch_size, max_decoding_length=max_len_b, min_decoding_length=min_len,
            max_input_length=limit,
            num_hypotheses=beam if rerank else 1, return_scores=rerank)
        first = None
        if rerank and dec_tok is not None and lenpen != 0:
            # log p(__tgt__ | source): the term CTranslate2 leaves out of the sum.
            first = self.translator.score_batch(source, [[dec_tok]] * len(source), max_batch_size=batch_size)
        out = []
        for i, res in enumerate(results):
            best = res.hypotheses[0]
            if rerank:
                scores = self._fairseq_scores(source[i], res, first[i].log_probs[0] if first else 0.0,
                                              lenpen, max_len_b)
                best = res.hypotheses[max(range(len(scores)), key=scores.__getitem__)]
            self.last_target_tokens += len(best) + 1  # + </s>
            words = [w for w in best if w != EOS and w != dec_tok]  # what fairseq strips
            out.append(self.pieces.decode(" ".join(words)))
        for i, text in zip(keep, out):
            outputs[i] = text
        return outputs
