"""``--format argos``: one Argos Translate package per language pair (served by LibreTranslate).

An Argos package (``.argosmodel``) is a zip of one directory::

    translate-<from>_<to>-1_0/
        metadata.json          codes, names, versions, target_prefix (argos reads these)
        README.md              what the model is, how it was trained and scored
        sentencepiece.model    the model's spm.model, language tokens added as control symbols
        model/                 the CTranslate2 export of the pair's task extract:
            model.bin, shared_vocabulary.json   byte for byte (shared by a task's pairs)
            config.json          + add_source_bos / bos_token: the source language token
        minisbd/nosplit.onnx   sentence splitter that keeps a line whole (argos_sbd.py)

How argos runs it (``argostranslate.translate.apply_packaged_translation``): sentencepiece
pieces of the sentence, ``translate_batch(pieces, target_prefix=[[target_prefix]])``,
pieces decoded, ``target_prefix`` stripped. Our model (``--encoder-langtok src
--decoder-langtok``) expects ``[__src__] + pieces + </s>`` and the forced target token
``__tgt__``, as ``serve/ct2_translator.py`` feeds it. argos has no source prefix, so each
package's ``config.json`` tells CTranslate2 to add the source token itself
(``add_source_bos: true, bos_token: <source token>``; ``decoder_start_token`` stays
``</s>``, so the bos token is used for nothing else): the encoder input is the same ids.
``target_prefix`` is the target token; the package's sentencepiece model lists the
language tokens as control symbols, which decode to nothing (``argos_spm.py``), so the
text is what our API prints. tests/extract/test_argos.py checks that the package's model
directory, fed the argos way, returns exactly the CTranslate2 export's hypotheses, scores
and (decoded with the package's sentencepiece model) our API's text.
"""

import io
import json
import os
import shutil
import zipfile
from typing import Dict, List, Optional, Sequence

from fairseq_taskmoe.checkpoints import (
    atomic_dir, atomic_write_json, lang_pairs, load_source, model_args, sha256, task_args,
)
from fairseq_taskmoe.checkpoints.validate import check_moe_state
from fairseq_taskmoe.extract import all_tasks, argos_langs, argos_readme, argos_sbd, argos_spm, outdir
from fairseq_taskmoe.serve import ctranslate2_export as ct2_export
from fairseq_taskmoe.tasks.translation_multi_taskmoe import task_key

PACKAGE_VERSION = "1.0"
ARGOS_VERSION = "1.11"  # argostranslate 1.11 / argos-translate-lt 1.12 read target_prefix
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same inputs give the same zip bytes


def check_task_routed(moe_cfg, num_layers: Dict[str, int]):
    """Every MoE side task-routed (or dense): the only models CTranslate2, hence argos, can run."""
    from fairseq_taskmoe.extract.subnet import moe_layers

    for side in ("encoder", "decoder"):
        layers = [i for s, i, _ in moe_layers(moe_cfg, num_layers) if s == side]
        routing = moe_cfg.routing(side)
        if layers and routing != "task":
            raise ValueError(
                f"--format argos: {side} layers {layers} are {routing}-routed MoE layers; an Argos "
                f"package holds a CTranslate2 model, which has no MoE layer. What works: --format "
                f"plugin (served by fairseq_taskmoe.serve), or a model trained with "
                f"--moe-{side}-routing task or none")


def find_spm(vocab: str) -> str:
    for cand in (os.path.join(vocab, "spm.model"), os.path.join(os.path.dirname(vocab), "spm.model")):
        if os.path.isfile(cand):
            return cand
    raise ValueError(f"--format argos needs the model's sentencepiece model: no spm.model in or next to "
                     f"{vocab} (argos tokenizes with it); pass --data DIR, the binarized data dir")


def model_files(ct2_dir: str, src: str, tgt: str, info: dict) -> Dict[str, object]:
    """The package's ``model/`` for the pair src-tgt: the export's files, config.json adapted.

    Returns {file name: bytes or the export's path}, and the two prefixes under
    "__source__" / "__target__" (empty when the model was trained without that token).
    """
    out = {name: os.path.join(ct2_dir, name) for name in sorted(os.listdir(ct2_dir))
           if name.endswith("vocabulary.json") or name == "model.bin"}
    with open(os.path.join(ct2_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    enc = {"src": src, "tgt": tgt}.get(info.get("encoder_langtok") or "")
    source_prefix = ct2_export.lang_token(enc) if enc else ""
    if source_prefix:
        if config.get("add_source_bos"):
            raise ValueError("--format argos: the CTranslate2 model already adds a source bos token; "
                             "the source language token has no place")
        config.update(add_source_bos=True, bos_token=source_prefix)
    out["config.json"] = json.dumps(config, indent=2).encode("utf-8")
    out["__source__"] = source_prefix
    out["__target__"] = ct2_export.lang_token(tgt) if info.get("decoder_langtok") else ""
    return out


def metadata(src: str, tgt: str, target_prefix: str, extra: dict) -> dict:
    (from_code, from_name), (to_code, to_name) = argos_langs.argos_language(src), argos_langs.argos_language(tgt)
    return {"package_version": PACKAGE_VERSION, "argos_version": ARGOS_VERSION, "type": "translate",
            "from_code": from_code, "from_name": from_name, "to_code": to_code, "to_name": to_name,
            "target_prefix": target_prefix, "links": [], "fairseq_taskmoe": extra}


def package_dir_name(meta: dict) -> str:
    return "translate-%s_%s-%s" % (meta["from_code"], meta["to_code"], PACKAGE_VERSION.replace(".", "_"))


def write_package(path: str, top: str, files: Dict[str, object]):
    """A zip of ``top/`` holding ``files`` ({relative name: bytes, or a path to copy})."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(f"{top}/{name}", date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            data = files[name]
            if isinstance(data, (bytes, bytearray)):
                zf.writestr(info, data)
            else:
                with open(data, "rb") as fin, zf.open(info, "w", force_zip64=True) as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)


def _load_scores(scores: Optional[str]) -> dict:
    if not scores:
        return {}
    try:
        with open(scores, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"--scores {scores}: cannot read it as JSON ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), dict):
        raise ValueError(f"--scores {scores}: not the JSON of fairseq-taskmoe-evaluate --json (no 'pairs')")
    return data


def extract_argos(checkpoint: str, tasks: Sequence[str], out_dir: str, force: bool = False,
                  target_langs: Sequence[str] = (), data_dir: Optional[str] = None,
                  quantization: Optional[str] = None, prune_token_experts: Optional[int] = None,
                  scores: Optional[str] = None, log=None, **unused) -> dict:
    """Write ``OUT/<from>_<to>.argosmodel`` for each requested pair; return extract.json's content.

    ``tasks``: language pairs, or ["all"] for every trained pair. Each task is exported to
    CTranslate2 once (``--format ctranslate2``, ``quantization``) in a temp dir inside the
    output's temp dir, and its pairs are packaged from that export.
    """
    from fairseq_taskmoe.extract.api import extract, resolve_tasks

    if prune_token_experts is not None or unused.get("prune_data"):
        raise ValueError("--prune-token-experts: --format argos needs every MoE side task-routed, "
                         "which is extracted exactly; there is nothing to prune")
    quantization = ct2_export.check_quantization(quantization)
    if data_dir and not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data {data_dir}: no such directory")
    score_data = _load_scores(scores)
    outdir.check_out_dir(out_dir, force, [checkpoint, data_dir, scores], log)
    state = load_source(checkpoint)
    model_ns = model_args(state, checkpoint)
    task_ns = task_args(state) or model_ns
    moe_cfg, num_layers = check_moe_state(state, model_ns, checkpoint)
    check_task_routed(moe_cfg, num_layers)
    if all_tasks.wants_all(tasks):
        if list(target_langs):
            raise ValueError("--tasks all packages every pair; leave out --target-langs")
        pairs = lang_pairs(task_ns)
    else:
        pairs = resolve_tasks(tasks, target_langs, moe_cfg.task_by, list(moe_cfg.task_names),
                              lang_pairs(task_ns))[1]
    langs = sorted({l for p in pairs for l in p.split("-")})
    for lang in langs:
        argos_langs.argos_language(lang)  # unknown language: refused before anything is written
    vocab = outdir.vocab_dir(data_dir, checkpoint, getattr(task_ns, "data", None))
    outdir.check_langs(vocab, langs, "--data" if data_dir else "the checkpoint's directory")
    spm = find_spm(vocab)
    by_task: Dict[str, List[str]] = {}
    for pair in pairs:
        by_task.setdefault(task_key(moe_cfg.task_by, *pair.split("-")), []).append(pair)
    readme = argos_readme.ModelCard(state, moe_cfg, num_layers, checkpoint, score_data, scores)
    del state
    all_langs = sorted({l for p in lang_pairs(task_ns) for l in p.split("-")})
    with open(spm, "rb") as f:
        spm_bytes = argos_spm.with_control_symbols(f.read(), [ct2_export.lang_token(l) for l in all_langs])
    report = {"source_checkpoint": os.path.abspath(checkpoint), "source_sha256": sha256(checkpoint),
              "tasks": list(by_task), "pairs": pairs, "format": "argos", "moe_task_by": moe_cfg.task_by,
              "quantization": quantization, "vocab_dir": vocab, "sentence_splitting": "none (" +
              argos_sbd.FILE_NAME + ", a MiniSBD model that keeps each line whole)",
              "packages": [], "extracts": {}}
    sbd = argos_sbd.nosplit_model_bytes()
    with atomic_dir(out_dir, replace=force) as tmp:
        work = os.path.join(tmp, ".ctranslate2")
        os.mkdir(work)
        for t, (task, task_pairs) in enumerate(by_task.items()):
            ct2_dir = os.path.join(work, str(t))
            sub = extract(checkpoint, task_pairs, ct2_dir, fmt="ctranslate2", data_dir=vocab,
                          quantization=quantization, log=log)
            report["extracts"][task] = {k: sub.get(k) for k in (
                "pairs", "moe_layout", "params_before", "params_after", "decoder_experts_kept_fraction")}
            model_sha = sha256(os.path.join(ct2_dir, "model.bin"))
            for pair in task_pairs:
                src, tgt = pair.split("-")
                files = model_files(ct2_dir, src, tgt, sub["ctranslate2"])
                source_prefix, target_prefix = files.pop("__source__"), files.pop("__target__")
                extra = {"pair": pair, "task": task, "source_prefix": source_prefix,
                         "quantization": quantization, "model_sha256": model_sha,
                         "source_sha256": report["source_sha256"]}
                meta = metadata(src, tgt, target_prefix, extra)
                contents = {f"model/{k}": v for k, v in files.items()}
                contents.update({"sentencepiece.model": spm_bytes,
                                 f"minisbd/{argos_sbd.FILE_NAME}": sbd,
                                 "metadata.json": json.dumps(meta, indent=2, ensure_ascii=False).encode(),
                                 "README.md": readme.text(pair, task, meta, sub).encode("utf-8")})
                name = "%s_%s.argosmodel" % (meta["from_code"], meta["to_code"])
                write_package(os.path.join(tmp, name), package_dir_name(meta), contents)
                report["packages"].append({"file": name, "pair": pair, "task": task,
                                           "from_code": meta["from_code"], "to_code": meta["to_code"],
                                           "source_prefix": source_prefix, "target_prefix": target_prefix,
                                           "model_sha256": model_sha,
                                           "bytes": os.path.getsize(os.path.join(tmp, name))})
        shutil.rmtree(work)
        atomic_write_json(os.path.join(tmp, outdir.MARKER), report, indent=2)
        outdir.check_out_dir(out_dir, force, [checkpoint, data_dir, scores])  # still safe to replace
    return report


def read_metadata(package: str) -> dict:
    """metadata.json of a ``.argosmodel`` file (for tests and tools)."""
    with zipfile.ZipFile(package) as zf:
        name = next(n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/metadata.json"))
        return json.load(io.BytesIO(zf.read(name)))
