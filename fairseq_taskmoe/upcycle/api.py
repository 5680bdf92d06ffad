"""``upcycle()``: the Python API behind ``fairseq-taskmoe-upcycle``.

Order of work, so that a refusal writes nothing: check ``--out``; read and
validate the dense checkpoint (no model built yet); derive the upcycled args;
build the dense model and load its weights strictly (this also upgrades old
key names); build the upcycled model (routers initialised as in training from
scratch, seeded); map the state; load it strictly; with ``--data``, the
agreement check; only then ``--expert-noise`` and the atomic write.
"""

import copy
import errno
import logging
import os
from typing import Optional

import torch

from fairseq_taskmoe.checkpoints import atomic_torch_save, check_writable, sha256
from fairseq_taskmoe.tasks.translation_multi_taskmoe import task_key
from fairseq_taskmoe.upcycle import check as agreement
from fairseq_taskmoe.upcycle.mapping import perturb_experts, upcycle_state
from fairseq_taskmoe.upcycle.plan import PLUGIN_DIR, UpcycleOptions, build_plan, fine_tune_flags
from fairseq_taskmoe.upcycle.source import DenseSource, read_dense

logger = logging.getLogger("fairseq_taskmoe.upcycle")


class UpcycleCheckError(ValueError):
    """The upcycled model does not decode like the dense one (nothing was written)."""


class _Dictionaries:
    """What ``build_model`` reads of a task: the two dictionaries."""

    def __init__(self, source_dictionary, target_dictionary):
        self.source_dictionary, self.target_dictionary = source_dictionary, target_dictionary


def _sized_dictionary(rows: int):
    """A fairseq Dictionary of ``rows`` symbols (the 4 specials first, as every fairseq dict)."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(rows - len(d)):
        d.add_symbol(f"<upcycle_{i}>")
    return d


def _embedding_rows(state: dict, side: str, path: str) -> int:
    key = f"{side}.embed_tokens.weight"
    if key not in state["model"]:
        raise ValueError(f"{path}: the model state has no {key}")
    return int(state["model"][key].size(0))


def _dictionaries(src: DenseSource, plan, data: Optional[str]):
    """The task whose dictionaries both models are built with: --data's, else sized stand-ins."""
    rows = {side: _embedding_rows(src.state, side, src.path) for side in ("encoder", "decoder")}
    if not data:
        enc = _sized_dictionary(rows["encoder"])
        dec = enc if rows["decoder"] == rows["encoder"] else _sized_dictionary(rows["decoder"])
        return _Dictionaries(enc, dec)
    from fairseq import tasks

    ns = copy.copy(plan.task_ns)
    ns.data = data
    task = tasks.setup_task(ns)
    for side, d in (("encoder", task.source_dictionary), ("decoder", task.target_dictionary)):
        if len(d) != rows[side]:
            raise ValueError(
                f"--data {data}: its {side} dictionary has {len(d)} symbols (dict.*.txt plus "
                f"language tokens of --langs {','.join(plan.langs) or '-'}), the checkpoint's "
                f"{side} embeddings have {rows[side]} rows; give the data dir (and --langs) the "
                "dense model was trained with")
    return task


def _build(model_cls, ns, task, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls.build_model(copy.copy(ns), task)


def _dense_model(src: DenseSource, task):
    from fairseq.models import ARCH_MODEL_REGISTRY

    model = _build(ARCH_MODEL_REGISTRY[src.arch], src.model_ns, task, 0)
    try:
        model.load_state_dict(dict(src.state["model"]), strict=True, model_cfg=src.model_ns)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"{src.path}: its weights do not fit its own model args ({first})") from err
    return model.float().eval()


def _float_dtype(state: dict):
    dtypes = {t.dtype for t in state.values() if torch.is_tensor(t) and t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def _cast(state: dict, dtype) -> dict:
    """Floating tensors to ``dtype``; tensors that shared storage still share it."""
    memo, out = {}, {}
    for key, t in state.items():
        if not (t.is_floating_point() and t.dtype != dtype):
            out[key] = t
            continue
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if ptr not in memo:
            memo[ptr] = t.to(dtype)
        out[key] = memo[ptr]
    return out


def _checkpoint(src: DenseSource, plan, model_state: dict, provenance: dict) -> dict:
    cfg = dict(src.state["cfg"]) if isinstance(src.state.get("cfg"), dict) else {}
    cfg["model"], cfg["task"] = plan.model_ns, plan.task_ns
    cfg["common"] = dict(cfg.get("common") or {}, user_dir=PLUGIN_DIR)
    return {
        "args": None,
        "cfg": cfg,
        "model": model_state,
        "criterion": {},
        # fairseq's loaders read the last entry; a fine-tuning run resets it.
        "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterionMoE",
                               "optimizer_name": "none", "lr_scheduler_state": {}, "num_updates": 0}],
        "task_state": {},
        "extra_state": {"train_iterator": {"epoch": 1}, "upcycle": provenance},
        "last_optimizer_state": None,
    }


def _count(state: dict) -> int:
    seen, total = set(), 0
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if name.endswith(".version") or key in seen:
            continue
        seen.add(key)
        total += t.numel()
    return total


def check_out(out: str, dense_path: str, force: bool):
    """``--out`` may be written: not the input, not an existing file without ``force``."""
    if os.path.abspath(out) == os.path.abspath(dense_path):
        raise ValueError(f"--out {out} is the dense checkpoint itself; write the upcycled one elsewhere")
    if os.path.isdir(out):
        raise IsADirectoryError(errno.EISDIR, "is a directory", out)
    if os.path.lexists(out) and not force:
        raise FileExistsError(errno.EEXIST, "already exists (pass --force to replace it)", out)
    check_writable(out)


def upcycle(dense_path: str, out: Optional[str], options: UpcycleOptions = UpcycleOptions(),
            force: bool = False, check_split: str = "valid", check_sentences: int = 4,
            check_atol: float = 1e-4) -> dict:
    """Upcycle ``dense_path`` into a ``transformer_taskmoe`` checkpoint at ``out``; the report.

    ``out`` None: everything but the write (a dry run). With ``options.data`` the
    upcycled model must decode the first ``check_sentences`` sentences of
    ``check_split`` of every pair like the dense one (log-probs within
    ``check_atol``, same best hypothesis), else :class:`UpcycleCheckError` and
    nothing is written.
    """
    if out is not None:
        check_out(out, dense_path, force)
    if options.data and not os.path.isdir(options.data):
        raise FileNotFoundError(errno.ENOENT, "no such directory", f"--data {options.data}")
    if check_sentences < 1:
        raise ValueError(f"--check-sentences must be >= 1, got {check_sentences}")
    from fairseq_taskmoe.models.transformer_taskmoe import TransformerTaskMoEModel

    src = read_dense(dense_path)
    plan = build_plan(src, options)
    data = os.path.abspath(options.data) if options.data else None
    task = _dictionaries(src, plan, data)
    dense = _dense_model(src, task)
    moe_model = _build(TransformerTaskMoEModel, plan.model_ns, task, options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    state, layers = upcycle_state(dense.state_dict(), moe_model.state_dict(), plan.moe, generator,
                                  src.path)
    state = _cast(state, _float_dtype(src.state["model"]))
    moe_model.load_state_dict(state, strict=True, model_cfg=plan.model_ns)
    moe_model = moe_model.float().eval()

    report = {"source": os.path.abspath(dense_path), "source_arch": src.arch, "source_task": src.task,
              "out": os.path.abspath(out) if out else None, "pairs": plan.pairs,
              "moe_task_names": list(plan.moe.task_names), "top_k": plan.moe.top_k,
              "encoder_routing": plan.moe.encoder_routing, "decoder_routing": plan.moe.decoder_routing,
              "expert_noise": options.expert_noise, "seed": options.seed, "layers": layers,
              "params_dense": _count(dense.state_dict()), "params_upcycled": _count(state),
              "check": None, "check_after_noise": None}
    if data:
        names = list(plan.moe.task_names)
        task_id_of = (lambda s, t: names.index(task_key(plan.moe.task_by, s, t))) if names else None
        pairs = plan.pairs or src.pairs()

        def run_check():
            return agreement.compare(dense, moe_model, plan.task_ns, data, pairs, task_id_of,
                                     check_split, check_sentences)

        result = run_check()
        report["check"] = result.as_dict()
        if not result.ok(check_atol):
            why = result.mismatch or (f"max |log-prob difference| {result.max_logprob_diff:.3g} > "
                                      f"{check_atol:g}" if result.sentences else "no sentence decoded")
            raise UpcycleCheckError(f"built-in check failed: the upcycled model does not decode "
                                    f"{check_split} of --data {data} like {dense_path} ({why}); "
                                    "nothing written")
        if options.expert_noise > 0:
            perturb_experts(state, layers, options.expert_noise, generator)
            moe_model.load_state_dict(state, strict=True, model_cfg=plan.model_ns)
            report["check_after_noise"] = run_check().as_dict()  # informative: noise is not exact
    else:
        perturb_experts(state, layers, options.expert_noise, generator)
    report["fine_tune_flags"] = fine_tune_flags(plan)
    if out is not None:
        check_out(out, dense_path, force)  # still free (the check took a while)
        provenance = {k: report[k] for k in ("source", "top_k", "encoder_routing", "decoder_routing",
                                             "expert_noise", "seed", "layers")}
        provenance["source_sha256"] = sha256(dense_path)
        atomic_torch_save(_checkpoint(src, plan, state, provenance), out)
    return report

