"""Score a checkpoint per language pair with fairseq-generate + sacrebleu.

    fairseq-taskmoe-evaluate CKPT --data data/loc8 --pairs en-de,de-en [--json out.json]
    python -m fairseq_taskmoe.evaluate CKPT --data data/loc8 --pairs en-de,de-en

Runs the real ``fairseq-generate`` for each pair (beam 4 by default, the
plugin's ``--user-dir`` and task by default, ``--lang-pairs`` read from the
checkpoint), takes the detokenized hypotheses (D- lines) and scores them with
sacrebleu against the **raw reference text** ``raw/{subset}.en-xx.{lang}`` that
``fairseq-taskmoe-prepare-data`` writes next to the binarized data, not against
fairseq's T- lines (those are the reference after sentencepiece and the
dictionary: ``<unk>`` and normalised punctuation; 79 of 441 zh_Hans test
references differ). Metrics: BLEU (tokenizer ``zh`` for Chinese, ``char`` for
Japanese, ``13a`` otherwise), chrF and chrF++, each with its sacrebleu
signature, printed and written to JSON.

fairseq-generate runs with ``--required-batch-size-multiple 1``: with the
default (8), fairseq main drops the last batch of the split when its size is
not a multiple of 8, i.e. up to 7 sentences per pair, for any task (the
stock ``translation_multi_simple_epoch`` included). Every pair's output is
checked against the number of sentences in the binarized split and in the raw
reference file.

Each direction's result also counts its looping hypotheses (``loops``,
``fairseq_taskmoe.scoring.loops``).

Statistics for "system A vs system B" claims live in ``fairseq_taskmoe.scoring`` and are
re-exported here: :func:`paired_bootstrap_resample` (paired bootstrap over clusters of
segments that share an English string, or over segments; bench/quality.py uses both),
:func:`cluster_keys`, :func:`seed_level_test` / :func:`claim_label`, :func:`has_loop`. The
older :func:`paired_bootstrap` is sacrebleu's own segment bootstrap of a concatenation.
"""

import argparse
import errno
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF

from fairseq_taskmoe.checkpoints.cli import HelpFormatter, add_verbose, split_list
from fairseq_taskmoe.scoring.bootstrap import paired_bootstrap_resample  # noqa: F401  (re-exported)
from fairseq_taskmoe.scoring.clusters import cluster_keys  # noqa: F401
from fairseq_taskmoe.scoring.loops import has_loop, loop_count
from fairseq_taskmoe.scoring.seeds import claim_label, seed_level_test  # noqa: F401

PLUGIN_DIR = Path(__file__).resolve().parent
PLUGIN_TASK = "translation_multi_simple_epoch_taskmoe"
REFERENCE_CHOICES = ("raw", "generate")


def bleu_tokenizer(lang: str) -> str:
    if lang.startswith("zh"):
        return "zh"
    if lang.startswith("ja"):
        return "char"
    return "13a"


def parse_pairs(text: str, flag: str = "--pairs"):
    """["en-de", ...] from "en-de,de-en"; ValueError naming ``flag`` otherwise."""
    pairs = split_list(text)  # commas, spaces or both, as every CLI of the plugin takes lists
    if not pairs:
        given = " ".join(text) if isinstance(text, (list, tuple)) else str(text)
        raise ValueError(f"{flag} {given!r} names no language pair; expected e.g. en-de,de-en")
    for pair in pairs:
        parts = pair.split("-")
        if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
            raise ValueError(f"{flag}: {pair!r} is not a pair SRC-TGT of two languages (e.g. en-de)")
    return pairs


def parse_generate_output(text: str):
    """(hypotheses, references) in sample-id order from fairseq-generate stdout."""
    hyps, refs = {}, {}
    for line in text.splitlines():
        m = re.match(r"^([DT])-(\d+)\t(.*)$", line)
        if not m:
            continue
        kind, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "D":
            hyps[idx] = rest.split("\t", 1)[1] if "\t" in rest else ""
        else:
            refs[idx] = rest
    ids = sorted(refs)
    missing = [i for i in ids if i not in hyps]
    if missing:
        raise ValueError(f"fairseq-generate produced no hypothesis for sample ids {missing[:5]}")
    return [hyps[i] for i in ids], [refs[i] for i in ids]


def split_size(data, subset, src, tgt):
    """Sentences in the binarized ``subset`` of ``src-tgt`` (either direction's files); None if absent."""
    from fairseq.data import data_utils

    from fairseq_taskmoe.data.binarize import pair_file

    try:
        prefix = pair_file(data, subset, src, tgt, src)
    except FileNotFoundError:
        return None
    dataset = data_utils.load_indexed_dataset(str(prefix), None)  # infers the format
    return None if dataset is None else len(dataset)


def raw_reference_file(data, subset, src, tgt) -> Path:
    """``raw/{subset}.{src}-{tgt}.{tgt}`` (or the reversed pair's file); FileNotFoundError if absent."""
    candidates = [Path(data) / "raw" / f"{subset}.{a}-{b}.{tgt}" for a, b in ((src, tgt), (tgt, src))]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no raw reference text for {subset} {src}-{tgt}: neither {candidates[0]} nor {candidates[1]} "
        "exists (fairseq-taskmoe-prepare-data writes them); pass --references generate to score "
        "against fairseq-generate's T- lines instead")


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def generate(ckpt, data, src, tgt, lang_pairs, user_dir=None, task=PLUGIN_TASK,
             beam=4, subset="test", max_tokens=8000, extra=()):
    """(hypotheses, T- references, seconds) of one direction, checked to cover the whole split."""
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "fairseq-generate"), str(data), "--task", task, "--lang-pairs", lang_pairs,
           "--encoder-langtok", "src", "--decoder-langtok", "-s", src, "-t", tgt, "--path", str(ckpt),
           "--gen-subset", subset, "--beam", str(beam), "--max-tokens", str(max_tokens),
           "--num-workers", "0", "--remove-bpe", "sentencepiece", "--max-len-a", "1.2",
           "--max-len-b", "10", "--required-batch-size-multiple", "1", *extra]
    if user_dir:
        cmd += ["--user-dir", str(user_dir)]
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-generate failed for {src}-{tgt}:\n{proc.stderr[-3000:]}")
    hyps, refs = parse_generate_output(proc.stdout)
    expected = split_size(data, subset, src, tgt)
    if expected is not None and len(refs) != expected:
        raise RuntimeError(f"fairseq-generate translated {len(refs)} of the {expected} sentences of "
                           f"{subset} {src}-{tgt} in {data}; scores over a subset would not be comparable")
    return hyps, refs, time.time() - t0


def score(hyps, refs, tgt):
    """BLEU, chrF, chrF++ of one direction, with the sacrebleu signature of each."""
    metrics = {"bleu": BLEU(tokenize=bleu_tokenizer(tgt)), "chrf": CHRF(), "chrf++": CHRF(word_order=2)}
    out, signatures = {}, {}
    for name, metric in metrics.items():
        out[name] = round(metric.corpus_score(hyps, [refs]).score, 2)
        signatures[name] = str(metric.get_signature())
    return {**out, "sentences": len(hyps), "bleu_tokenizer": bleu_tokenizer(tgt), "signatures": signatures}


def check_inputs(data, pairs, subset, references):
    """Everything a pair needs, checked before minutes of decoding: {pair: (n, raw reference file)}."""
    if not (Path(data) / "dict.txt").is_file() and not list(Path(data).glob("dict.*.txt")):
        raise FileNotFoundError(f"--data {data}: not a binarized data dir (no dict.*.txt)")
    found = {}
    for pair in pairs:
        src, tgt = pair.split("-")
        n = split_size(data, subset, src, tgt)
        if n is None:
            raise FileNotFoundError(f"--pairs {pair}: no binarized {subset} split for {src}-{tgt} in {data}")
        ref_file = raw_reference_file(data, subset, src, tgt) if references == "raw" else None
        if ref_file is not None:
            n_ref = len(read_lines(ref_file))
            if n_ref != n:
                raise ValueError(f"{ref_file} has {n_ref} lines but the binarized {subset} {src}-{tgt} "
                                 f"split has {n} sentences: the raw references do not belong to it")
        found[pair] = (n, ref_file)
    return found


def evaluate(ckpt, data, pairs, lang_pairs=None, user_dir=PLUGIN_DIR, task=PLUGIN_TASK,
             beam=4, subset="test", extra=(), log=print, references="raw"):
    """{pair: scores + hypotheses}; ``references``: "raw" (raw/ text) or "generate" (T- lines)."""
    if references not in REFERENCE_CHOICES:
        raise ValueError(f"--references must be one of {', '.join(REFERENCE_CHOICES)}, got {references!r}")
    lang_pairs = lang_pairs or ",".join(pairs)
    inputs = check_inputs(data, pairs, subset, references)
    results = {}
    for i, pair in enumerate(pairs, 1):
        src, tgt = pair.split("-")
        n, ref_file = inputs[pair]
        log(f"[{i}/{len(pairs)}] {pair}: translating {n} sentences ...")
        hyps, t_refs, secs = generate(ckpt, data, src, tgt, lang_pairs, user_dir, task, beam, subset,
                                      extra=extra)
        refs = read_lines(ref_file) if ref_file else t_refs
        if len(refs) != len(hyps):  # belt and braces: check_inputs compared the counts already
            raise RuntimeError(f"{len(hyps)} hypotheses but {len(refs)} references for {pair}")
        results[pair] = {**score(hyps, refs, tgt), "references": str(ref_file) if ref_file else "T- lines",
                         "seconds": round(secs, 1), "loops": loop_count(hyps, tgt), "hypotheses": hyps}
        r = results[pair]
        log(f"{pair:>12}  BLEU {r['bleu']:6.2f}  chrF {r['chrf']:6.2f}  chrF++ {r['chrf++']:6.2f}  "
            f"loops {r['loops']}/{len(hyps)}  ({len(hyps)} sentences, {secs:.0f}s)")
    return results


def summary(results):
    n = len(results)
    return {f"avg_{m.replace('++', 'pp')}": round(sum(r[m] for r in results.values()) / n, 2)
            for m in ("bleu", "chrf", "chrf++")}


def signatures(results):
    """The distinct signatures of ``results``, per metric (BLEU's differ by tokenizer)."""
    out = {}
    for r in results.values():
        for metric, sig in r["signatures"].items():
            out.setdefault(metric, [])
            if sig not in out[metric]:
                out[metric].append(sig)
    return out


def paired_bootstrap(baseline, system, references, langs, names=("baseline", "system"), n_samples=1000):
    """sacrebleu's paired bootstrap resampling of ``system`` against ``baseline``.

    ``baseline``/``system``/``references``/``langs``: one entry per segment, so
    concatenated test sets of several directions work: BLEU tokenizes every
    segment with its target language's tokenizer first (``langs``), then scores
    with ``tokenize="none"``; chrF needs no tokenizer. Returns, per metric, both
    scores, the p-value (H0: same quality), the bootstrap mean and 95%
    confidence half-width of each, and the signature.
    """
    from sacrebleu.significance import PairedTest

    if not (len(baseline) == len(system) == len(references) == len(langs)) or not references:
        raise ValueError(f"paired bootstrap needs equal, non-zero lengths; got {len(baseline)} / "
                         f"{len(system)} hypotheses, {len(references)} references, {len(langs)} languages")
    tokenizers = {lang: BLEU(tokenize=bleu_tokenizer(lang)).tokenizer for lang in set(langs)}

    def tok(lines):
        return [tokenizers[lang](line) for line, lang in zip(lines, langs)]

    bleu_refs, bleu_sys = [tok(references)], [(names[0], tok(baseline)), (names[1], tok(system))]
    per_segment = ",".join(sorted(f"{lang}={bleu_tokenizer(lang)}" for lang in set(langs)))
    out = {}
    for metric, refs, systems in (("BLEU", bleu_refs, bleu_sys),
                                  ("chrF", [list(references)], [(names[0], baseline), (names[1], system)])):
        instance = BLEU(tokenize="none") if metric == "BLEU" else CHRF()
        sigs, scores = PairedTest(systems, {metric: instance}, refs, test_type="bs", n_samples=n_samples)()
        key = next(k for k in scores if k != "System")
        base, other = scores[key]
        p_value = other.p_value
        # sacrebleu counts resampled differences strictly above the observed one: when every
        # resample gives the same difference (identical outputs, or both scores stuck at 0) it
        # returns 1/(n+1), i.e. "significant". No difference was observed: p = 1.
        if list(baseline) == list(system) or (base.score == other.score and base.ci == other.ci == 0):
            p_value = 1.0
        signature = str(sigs[key]) + (f"|tok-per-segment:{per_segment}" if metric == "BLEU" else "")
        out[metric] = {names[0]: round(base.score, 2), names[1]: round(other.score, 2), "p_value": p_value,
                       f"{names[0]}_mean": round(float(base.mean), 2), f"{names[0]}_ci95": round(float(base.ci), 2),
                       f"{names[1]}_mean": round(float(other.mean), 2), f"{names[1]}_ci95": round(float(other.ci), 2),
                       "signature": signature, "segments": len(references)}
    return out


def checkpoint_lang_pairs(path):
    """The ``--lang-pairs`` a checkpoint was trained with (its task args), or None if it has none."""
    from fairseq_taskmoe.checkpoints import lang_pairs, load_source, task_args

    state = load_source(path)
    task = task_args(state)
    if task is None:  # a --format stock extract keeps its task args as a plain dict
        cfg = state.get("cfg") if isinstance(state, dict) else None
        group = cfg.get("task") if isinstance(cfg, dict) else None
        task = argparse.Namespace(**group) if isinstance(group, dict) else None
    if task is None:
        return None
    return ",".join(lang_pairs(task)) or None


def writable_target(path, flag="--json"):
    """Fail now, not after minutes of scoring, if ``path`` cannot be written (the OSError names
    ``flag`` and the path; missing parent directories are created when the file is written)."""
    from fairseq_taskmoe.checkpoints import check_writable

    if Path(path).is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory (give a file name)", f"{flag} {path}")
    try:
        check_writable(path)
    except OSError as err:
        raise type(err)(err.errno, err.strerror, f"{flag} {path}") from err


def get_parser():
    p = argparse.ArgumentParser(prog="fairseq-taskmoe-evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint fairseq-generate decodes (full model or extract)")
    p.add_argument("--data", required=True, help="binarized data dir (dict.*.txt, raw/ references)")
    p.add_argument("--pairs", required=True, nargs="+", metavar="SRC-TGT",
                   help="pairs to score, commas or spaces: en-de,de-en or en-de de-en")
    p.add_argument("--lang-pairs", default=None,
                   help="the model's --lang-pairs (default: read from the checkpoint)")
    p.add_argument("--user-dir", default=str(PLUGIN_DIR), help="fairseq --user-dir (the installed fairseq_taskmoe)")
    p.add_argument("--task", default=PLUGIN_TASK, help="fairseq task to decode with")
    p.add_argument("--beam", type=int, default=4, help="beam size")
    p.add_argument("--subset", default="test", help="data split to score (fairseq --gen-subset)")
    # fairseq-generate's own decoding options, passed through (its defaults for the first)
    p.add_argument("--no-repeat-ngram-size", type=int, default=0,
                   help="forbid repeating any n-gram of this size in a hypothesis (0: off). Works on CPU "
                        "through the plugin task (fairseq 0.12's own CPU blocker bans nothing, fairseq "
                        "issue #5206; tasks/ngram_block.py); with --task other than the plugin's it stays a no-op")
    p.add_argument("--max-len-a", type=float, default=1.2, help="hypothesis length <= a * source length + b")
    p.add_argument("--max-len-b", type=int, default=10, help="see --max-len-a")
    p.add_argument("--references", default="raw", choices=REFERENCE_CHOICES,
                   help="raw: the data dir's raw/ text (standard); generate: fairseq's T- lines")
    p.add_argument("--json", default=None, help="write results here")
    add_verbose(p)
    return p


def main(argv=None):
    from fairseq_taskmoe.checkpoints import atomic_write_json

    args = get_parser().parse_args(argv)
    pairs = parse_pairs(args.pairs)
    if args.lang_pairs is not None:
        parse_pairs(args.lang_pairs, "--lang-pairs")
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    if args.beam < 1:
        raise ValueError(f"--beam must be >= 1, got {args.beam}")
    if args.no_repeat_ngram_size < 0 or args.max_len_a < 0 or args.max_len_b < 1:
        raise ValueError(f"--no-repeat-ngram-size must be >= 0, --max-len-a >= 0 and --max-len-b >= 1; got "
                         f"{args.no_repeat_ngram_size}, {args.max_len_a}, {args.max_len_b}")
    extra = ["--no-repeat-ngram-size", str(args.no_repeat_ngram_size), "--max-len-a", str(args.max_len_a),
             "--max-len-b", str(args.max_len_b)]  # after generate()'s defaults: the last one wins
    if args.json:
        writable_target(args.json)
    lang_pairs = args.lang_pairs or checkpoint_lang_pairs(args.checkpoint)
    if lang_pairs is None:
        raise ValueError(f"{args.checkpoint} records no --lang-pairs; pass the model's --lang-pairs")
    print(f"scoring {len(pairs)} direction(s) of {args.checkpoint} (model --lang-pairs {lang_pairs})",
          flush=True)
    try:
        results = evaluate(args.checkpoint, args.data, pairs, lang_pairs, args.user_dir, args.task, args.beam,
                           args.subset, extra=extra, log=lambda s: print(s, flush=True), references=args.references)
    except RuntimeError as err:  # fairseq-generate failed or fell short: its last words, one line
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise ValueError(lines[0] + (f" ... {lines[-1].strip()}" if len(lines) > 1 else "")) from err
    out = {"checkpoint": args.checkpoint, "lang_pairs": lang_pairs, "references": args.references,
           "decoding": {"beam": args.beam, "no_repeat_ngram_size": args.no_repeat_ngram_size,
                        "max_len_a": args.max_len_a, "max_len_b": args.max_len_b},
           "signatures": signatures(results), "pairs": results, **summary(results)}
    print(f"{'average':>12}  BLEU {out['avg_bleu']:6.2f}  chrF {out['avg_chrf']:6.2f}  "
          f"chrF++ {out['avg_chrfpp']:6.2f}")
    for metric, sigs in out["signatures"].items():
        for sig in sigs:
            print(f"{metric} signature: {sig}")
    if args.json:
        atomic_write_json(args.json, out, ensure_ascii=False)
    return out


def cli_main():
    from fairseq_taskmoe.checkpoints import console_main

    console_main("fairseq-taskmoe-evaluate", main)


if __name__ == "__main__":
    cli_main()
