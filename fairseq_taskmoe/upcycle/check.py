"""The built-in agreement check: the upcycled and the dense model on a few sentences of --data.

Legend: B sentences, T target length, V vocabulary.

For each language pair, the first ``n`` sentences of ``split`` (one batch, as
fairseq's iterator orders them) go through both models in eval mode:
teacher-forced log-probabilities of the reference (max absolute difference
over the real target tokens) and beam search (the best hypothesis must be the
same token sequence). Task ids are stamped here from the pair, so the task's
own stamping (set up by its ``build_model``) is not needed.
"""

import copy
from dataclasses import dataclass, field
from typing import List, Optional

import torch


@dataclass
class Agreement:
    pairs: List[str] = field(default_factory=list)
    sentences: int = 0
    tokens: int = 0
    max_logprob_diff: float = 0.0
    max_score_diff: float = 0.0
    same_hypotheses: int = 0
    mismatch: Optional[str] = None  # the first sentence whose hypotheses differ

    def ok(self, atol: float) -> bool:
        return self.sentences > 0 and self.max_logprob_diff <= atol and self.same_hypotheses == self.sentences

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def pair_task(task_ns, data: str, pair: str):
    """The task of the upcycled model, set up for decoding one language pair of ``data``."""
    from fairseq import tasks

    ns = copy.copy(task_ns)
    ns.data = data
    ns.source_lang, ns.target_lang = pair.split("-")
    return tasks.setup_task(ns)


def first_batch(task, split: str, n: int, data: str, pair: str):
    try:
        task.load_dataset(split)
        dataset = task.dataset(split)
    except Exception as err:  # noqa: BLE001  (fairseq raises several kinds for missing data)
        raise ValueError(f"--data {data}: cannot load split {split!r} of {pair} ({err}); the check "
                         "needs a binarized split of the pairs (--check-split)") from err
    itr = task.get_batch_iterator(dataset=dataset, max_tokens=1 << 20, max_sentences=n,
                                  ignore_invalid_inputs=True, num_workers=0)
    return next(iter(itr.next_epoch_itr(shuffle=False)), None)


def _log_probs(model, net_input):
    with torch.no_grad():
        out = model(**net_input)
        return model.get_normalized_probs(out, log_probs=True).float()  # (B, T, V)


def _best(task, gen_cfg, model, sample):
    generator = task.build_generator([model], gen_cfg)  # decodes with its own models, not inference_step's
    with torch.no_grad():
        hypos = task.inference_step(generator, [model], sample)
    return [(h[0]["tokens"].tolist(), float(h[0]["score"])) for h in hypos]


def compare(dense, upcycled, task_ns, data: str, pairs: List[str], task_id_of, split: str = "valid",
            n: int = 4, beam: int = 4) -> Agreement:
    """Decode the first ``n`` sentences of each pair with both models; ``Agreement``.

    Args:
        dense, upcycled: models in eval mode (float32, CPU).
        task_id_of: ``(src, tgt) -> int`` or None (no task ids: bilingual / no task routing).
    """
    from fairseq.dataclass.configs import GenerationConfig

    result = Agreement(pairs=list(pairs))
    gen_cfg = GenerationConfig(beam=beam, max_len_a=1.2, max_len_b=10)
    for pair in pairs:
        task = pair_task(task_ns, data, pair)
        sample = first_batch(task, split, n, data, pair)
        if sample is None:
            continue
        net = {k: sample["net_input"][k] for k in ("src_tokens", "src_lengths", "prev_output_tokens")}
        moe_net = dict(net)
        if task_id_of is not None:
            moe_net["task_ids"] = torch.full_like(net["src_lengths"], task_id_of(*pair.split("-")))
        real = sample["target"].ne(task.target_dictionary.pad())  # (B, T)
        diff = (_log_probs(dense, net) - _log_probs(upcycled, moe_net)).abs()  # (B, T, V)
        result.max_logprob_diff = max(result.max_logprob_diff, float(diff[real].max()))
        result.tokens += int(real.sum())

        ids = sample["id"].tolist()
        hyp_dense = _best(task, gen_cfg, dense, {"id": sample["id"], "net_input": dict(net)})
        hyp_moe = _best(task, gen_cfg, upcycled, {"id": sample["id"], "net_input": moe_net})
        for sid, (a_tok, a_score), (b_tok, b_score) in zip(ids, hyp_dense, hyp_moe):
            result.sentences += 1
            if a_tok == b_tok:
                result.same_hypotheses += 1
                result.max_score_diff = max(result.max_score_diff, abs(a_score - b_score))
            elif result.mismatch is None:
                dictionary = task.target_dictionary
                result.mismatch = (f"{pair} sentence {sid}: dense '{dictionary.string(torch.tensor(a_tok))}' "
                                   f"vs upcycled '{dictionary.string(torch.tensor(b_tok))}'")
    return result
