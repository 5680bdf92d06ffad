"""Fixtures for the upcycling tests: tiny dense models trained once per session.

All five trainings (stock ``transformer`` multilingual post-norm and pre-norm,
a bilingual ``translation`` model with separate dictionaries, an LSTM, and a
``transformer_taskmoe`` with ``--moe-freq 0``) run in one fairseq process
(``train_many.py``), so fairseq is imported once.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from taskmoe_testlib import BIN, PLUGIN_DIR
from upcycle_testlib import ML_PAIRS

HERE = Path(__file__).resolve().parent
DIMS = ["--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--encoder-layers", "2",
        "--encoder-attention-heads", "2", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
        "--decoder-layers", "2", "--decoder-attention-heads", "2"]
PRE_NORM = ["--encoder-normalize-before", "--decoder-normalize-before"]


def _common(save_dir, updates=20, criterion="label_smoothed_cross_entropy"):
    return ["--optimizer", "adam", "--lr", "0.005", "--max-tokens", "1000", "--max-update", str(updates),
            "--save-dir", str(save_dir), "--no-progress-bar", "--log-format", "simple",
            "--log-interval", "5", "--num-workers", "0", "--seed", "1", "--no-epoch-checkpoints",
            "--disable-validation", "--criterion", criterion, "--label-smoothing", "0.1"]


def _multilingual(data, task="translation_multi_simple_epoch"):
    return [str(data), "--task", task, "--lang-pairs", ML_PAIRS, "--encoder-langtok", "src",
            "--decoder-langtok"]


@pytest.fixture(scope="session")
def bi_data(toy_data, tmp_path_factory):
    """en-de of the toy corpus binarized for ``--task translation`` with separate dictionaries."""
    from fairseq import options
    from fairseq_cli import preprocess

    raw = Path(toy_data).parent / "raw"
    dest = tmp_path_factory.mktemp("bi") / "bin"
    args = options.get_preprocessing_parser().parse_args([
        "--source-lang", "en", "--target-lang", "de", "--trainpref", str(raw / "train.en-de"),
        "--validpref", str(raw / "valid.en-de"), "--testpref", str(raw / "test.en-de"),
        "--destdir", str(dest), "--workers", "1"])
    preprocess.main(args)
    return dest


@pytest.fixture(scope="session")
def dense(toy_data, bi_data, tmp_path_factory):
    """{name: checkpoint path} of the dense models (see the module docstring)."""
    root = tmp_path_factory.mktemp("dense")
    runs = {
        "ml_post": _multilingual(toy_data) + ["--arch", "transformer", *DIMS, "--share-all-embeddings"],
        "ml_pre": _multilingual(toy_data) + ["--arch", "transformer", *DIMS, *PRE_NORM,
                                              "--share-all-embeddings"],
        "bi": [str(bi_data), "--task", "translation", "-s", "en", "-t", "de", "--arch", "transformer",
               *DIMS, *PRE_NORM, "--share-decoder-input-output-embed"],
        "lstm": [str(bi_data), "--task", "translation", "-s", "en", "-t", "de", "--arch", "lstm",
                 "--encoder-embed-dim", "16", "--encoder-hidden-size", "16", "--decoder-embed-dim", "16",
                 "--decoder-hidden-size", "16", "--decoder-out-embed-dim", "16"],
        "ours_freq0": [*_multilingual(toy_data, "translation_multi_simple_epoch_taskmoe"),
                       "--user-dir", str(PLUGIN_DIR), "--arch", "transformer_taskmoe_tiny",
                       "--moe-freq", "0"],
    }
    argvs, paths = [], {}
    for name, argv in runs.items():
        updates = 2 if name == "lstm" else 20
        criterion = "label_smoothed_cross_entropy_moe" if name == "ours_freq0" else None
        argvs.append(argv + _common(root / name, updates, criterion or "label_smoothed_cross_entropy"))
        paths[name] = root / name / "checkpoint_last.pt"
    spec = root / "runs.json"
    spec.write_text(json.dumps(argvs))
    proc = subprocess.run([sys.executable, str(HERE / "train_many.py"), str(spec)], capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1",
                                                       "PATH": f"{BIN}:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert all(p.is_file() for p in paths.values()), proc.stderr[-3000:]
    return paths
