"""Sentence-length pairs from translated desktop help (Mallard ``.page`` and DocBook ``.xml``).

GNOME and MATE ship each help document as ``usr/share/help/C/<doc>/<file>`` (English) and
``usr/share/help/<lang>/<doc>/<file>`` (translated). Translations are produced with itstool,
which rewrites the text of each translatable block and keeps the element tree, so the k-th
block of the English page is the source of the k-th block of the translated page. We pair
blocks in document order and only when both pages have the same number of blocks: a page
translated from an older English version (a paragraph added or removed) is skipped whole
rather than shifted into wrong pairs.
"""
import re
import xml.etree.ElementTree as ET

_HELP_RE = re.compile(r"(?:^|/)share/help/(?P<lang>[^/]+)/(?P<rest>[^/]+/.+\.(?:page|xml))$")

# Leaf text blocks that itstool translates as one unit (Mallard + DocBook).
_BLOCKS = {"p", "title", "desc", "subtitle", "para", "simpara", "term", "glossterm", "entry"}
# Subtrees that are not translated prose: credits and licences, code, literal screens, media.
_SKIP = {"credit", "license", "code", "screen", "synopsis", "programlisting", "literallayout",
         "media", "author", "copyright", "legalnotice", "revhistory", "authorgroup"}
_SPACE = re.compile(r"\s+")


def help_key(path):
    """(raw language directory, '<doc>/<file>') of a help file, or None if it is not one."""
    m = _HELP_RE.search(path)
    return (m.group("lang"), m.group("rest")) if m else None


def is_help_file(path):
    return help_key(path) is not None


def _local(tag):
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _text(el):
    """Rendered text of an inline tree: key sequences read as Ctrl+C, menu paths as A ▸ B."""
    tag = _local(el.tag)
    if tag in ("keyseq", "guiseq", "keycombo", "menuchoice"):
        sep = "+" if tag in ("keyseq", "keycombo") else " ▸ "
        inner = sep.join(_text(k).strip() for k in el)
    else:
        inner = (el.text or "") + "".join(_text(k) + (k.tail or "") for k in el)
    return inner


def text_blocks(data):
    """Texts of the leaf translatable blocks of one page, in document order.

    ``data`` is the file's bytes; raises ValueError if it is not well-formed XML (DocBook pages
    that use entities from an external DTD are among those: expat does not fetch DTDs).
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(str(exc)) from exc
    out = []

    def walk(el):
        tag = _local(el.tag)
        if tag in _SKIP:
            return
        if tag in _BLOCKS and not any(_local(d.tag) in _BLOCKS for d in el.iter() if d is not el):
            out.append(_SPACE.sub(" ", _text(el)).strip())
            return
        for child in el:
            walk(child)

    walk(root)
    return out


def align_help(files):
    """Pair translated help pages with their English originals.

    ``files`` is ``{path: bytes}`` of one archive's help files. Returns
    ``(pairs, stats)``: ``pairs`` is ``[(raw_lang, english, translation), ...]`` for blocks that
    differ and are non-empty; ``stats`` counts ``pages_aligned`` and ``pages_skipped`` (not XML,
    or a different number of blocks than the English page).
    """
    english, translated = {}, []
    for path, data in files.items():
        key = help_key(path)
        if key is None:
            continue
        lang, rest = key
        if lang == "C":
            english[rest] = data
        else:
            translated.append((lang, rest, data))
    stats = {"pages_aligned": 0, "pages_skipped": 0}
    pairs = []
    parsed_en = {}
    for lang, rest, data in sorted(translated, key=lambda t: (t[0], t[1])):
        if rest not in english:
            stats["pages_skipped"] += 1
            continue
        try:
            if rest not in parsed_en:
                parsed_en[rest] = text_blocks(english[rest])
            src, tgt = parsed_en[rest], text_blocks(data)
        except ValueError:
            stats["pages_skipped"] += 1
            continue
        if len(src) != len(tgt):
            stats["pages_skipped"] += 1
            continue
        stats["pages_aligned"] += 1
        pairs.extend((lang, s, t) for s, t in zip(src, tgt) if s and t and s != t)
    return pairs, stats
