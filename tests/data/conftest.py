import zipfile

import polib
import pytest

WORDS = ["file", "folder", "user", "group", "page", "image", "document", "setting", "message", "account",
         "project", "report", "task", "event", "comment", "link", "theme", "plugin", "backup", "server"]
VERBS = ["Open", "Delete", "Save", "Rename", "Copy", "Move", "Share", "Archive"]


def synthetic_pairs(lang, n=400):
    """Distinct English strings with a fake but consistent 'translation'."""
    pairs = []
    for i in range(n):
        verb, a, b = VERBS[i % 8], WORDS[i % 20], WORDS[(i // 20) % 20]
        src = "%s the %s of %s %d" % (verb, a, b, i)
        pairs.append((src, "[%s] %s %s %s %d" % (lang, b[::-1], a[::-1], verb[::-1].lower(), i)))
    return pairs


@pytest.fixture
def fake_wheel_cache(tmp_path):
    """A cache dir holding pkg-1.0 whose wheel ships de and fr catalogs, plus a corrupt one."""
    cache = tmp_path / "cache"
    cache.mkdir()
    whl = cache / "fakepkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("fakepkg-1.0.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\nLicense-Expression: MIT\n")
        for code in ("de_DE", "fr"):
            po = polib.POFile()
            po.metadata = {"Content-Type": "text/plain; charset=utf-8"}
            for src, tgt in synthetic_pairs(code[:2]):
                po.append(polib.POEntry(msgid=src, msgstr=tgt))
            po.append(polib.POEntry(msgid="translator-credits", msgstr="Someone"))
            zf.writestr("fakepkg/locale/%s/LC_MESSAGES/django.po" % code, str(po))
        zf.writestr("fakepkg/locale/it/LC_MESSAGES/django.mo", b"\x00garbage")
    return cache
