"""prepare-data CLI: documentation sources, the LibreOffice refusal, vocab size, bad caches, I/O errors."""
import errno
import json
import os
import shutil
import zipfile

import pytest

from fairseq_taskmoe.data import binarize as binarize_mod
from fairseq_taskmoe.data import sources
from fairseq_taskmoe.data.prepare import cli_main
from fairseq_taskmoe.data.split import source_key

from .conftest import build_help_deb

SMALL = ["--langs", "de,fr", "--min-pairs", "100", "--vocab-size", "120", "--valid-percent", "10",
         "--test-percent", "10", "--workers", "1"]


def _argv(cache, out, *extra):
    return ["--out", str(out), "--cache-dir", str(cache), "--offline", "--packages", "fakepkg==1.0"] + SMALL + list(extra)


def _one_line_error(capsys):
    """The error is one line, the last on stderr (progress bars and log lines may precede it)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("fairseq-taskmoe-prepare-data: error: ") and err.count(" error: ") == 1, err
    return last


@pytest.mark.parametrize("flags", [
    ["--packages", "fakepkg==1.0,LibreOffice-Help==7.0"],
    ["--debian", "--debian-packages", "util-linux-locales,libreoffice-l10n-de"],
    ["--docs", "--doc-packages", "gnome-user-docs,libreoffice-help-fr"],
])
def test_libreoffice_packages_are_refused_before_any_fetch(fake_wheel_cache, tmp_path, capsys, monkeypatch, flags):
    monkeypatch.setattr(sources.subprocess, "run", lambda *a, **k: pytest.fail("nothing may be fetched"))
    argv = ["--out", str(tmp_path / "o"), "--cache-dir", str(fake_wheel_cache)] + SMALL + flags
    assert cli_main(argv) == 2
    err = _one_line_error(capsys)
    assert "LibreOffice" in err and flags[-2] in err
    assert not (tmp_path / "o").exists()


def test_libreoffice_catalogs_inside_an_allowed_archive_are_never_read(fake_wheel_cache, tmp_path):
    whl = fake_wheel_cache / "fakepkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "a") as zf:  # a catalog that belongs to LibreOffice, bundled elsewhere
        zf.writestr("fakepkg/libreoffice/locale/es/LC_MESSAGES/lo.po",
                    'msgid "Open the document now"\nmsgstr "Abrir el documento ahora"\n' * 1)
    out = tmp_path / "o"
    assert cli_main(_argv(fake_wheel_cache, out, "--langs", "all")) == 0
    card = json.loads((out / "data_card.json").read_text())
    assert "es" not in card["all_languages_train_pairs"]


def test_vocab_size_beyond_the_text_reports_the_real_size(fake_wheel_cache, tmp_path, capsys):
    out = tmp_path / "o"
    assert cli_main(_argv(fake_wheel_cache, out, "--vocab-size", "100000")) == 0
    card = json.loads((out / "data_card.json").read_text())
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_file=str(out / "spm.model")).get_piece_size()
    assert card["vocab_size"] == pieces < 100000 and card["vocab_size_requested"] == 100000
    assert len((out / "dict.txt").read_text().splitlines()) == pieces - 1  # <unk> is fairseq's own
    assert "only yields %d pieces" % pieces in (out / "DATA_CARD.md").read_text()
    assert "--vocab-size 100000: the training text only yields %d" % pieces in capsys.readouterr().err


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_corrupt_cached_wheel_is_named_and_deleted_offline(fake_wheel_cache, tmp_path, capsys):
    whl = fake_wheel_cache / "fakepkg-1.0-py3-none-any.whl"
    _truncate(whl)
    assert cli_main(_argv(fake_wheel_cache, tmp_path / "o")) == 2
    err = _one_line_error(capsys)
    assert str(whl) in err and "--offline" in err
    assert not whl.exists()  # not cached forever: the next online run fetches it again


def test_corrupt_cached_wheel_is_fetched_again_online(fake_wheel_cache, tmp_path, monkeypatch):
    whl = fake_wheel_cache / "fakepkg-1.0-py3-none-any.whl"
    good = whl.read_bytes()
    _truncate(whl)
    calls = []

    def fake_pip(cmd, **kwargs):  # `pip download` puts a good wheel into the cache
        calls.append(cmd)
        whl.write_bytes(good)
        return sources.subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sources.subprocess, "run", fake_pip)
    argv = [a for a in _argv(fake_wheel_cache, tmp_path / "o") if a != "--offline"]
    assert cli_main(argv) == 0
    assert len(calls) == 1 and "download" in calls[0]
    assert whl.read_bytes() == good


def test_disk_full_while_writing_is_one_line_with_the_path(fake_wheel_cache, tmp_path, capsys, monkeypatch):
    def full(path, lines):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(binarize_mod, "_write_lines", full)
    out = tmp_path / "o"
    assert cli_main(_argv(fake_wheel_cache, out)) == 2
    err = _one_line_error(capsys)
    assert "disk full" in err and str(tmp_path) in err
    assert os.listdir(tmp_path) == ["cache"]  # no half-written output, no temp dir


def test_read_only_output_directory_is_one_line_with_the_path(fake_wheel_cache, tmp_path, capsys, monkeypatch):
    ro, real_mkdir = tmp_path / "ro", os.mkdir

    def mkdir(path, *args, **kwargs):  # any directory under ro/ (the output, its temp dir) fails
        if os.fspath(path).startswith(str(ro)):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert cli_main(_argv(fake_wheel_cache, ro / "o")) == 2
    err = _one_line_error(capsys)
    assert "read-only file system" in err and str(tmp_path / "ro") in err


def test_corpus_left_aside_by_an_interrupted_force_run_is_restored(fake_wheel_cache, tmp_path, capsys):
    old = tmp_path / ".o.old-1234abcd"  # a --force run killed between its two renames
    old.mkdir()
    (old / "data_card.json").write_text("{}")
    (tmp_path / ".o.tmp-5678abcd").mkdir()  # its unfinished output: reported, never deleted here
    assert cli_main(_argv(fake_wheel_cache, tmp_path / "o")) == 2
    assert (tmp_path / "o" / "data_card.json").read_text() == "{}" and not old.exists()
    err = capsys.readouterr().err
    assert "restored" in err and ".o.tmp-5678abcd" in err and "pass --force" in err


@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="needs dpkg-deb")
def test_docs_give_separate_sentence_splits_and_keep_the_english_hash_split(fake_wheel_cache, tmp_path, capsys):
    (fake_wheel_cache / "debian").mkdir()
    build_help_deb(fake_wheel_cache / "debian")
    out = tmp_path / "o"
    assert cli_main(_argv(fake_wheel_cache, out, "--docs", "--doc-packages", "fakehelp")) == 0
    card = json.loads((out / "data_card.json").read_text())
    assert card["splits"] == ["train", "valid", "test", "valid_doc", "test_doc"]
    doc_src = [s for s in card["sources"] if s["kind"] == "doc"][0]
    assert doc_src["name"] == "fakehelp" and doc_src["catalogs"] == 80 and doc_src["corrupt"] == 0
    assert doc_src["pairs_by_lang"]["de"] > 0
    english = {}
    for split in ("valid", "test", "valid_doc", "test_doc"):
        lines = (out / "raw" / ("%s.en-de.en" % split)).read_text(encoding="utf-8").splitlines()
        assert len(lines) == card["counts"]["de"][split] > 0, split
        assert (out / ("%s.en-de.de.idx" % split)).exists()
        english[split] = {source_key(s) for s in lines}
    assert all(len(s.split()) >= card["doc_min_eval_words"] for s in
               (out / "raw" / "test_doc.en-de.en").read_text(encoding="utf-8").splitlines())
    assert not any(s.startswith("You can") for s in (out / "raw" / "test.en-de.en").read_text().splitlines())
    assert english["test_doc"].isdisjoint(english["valid_doc"])
    # no English string of any evaluation split is in train (binarized train decoded back via spm)
    import sentencepiece as spm
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(str(out / "dict.en.txt"))
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    train = data_utils.load_indexed_dataset(str(out / "train.en-de.en"), d, "mmap")
    train_keys = {source_key(sp.decode(d.string(train[i]).split())) for i in range(len(train))}
    assert card["counts"]["de"]["train_doc"] > 0 and len(train) == card["counts"]["de"]["train"]
    for split, keys in english.items():
        assert train_keys.isdisjoint(keys), split
    assert "test_doc" in capsys.readouterr().out
