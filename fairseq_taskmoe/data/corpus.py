"""Archives -> cleaned (English, xx) pairs per kind of text and canonical language.

Two kinds are kept apart up to the evaluation splits: ``ui`` (gettext catalogs: menus,
buttons, messages) and ``doc`` (paragraphs of translated desktop help).
"""
import logging
from collections import Counter, defaultdict

from .catalogs import CatalogError, catalog_lang, parse_catalog
from .clean import clean_pair, normalize_lang
from .helppages import align_help
from .sources import iter_catalogs, iter_help_files

logger = logging.getLogger(__name__)

KINDS = ("ui", "doc")


class Corpus:
    """Accumulates pairs per kind and language plus the bookkeeping the data card reports."""

    def __init__(self):
        self.pairs = {kind: defaultdict(list) for kind in KINDS}  # kind -> lang -> [(en, xx), ...]
        self.dropped = Counter()  # reason -> pairs
        self.corrupt_files = []
        self.skipped_langs = Counter()  # raw code that is not a language we can name -> catalogs
        self.added = defaultdict(Counter)  # source name -> lang -> clean pairs (before dedup)

    def add_archive(self, source):
        """Read one archive; returns (files read, files skipped as corrupt or unaligned)."""
        if source.kind == "doc":
            return self._add_help(source)
        read = corrupt = 0
        for path, data in iter_catalogs(source.archive):
            lang = self._lang(path, catalog_lang(path))
            if lang is None:
                continue
            try:
                entries = parse_catalog(data, path)
            except CatalogError as exc:
                corrupt += 1
                self.corrupt_files.append("%s:%s" % (source.name, path))
                logger.warning("skipping corrupt catalog %s", exc)
                continue
            read += 1
            self._add(source, "ui", lang, entries)
        return read, corrupt

    def _add_help(self, source):
        pairs, stats = align_help(dict(iter_help_files(source.archive)))
        by_lang = defaultdict(list)
        for raw, en, xx in pairs:
            by_lang[raw].append((en, xx))
        for raw, entries in by_lang.items():
            lang = self._lang(raw, raw)
            if lang is not None:
                self._add(source, "doc", lang, entries)
        return stats["pages_aligned"], stats["pages_skipped"]

    def _lang(self, path, raw):
        lang = normalize_lang(raw) if raw else None
        if lang is None:
            self.skipped_langs[raw or "?"] += 1
            return None
        if lang == "en" or lang.startswith("en_"):
            return None  # English variants are source-side copies, not translations
        return lang

    def _add(self, source, kind, lang, entries):
        for msgid, msgstr in entries:
            pair, reason = clean_pair(msgid, msgstr)
            if pair is None:
                self.dropped[reason] += 1
            else:
                self.pairs[kind][lang].append(pair)
                self.added[source.name][lang] += 1
