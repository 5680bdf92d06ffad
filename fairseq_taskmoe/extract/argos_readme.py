"""The README.md inside each Argos package: what the model is, how it was trained and scored.

Everything quoted comes from the checkpoint (model and training args, updates done,
last validation loss), the extract's report (task, experts kept, parameters) and, when
given, ``--scores FILE`` (the JSON of ``fairseq-taskmoe-evaluate --json``). Nothing is
made up: a missing fact is said to be missing.
"""

import os
from typing import Dict


def _get(group, key, default=None):
    if group is None:
        return default
    return group.get(key, default) if isinstance(group, dict) else getattr(group, key, default)


class ModelCard:
    """Facts about the source model, read once; ``text(pair, ...)`` renders one package's README."""

    def __init__(self, state: dict, moe_cfg, num_layers: Dict[str, int], checkpoint: str,
                 scores: dict, scores_path: str = None):
        cfg = state.get("cfg") or {}
        model, task, opt = cfg.get("model"), cfg.get("task"), cfg.get("optimization")
        history = state.get("optimizer_history") or [{}]
        self.checkpoint = os.path.basename(checkpoint)
        self.arch = _get(model, "arch", "?")
        self.dims = {k: _get(model, k) for k in ("encoder_embed_dim", "encoder_ffn_embed_dim",
                                                  "encoder_layers", "decoder_layers",
                                                  "encoder_attention_heads")}
        self.moe = {"experts": moe_cfg.expert_count, "top_k": moe_cfg.top_k,
                    "encoder": moe_cfg.routing("encoder"), "decoder": moe_cfg.routing("decoder"),
                    "task_by": moe_cfg.task_by}
        pairs = _get(task, "lang_pairs", "")
        self.lang_pairs = ",".join(pairs) if isinstance(pairs, (list, tuple)) else str(pairs)
        self.data = os.path.basename(str(_get(task, "data", "") or "").rstrip("/")) or "?"
        self.train = {"updates": history[-1].get("num_updates"), "max_update": _get(opt, "max_update"),
                      "lr": ",".join(map(str, _get(opt, "lr") or [])) if isinstance(_get(opt, "lr"), list)
                      else _get(opt, "lr"), "max_tokens": _get(cfg.get("dataset"), "max_tokens"),
                      "val_loss": (state.get("extra_state") or {}).get("val_loss")}
        self.scores, self.scores_path = scores, scores_path

    def _score_line(self, pair: str, quantization: str) -> str:
        if not self.scores:
            return ("Not scored with this package. Score the checkpoint with `fairseq-taskmoe-evaluate "
                    "CKPT --data DATA --pairs %s --json scores.json` and pass `--scores scores.json` to "
                    "`fairseq-taskmoe-extract --format argos` to quote it here." % pair)
        got = self.scores["pairs"].get(pair)
        if not got:
            return f"`{os.path.basename(self.scores_path)}` has no score for {pair}."
        metrics = ", ".join(f"{m} {got[m]:.2f}" for m in ("bleu", "chrf") if isinstance(got.get(m), (int, float)))
        return (f"{metrics} on {got.get('sentences', '?')} sentences, scored with "
                f"`fairseq-taskmoe-evaluate` on `{os.path.basename(str(self.scores.get('checkpoint', '?')))}` "
                f"(the full model, in fairseq; this package holds its exact sub-network, converted to "
                f"CTranslate2 {quantization}: a quantized model can score slightly differently).")

    def text(self, pair: str, task: str, meta: dict, sub: dict) -> str:
        moe, d, t = self.moe, self.dims, self.train
        before, after = sub["params_before"]["total"], sub["params_after"]["total"]
        lines = [
            f"# {meta['from_name']} -> {meta['to_name']} ({pair}): a task-MoE sub-network",
            "",
            f"Made by `fairseq-taskmoe-extract --format argos` (fairseq_taskmoe) from `{self.checkpoint}` "
            f"(sha256 {meta['fairseq_taskmoe']['source_sha256'][:16]}...).",
            "",
            "## What the model is",
            f"A multilingual transformer with task-level mixture-of-experts layers (`{self.arch}`: "
            f"embedding {d['encoder_embed_dim']}, FFN {d['encoder_ffn_embed_dim']}, "
            f"{d['encoder_layers']}+{d['decoder_layers']} layers, {moe['experts']} experts, top-{moe['top_k']}; "
            f"encoder routed by {moe['encoder']}, decoder by {moe['decoder']}, tasks by {moe['task_by']}). "
            f"With task routing every sentence of a task uses the same {moe['top_k']} experts per layer, so "
            f"this package holds only task `{task}`'s sub-network, fused into dense layers: "
            f"{after:,} of the full model's {before:,} parameters. It decodes exactly like the full "
            f"model (up to float rounding), converted by CTranslate2 ({meta['fairseq_taskmoe']['quantization']}).",
            "",
            "## How it was trained",
            f"fairseq, language pairs `{self.lang_pairs}` on the data dir `{self.data}`; "
            f"{t['updates']} updates (--max-update {t['max_update']}), --lr {t['lr']}, "
            f"--max-tokens {t['max_tokens']}; last validation loss {t['val_loss'] if t['val_loss'] is not None else 'not recorded'}.",
            "",
            "## How it was scored",
            self._score_line(pair, meta["fairseq_taskmoe"]["quantization"]),
            "",
            "## Use",
            f"Offline: `argostranslate.package.install_from_path(\"{meta['from_code']}_{meta['to_code']}"
            f".argosmodel\")`, then Argos Translate or LibreTranslate (`--load-only "
            f"{meta['from_code']},{meta['to_code']}`). "
            "Each input line is translated as one segment (the packaged `minisbd/nosplit.onnx` never "
            "splits a line), as the model was trained. Source language token: "
            f"`{meta['fairseq_taskmoe']['source_prefix'] or 'none'}` (added by CTranslate2, "
            f"`model/config.json`), target prefix `{meta['target_prefix'] or 'none'}`.",
            "",
        ]
        return "\n".join(lines)
