import zipfile

import polib
import pytest

from fairseq_taskmoe.data.catalogs import CatalogError, catalog_lang, parse_catalog
from fairseq_taskmoe.data.sources import iter_catalogs


def _po(entries, charset="utf-8"):
    po = polib.POFile(encoding=charset)
    po.metadata = {"Content-Type": "text/plain; charset=%s" % charset, "Language": "de"}
    for e in entries:
        po.append(e)
    return po


def _entries():
    return [
        polib.POEntry(msgid="Save", msgstr="Speichern"),
        polib.POEntry(msgid="Fuzzy one", msgstr="Unscharf", flags=["fuzzy"]),
        polib.POEntry(msgid="Old one", msgstr="Alt", obsolete=True),
        polib.POEntry(msgid="Untranslated", msgstr=""),
        polib.POEntry(msgid="%d file", msgid_plural="%d files", msgstr_plural={0: "%d Datei", 1: "%d Dateien"}),
        polib.POEntry(msgid="Open", msgstr="Öffnen", msgctxt="menu"),
        polib.POEntry(msgid="Open", msgstr="Offen", msgctxt="state"),
    ]


EXPECTED = [("Save", "Speichern"), ("%d file", "%d Datei"), ("Open", "Öffnen"), ("Open", "Offen")]


def test_po_skips_fuzzy_obsolete_header_and_pairs_plural_with_msgid(tmp_path):
    path = tmp_path / "de.po"
    _po(_entries()).save(str(path))
    assert parse_catalog(path.read_bytes(), "locale/de/LC_MESSAGES/django.po") == EXPECTED


def test_mo_matches_po(tmp_path):
    po = _po([e for e in _entries() if not e.obsolete and "fuzzy" not in e.flags])
    po.save_as_mofile(str(tmp_path / "de.mo"))
    pairs = parse_catalog((tmp_path / "de.mo").read_bytes(), "locale/de/LC_MESSAGES/django.mo")
    assert sorted(pairs) == sorted(EXPECTED)


def test_latin1_po_is_decoded_with_its_declared_charset(tmp_path):
    path = tmp_path / "fr.po"
    _po([polib.POEntry(msgid="Delete", msgstr="Supprimé à côté")], charset="iso-8859-1").save(str(path))
    data = path.read_bytes()
    assert "é".encode("latin-1") in data and "é".encode("utf-8") not in data
    assert parse_catalog(data, "fr.po") == [("Delete", "Supprimé à côté")]


def test_latin1_mo_is_decoded_with_its_header_charset(tmp_path):
    _po([polib.POEntry(msgid="Delete", msgstr="Supprimé à côté")], charset="iso-8859-1").save_as_mofile(
        str(tmp_path / "fr.mo"))
    data = (tmp_path / "fr.mo").read_bytes()
    assert "é".encode("latin-1") in data and "é".encode("utf-8") not in data
    assert parse_catalog(data, "fr/LC_MESSAGES/a.mo") == [("Delete", "Supprimé à côté")]


def _header_po(content_type, msgstr):
    return ('msgid ""\nmsgstr ""\n"%s\\n"\n\nmsgid "Delete"\nmsgstr "%s"\n' % (content_type, msgstr))


def test_charset_header_without_a_space_is_honoured():
    # polib.detect_encoding misses this header (it wants "; charset") and would decode as utf-8
    data = _header_po("Content-Type: text/plain;charset=ISO-8859-1", "Supprimé").encode("latin-1")
    assert polib.detect_encoding(data) == "utf-8"
    assert parse_catalog(data, "fr.po") == [("Delete", "Supprimé")]


def test_unknown_declared_charset_is_a_catalog_error_not_a_utf8_guess():
    data = _header_po("Content-Type: text/plain; charset=NO-SUCH-CHARSET", "Supprimer").encode("ascii")
    assert polib.detect_encoding(data) == "utf-8"  # polib would guess
    with pytest.raises(CatalogError, match="unknown charset"):
        parse_catalog(data, "fr.po")


def test_mo_bytes_that_name_a_file_are_not_read_from_disk(tmp_path, monkeypatch):
    _po([polib.POEntry(msgid="Save", msgstr="Speichern")]).save_as_mofile(str(tmp_path / "real.mo"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CatalogError):  # polib.mofile(b"real.mo") would parse tmp_path/real.mo
        parse_catalog(b"real.mo", "x/de/LC_MESSAGES/a.mo")


@pytest.mark.parametrize("data", [
    b"\x00\x01garbage",  # not a .mo (bad magic)
    b'msgid "a"\nfoo bar\nmsgstr "b"\n',  # .po syntax error
    b'msgid "a"\nmsgstr "\xff\xfe"\n',  # not the declared (default utf-8) charset
])
def test_corrupt_catalog_raises_catalog_error(data):
    with pytest.raises(CatalogError):
        parse_catalog(data, "x/de/LC_MESSAGES/a.mo" if data.startswith(b"\x00") else "de.po")


@pytest.mark.parametrize("path,lang", [
    ("django/conf/locale/pt_BR/LC_MESSAGES/django.po", "pt_BR"),
    ("spyder/locale/sr@latin/LC_MESSAGES/spyder.mo", "sr@latin"),
    ("thonny/locale/zh-hans.po", "zh-hans"),
    ("pkg/templates/index.html", None),
])
def test_catalog_lang_from_path(path, lang):
    assert catalog_lang(path) == lang


def test_wheel_reader_prefers_po_over_sibling_mo(tmp_path):
    po = _po([polib.POEntry(msgid="Save", msgstr="Speichern")])
    po.save(str(tmp_path / "a.po"))
    po.save_as_mofile(str(tmp_path / "a.mo"))
    whl = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.write(tmp_path / "a.po", "pkg/locale/de/LC_MESSAGES/django.po")
        zf.write(tmp_path / "a.mo", "pkg/locale/de/LC_MESSAGES/django.mo")
        zf.write(tmp_path / "a.mo", "pkg/locale/fr/LC_MESSAGES/django.mo")
    assert [p for p, _ in iter_catalogs(str(whl))] == [
        "pkg/locale/de/LC_MESSAGES/django.po", "pkg/locale/fr/LC_MESSAGES/django.mo"]
