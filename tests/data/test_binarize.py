import json
import os

import pytest
from fairseq import options, tasks
from fairseq.data import Dictionary, data_utils

from fairseq_taskmoe.checkpoints import current_umask
from fairseq_taskmoe.data.binarize import binarize
from fairseq_taskmoe.data.prepare import cli_main
from fairseq_taskmoe.data.split import split_pairs

from .conftest import synthetic_pairs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("bin")
    splits = {lang: split_pairs(synthetic_pairs(lang), 10, 10, 500) for lang in ("de", "fr")}
    binarize(splits, str(out), vocab_size=120)
    for name in ("dict.en.txt", "dict.de.txt", "dict.fr.txt"):  # fairseq-preprocess writes one per language
        assert (out / name).read_text() == (out / "dict.txt").read_text()
    return out, splits


def test_indexed_datasets_roundtrip_through_spm(built):
    import sentencepiece as spm

    out, splits = built
    d = Dictionary.load(str(out / "dict.en.txt"))
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    ds = data_utils.load_indexed_dataset(str(out / "test.en-de.de"), d, "mmap")
    assert len(ds) == len(splits["de"]["test"])
    decoded = sp.decode(d.string(ds[0]).split())
    assert decoded == splits["de"]["test"][0][1]
    raw = (out / "raw" / "test.en-de.de").read_text(encoding="utf-8").splitlines()
    assert raw == [t for _, t in splits["de"]["test"]]


def test_multilingual_task_loads_both_directions(built):
    out, splits = built
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(out), "--task", "translation_multi_simple_epoch", "--arch", "transformer",
        "--lang-pairs", "en-de,de-en,en-fr,fr-en", "--langs", "en,de,fr",
        "--encoder-langtok", "src", "--decoder-langtok", "--max-source-positions", "256",
        "--max-target-positions", "256",
    ])
    task = tasks.setup_task(args)
    task.load_dataset("test")
    expected = sum(2 * len(s["test"]) for s in splits.values())  # each en-xx file serves both directions
    assert len(task.datasets["test"]) == expected


def test_cli_end_to_end_offline(fake_wheel_cache, tmp_path, capsys):
    out = tmp_path / "corpus"
    argv = ["--out", str(out), "--cache-dir", str(fake_wheel_cache), "--offline", "--packages", "fakepkg==1.0",
            "--langs", "de,fr", "--min-pairs", "100", "--vocab-size", "120", "--valid-percent", "10",
            "--test-percent", "10", "--workers", "1"]
    assert cli_main(argv) == 0
    card = json.loads((out / "data_card.json").read_text())
    assert card["languages"] == ["de", "fr"]
    assert card["sources"][0]["licence"] == "MIT" and card["sources"][0]["corrupt"] == 1
    assert card["dropped"]["credits"] == 2
    assert (out / "lang_pairs.txt").read_text().strip() == "en-de,de-en,en-fr,fr-en"
    for name in ("spm.model", "dict.en.txt", "dict.de.txt", "train.en-fr.fr.bin", "raw/valid.en-de.en"):
        assert (out / name).exists(), name
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    mask = current_umask()
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask  # the umask's mode, not mkdtemp's 0700
    assert "en-de" in capsys.readouterr().out
    # refuses to overwrite without --force
    assert cli_main(argv) == 2
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize("extra,needle", [
    (["--langs", "xx!"], "--langs"),
    (["--langs", "it"], "Available languages"),  # only a corrupt catalog for it
    (["--packages", "notcached==2.0"], "--offline"),
    (["--vocab-size", "5"], "--vocab-size"),
])
def test_cli_errors_are_clear(fake_wheel_cache, tmp_path, capsys, extra, needle):
    argv = ["--out", str(tmp_path / "o"), "--cache-dir", str(fake_wheel_cache), "--offline",
            "--packages", "fakepkg==1.0", "--min-pairs", "10"] + extra
    assert cli_main(argv) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
