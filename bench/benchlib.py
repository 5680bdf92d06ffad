"""Shared helpers of the bench/ scripts: building fairseq models in-process,
saving them as training would, and writing tables / JSON.

Every bench script prints a table and writes JSON; none is a test.
"""

import math
import os
import platform
import sys
import time
from pathlib import Path

import logging

import torch

# fairseq's option parsing turns on root DEBUG logging; keep matplotlib's font search quiet.
logging.getLogger("matplotlib").setLevel(logging.WARNING)
logging.getLogger("sacrebleu").setLevel(logging.WARNING)  # its paired test logs every step at INFO

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "fairseq_taskmoe"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def lang_pairs_of(data_dir) -> str:
    """--lang-pairs of a binarized multilingual data dir (lang_pairs.txt, else en-X from file names)."""
    listed = Path(data_dir) / "lang_pairs.txt"
    if listed.is_file():
        return listed.read_text().strip()
    pairs = sorted({p.name.split(".")[1] for p in Path(data_dir).glob("train.*-*.*.idx")})
    return ",".join(f"{p},{p.split('-')[1]}-{p.split('-')[0]}" for p in pairs)


def task_flags(data_dir, lang_pairs=None, plugin=True):
    task = "translation_multi_simple_epoch_taskmoe" if plugin else "translation_multi_simple_epoch"
    flags = [str(data_dir), "--task", task, "--lang-pairs", lang_pairs or lang_pairs_of(data_dir),
             "--encoder-langtok", "src", "--decoder-langtok"]
    return flags + (["--user-dir", str(PLUGIN_DIR)] if plugin else [])


def build(data_dir, model_flags, lang_pairs=None, seed=1):
    """(model, task, args) of a random-init model, built the way fairseq-train builds it."""
    import fairseq_taskmoe  # noqa: F401  (registers the plugin)
    from fairseq import options, tasks, utils

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, task_flags(data_dir, lang_pairs) + ["--num-workers", "0", "--seed", str(seed)]
        + list(map(str, model_flags)))
    utils.import_user_module(args)
    torch.manual_seed(seed)
    task = tasks.setup_task(args)
    model = task.build_model(args)
    return model.eval(), task, args


def save_like_training(model, args, path):
    """A checkpoint laid out as fairseq-train writes it (cfg groups, model Namespace)."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    cfg = convert_namespace_to_omegaconf(args)
    state = {"cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
             "model": model.state_dict(), "extra_state": {"train_iterator": {"epoch": 1}},
             "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterion",
                                   "optimizer_name": "Adam", "lr_scheduler_state": {}, "num_updates": 0}],
             "last_optimizer_state": None}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def load(path, data_dir, pair=None):
    """(model, task) of a checkpoint, task narrowed to one pair ("en-de") when given."""
    import fairseq_taskmoe  # noqa: F401
    from fairseq import checkpoint_utils

    overrides = {"data": str(data_dir)}
    if pair:
        overrides["source_lang"], overrides["target_lang"] = pair.split("-")
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides=overrides)
    return models[0].float().eval(), task


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def environment() -> dict:
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "torch": torch.__version__,
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
            "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "argv": sys.argv}


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def write_json(obj, path):
    """Atomic JSON write (a crashed run leaves the previous file), through the package's one helper."""
    from fairseq_taskmoe.checkpoints import atomic_write_json

    atomic_write_json(path, obj, indent=1, ensure_ascii=False, default=str)
    return Path(path)


def table(rows, columns) -> str:
    """A markdown table of dict rows (numbers to 3 significant figures, thousands separated)."""
    from tabulate import tabulate

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return "" if v is None else str(v)

    body = [[fmt(r.get(c)) for c in columns] for r in rows]
    return tabulate(body, headers=list(columns), tablefmt="github", disable_numparse=True)


def torch_timed(fn, max_run_time=10.0, min_run_time=0.01, threshold=0.1) -> dict:
    """``torch.utils.benchmark.Timer`` over ``fn()``: for torch-level microbenchmarks in this process.

    The Timer's warm-up picks a block size (calls per timed block, so timer overhead is negligible);
    blocks then repeat until their IQR is below ``threshold`` x median (at least 4 blocks) or
    ``max_run_time`` seconds are spent. Runs at the current torch thread count (the Timer's own
    default would be 1 thread). Returns ``median_s`` (seconds per call, median over blocks),
    ``iqr_s`` (their interquartile range; 0 with one block) and ``runs`` (timed calls).
    """
    from torch.utils.benchmark import Timer

    m = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).adaptive_autorange(
        threshold=threshold, min_run_time=min_run_time, max_run_time=max_run_time)
    return {"median_s": m.median, "iqr_s": m.iqr, "runs": m.number_per_run * len(m.raw_times)}


def timed(fn, min_repeats=1, min_seconds=0.0):
    """Median seconds of ``fn()`` over at least ``min_repeats`` calls / ``min_seconds`` (after one warm-up)."""
    times = timings(fn, min_repeats, min_seconds)
    return times[len(times) // 2]


def timings(fn, min_repeats=1, min_seconds=0.0):
    """Sorted seconds of each timed call of ``fn()`` (at least ``min_repeats`` calls / ``min_seconds``,
    after one warm-up): :func:`timed`'s median, with the spread.

    A fixed count, for what ``torch_timed`` does not fit: whole decodes under a time budget
    (decode_throughput.py, serve.py's worker: seconds per call, the count is the budget's) and
    calls with collectives in them (expert_parallel.py: every rank must make the same number of
    calls, where a Timer's adaptive count differs per rank and would hang the all-to-all).
    """
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)


# --- toy corpus for the --smoke paths (CI); independent of tests/ -----------------------------------

TOY_WORDS = "the a cat dog house tree runs big small red blue green eats sees old new".split()
TOY_SUFFIX = {"de": "en", "fr": "eau", "es": "o"}


def toy_corpus(root, langs=("de",), n_train=240, n_eval=13, seed=0):
    """A binarized en<->X toy corpus in the layout ``fairseq-taskmoe-prepare-data`` writes.

    A toy "language" appends a suffix to every English word. The binarized
    text is sentencepiece-style pieces (one ``▁word`` piece per word), so
    ``fairseq-generate --remove-bpe sentencepiece`` restores the words, and
    ``raw/{valid,test}.en-X.*`` hold the plain text references. ``n_eval`` is
    not a multiple of 8 on purpose (fairseq main drops such a last batch
    unless the task prevents it). Skipped when ``root/bin/lang_pairs.txt`` exists.
    """
    import random

    root = Path(root)
    dest = root / "bin"
    if (dest / "lang_pairs.txt").is_file():
        return dest
    rng = random.Random(seed)
    pieces, raw = root / "pieces", dest / "raw"
    for d in (pieces, raw):
        d.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        for split, n in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
            sides = {"en": [], lang: []}
            for _ in range(n):
                words = [rng.choice(TOY_WORDS) for _ in range(rng.randint(3, 7))]
                sides["en"].append(words)
                sides[lang].append([w + TOY_SUFFIX[lang] for w in words])
            for side, sentences in sides.items():
                name = f"{split}.en-{lang}.{side}"
                (pieces / name).write_text("".join(" ".join("\u2581" + w for w in s) + "\n" for s in sentences))
                if split != "train":
                    (raw / name).write_text("".join(" ".join(s) + "\n" for s in sentences))
    _toy_binarize(pieces, dest, langs)
    (dest / "lang_pairs.txt").write_text(",".join(f"en-{l},{l}-en" for l in langs) + "\n")
    return dest


def _toy_binarize(pieces, dest, langs):
    from fairseq import options
    from fairseq_cli import preprocess

    joint = pieces / "joint.txt"
    joint.write_text("".join((pieces / f"train.en-{l}.{side}").read_text() for l in langs for side in ("en", l)))
    preprocess.main(options.get_preprocessing_parser().parse_args([
        "--only-source", "--trainpref", str(joint), "--destdir", str(pieces / "dict"), "--workers", "1"]))
    for lang in langs:
        preprocess.main(options.get_preprocessing_parser().parse_args([
            "--source-lang", "en", "--target-lang", lang, "--trainpref", str(pieces / f"train.en-{lang}"),
            "--validpref", str(pieces / f"valid.en-{lang}"), "--testpref", str(pieces / f"test.en-{lang}"),
            "--destdir", str(dest), "--srcdict", str(pieces / "dict" / "dict.txt"),
            "--tgtdict", str(pieces / "dict" / "dict.txt"), "--workers", "1"]))


def mean_sd(values):
    """(mean, sample standard deviation; 0.0 for a single value) of a non-empty list."""
    values = list(values)
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
