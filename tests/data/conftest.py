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


MALLARD = ('<page xmlns="http://projectmallard.org/1.0/" id="{id}"><info><desc>{desc}</desc>'
           '<credit type="author"><name>Someone</name></credit></info><title>{title}</title>{body}</page>')


def help_page(texts, page_id="p", extra=""):
    """A Mallard page: the first text is the title, the rest are paragraphs."""
    body = "".join("<p>%s</p>" % t for t in texts[1:]) + extra
    return MALLARD.format(id=page_id, desc="About " + page_id, title=texts[0], body=body).encode("utf-8")


def doc_sentences(lang, page, n=12):
    """English paragraphs of one help page and a consistent fake translation."""
    en = ["How to %s your %s %d" % (VERBS[page % 8].lower(), WORDS[page % 20], page)]
    en += ["You can %s the %s of a %s in step %d of page %d." % (VERBS[i % 8].lower(), WORDS[(i + page) % 20],
                                                               WORDS[(i * 3) % 20], i, page) for i in range(n)]
    return en, ["[%s] %s" % (lang, " ".join(w[::-1] for w in s.split())) for s in en]


def build_help_deb(directory, name="fakehelp", pages=40, langs=("de", "fr")):
    """A real .deb (dpkg-deb -b) shipping usr/share/help/{C,<lang>}/<doc>/<page>.page."""
    import subprocess

    root = directory / ("%s-root" % name)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: %s\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: test\n" % name)
    for page in range(pages):
        for lang in ("C",) + tuple(langs):
            en, xx = doc_sentences(lang, page)
            d = root / "usr" / "share" / "help" / lang / "guide"
            d.mkdir(parents=True, exist_ok=True)
            (d / ("page%d.page" % page)).write_bytes(help_page(en if lang == "C" else xx, "page%d" % page))
    deb = directory / ("%s_1.0_all.deb" % name)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb
