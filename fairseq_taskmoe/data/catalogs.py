"""Gettext catalog parsing: .po via polib, .mo via polib's mofile reader.

A catalog yields (msgid, msgstr) pairs. Fuzzy and obsolete entries and the header are
skipped; a plural entry contributes msgstr[0] paired with the singular msgid only; msgctxt is
dropped (two contexts with the same msgid simply give two candidate pairs, deduplicated later).
"""
import re

import polib

# Locale directory in the usual layouts: locale/<ll>/LC_MESSAGES/x.po, i18n/<ll>.po, po/<ll>.po
_LC_RE = re.compile(r"(?:^|/)([A-Za-z]{2,3}(?:[_-][A-Za-z0-9]+)*(?:@[A-Za-z]+)?)/LC_MESSAGES/[^/]+\.[mp]o$")
_FLAT_RE = re.compile(r"(?:^|/)([A-Za-z]{2,3}(?:[_-][A-Za-z0-9]+)*(?:@[A-Za-z]+)?)\.[mp]o$")


class CatalogError(Exception):
    """A catalog file that cannot be parsed; the caller skips and counts it."""


def catalog_lang(path):
    """Raw language code from a catalog path, or None if the path does not name one."""
    m = _LC_RE.search(path) or _FLAT_RE.search(path)
    return m.group(1) if m else None


def catalog_key(path):
    """Identity of a catalog regardless of format, so a .mo beside its .po is read once."""
    return path[:-3]


def parse_catalog(data, path):
    """Return [(msgid, msgstr), ...] from the bytes of a .po or .mo file at ``path``."""
    try:
        if path.endswith(".po"):
            catalog = polib.pofile(_decode_po(data), wrapwidth=0)
        elif path.endswith(".mo"):
            catalog = _read_mo(data)
        else:
            raise CatalogError("not a gettext catalog: %s" % path)
    except CatalogError:
        raise
    except Exception as exc:  # polib raises IOError/ValueError/UnicodeError/struct.error
        raise CatalogError("%s: %s" % (path, exc)) from exc
    return list(iter_pairs(catalog))


def iter_pairs(catalog):
    for entry in catalog:
        if entry.obsolete or "fuzzy" in entry.flags or not entry.msgid:
            continue  # msgid "" is the header
        if entry.msgid_plural:
            target = entry.msgstr_plural.get(0) or entry.msgstr_plural.get("0") or ""
        else:
            target = entry.msgstr
        if target:
            yield entry.msgid, target


# The charset of a .po is ours to find, not polib.detect_encoding's: polib.pofile cannot take bytes
# (it splitlines() the content as text), and detect_encoding differs where it matters (pinned in
# tests/data/test_catalogs.py): it falls back to utf-8 for an unknown declared charset, where we
# skip and count the catalog, and it needs "; charset" with a space, case-sensitively, so
# "text/plain;charset=ISO-8859-1" would be read as utf-8 (the catalog lost or garbled).
_CHARSET_RE = re.compile(rb'"Content-Type:[^"]*charset=([A-Za-z0-9_\-.:]+)', re.IGNORECASE)


def _decode_po(data):
    """Decode with the charset the header declares."""
    m = _CHARSET_RE.search(data[:4096])
    charset = m.group(1).decode("ascii") if m else "utf-8"
    if charset.upper() == "CHARSET":  # untouched template header
        charset = "utf-8"
    try:
        return data.decode(charset)
    except LookupError as exc:
        raise CatalogError("unknown charset %r" % charset) from exc
    except UnicodeDecodeError as exc:
        raise CatalogError("does not decode as declared charset %r" % charset) from exc


def _read_mo(data):
    """polib.mofile parses the bytes and decodes with the header charset itself (detect_encoding).

    It also takes a path, and tells the two apart with os.path.isfile: content that happens to name
    a file on this machine would be read from disk. A .mo always holds NUL bytes (its 32-bit header
    words: the revision is 0 or 1 in the major half), and a path never does.
    """
    if b"\0" not in data:
        raise CatalogError("not a .mo file (no binary header)")
    return polib.mofile(data)
