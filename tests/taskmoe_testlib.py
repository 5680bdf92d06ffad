"""Helpers shared by the tests (import as ``from taskmoe_testlib import ...``).

tests/ is on sys.path because tests/conftest.py lives there; a module with a
unique name avoids the ambiguity of importing ``conftest`` from subfolders.
"""

import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "fairseq_taskmoe"
BIN = Path(sys.executable).parent
BENCH = REPO / "bench"


def load_script(name):
    """Import ``bench/NAME.py`` as a module (the bench scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
LANGS = ("de", "fr", "es")
LANG_PAIRS = ",".join(f"en-{l},{l}-en" for l in LANGS)
WORDS = "the a cat dog house tree runs big small red blue green eats sees old new".split()


def _translate(words, lang):
    # A deterministic toy "language": a per-language suffix on every word.
    return " ".join(w + {"de": "en", "fr": "eau", "es": "o"}[lang] for w in words)


# Not a multiple of 8 (fairseq's default --required-batch-size-multiple): fairseq
# main drops the last batch of such a split unless the task prevents it.
N_EVAL = 13


def write_toy_corpus(raw: Path, langs=LANGS, n_train=240, n_eval=N_EVAL, seed=0):
    rng = random.Random(seed)
    raw.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        for split, n in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
            src, tgt = [], []
            for _ in range(n):
                words = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
                src.append(" ".join(words))
                tgt.append(_translate(words, lang))
            (raw / f"{split}.en-{lang}.en").write_text("\n".join(src) + "\n")
            (raw / f"{split}.en-{lang}.{lang}").write_text("\n".join(tgt) + "\n")


def binarize(raw: Path, dest: Path, langs=LANGS):
    """Joint dictionary over all languages, then one binarization per en-X pair."""
    from fairseq import options
    from fairseq_cli import preprocess

    dest.mkdir(parents=True, exist_ok=True)
    joint = raw / "joint.txt"
    joint.write_text("".join((raw / f"train.en-{l}.{side}").read_text()
                             for l in langs for side in ("en", l)))
    args = options.get_preprocessing_parser().parse_args([
        "--only-source", "--trainpref", str(joint), "--destdir", str(raw / "dict"), "--workers", "1"])
    preprocess.main(args)
    for lang in langs:
        args = options.get_preprocessing_parser().parse_args([
            "--source-lang", "en", "--target-lang", lang, "--trainpref", str(raw / f"train.en-{lang}"),
            "--validpref", str(raw / f"valid.en-{lang}"), "--testpref", str(raw / f"test.en-{lang}"),
            "--destdir", str(dest), "--srcdict", str(raw / "dict" / "dict.txt"),
            "--tgtdict", str(raw / "dict" / "dict.txt"), "--workers", "1"])
        preprocess.main(args)
    return dest



def run_cli(name, args, cwd=None, input_text=None, timeout=600, env_extra=None):
    """Run a console script of this venv; fail the test with its output on error."""
    env = dict(os.environ)
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    env.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env.update(env_extra or {})
    proc = subprocess.run([str(BIN / name), *map(str, args)], cwd=cwd, input=input_text,
                          capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def hypotheses(stdout):
    """{sentence id: (hypothesis text, score)} from fairseq-generate's H- lines."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("H-"):
            sid, score, text = line.split("\t")
            out[sid] = (text, float(score))
    return out


def multilingual_task_args(data, lang_pairs=LANG_PAIRS, task="translation_multi_simple_epoch_taskmoe"):
    return [data, "--user-dir", PLUGIN_DIR, "--task", task,
            "--lang-pairs", lang_pairs, "--encoder-langtok", "src", "--decoder-langtok"]


def setup_task(data, extra=(), generate=(), task="translation_multi_simple_epoch_taskmoe"):
    """The task as fairseq-train sets it up (model built: fills the arch defaults), or as
    fairseq-generate does when ``generate`` holds its flags (``["-s", "en", "-t", "de"]``)."""
    from fairseq import options, tasks

    parser = options.get_generation_parser() if generate else options.get_training_parser()
    arch = [] if generate else ["--arch", "transformer_taskmoe_tiny"]
    args = options.parse_args_and_arch(parser, [str(a) for a in multilingual_task_args(data, task=task)]
                                       + ["--max-tokens", "300", *arch, *extra, *generate])
    built = tasks.setup_task(args)
    if not generate:
        built.build_model(args)
    return built


class FakeTask:
    """Just the dictionaries a model's build_model reads: ``n_symbols`` words w0, w1, ..."""

    def __init__(self, n_symbols):
        from fairseq.data import Dictionary

        d = Dictionary()
        for i in range(n_symbols):
            d.add_symbol(f"w{i}")
        self.source_dictionary = self.target_dictionary = d


def train_args(save_dir, max_update=3, extra=()):
    return ["--arch", "transformer_taskmoe_tiny", "--criterion", "label_smoothed_cross_entropy_moe",
            "--label-smoothing", "0.1", "--optimizer", "adam", "--lr", "0.003", "--max-tokens", "400",
            "--max-update", str(max_update), "--save-dir", save_dir, "--no-progress-bar",
            "--log-format", "simple", "--log-interval", "1", "--num-workers", "0", "--seed", "1",
            "--sampling-method", "temperature", "--sampling-temperature", "1.5",
            "--no-epoch-checkpoints", *extra]
