"""Catalog archives -> cleaned (English, xx) pairs per canonical language."""
import logging
from collections import Counter, defaultdict

from .catalogs import CatalogError, catalog_lang, parse_catalog
from .clean import clean_pair, normalize_lang
from .sources import iter_catalogs

logger = logging.getLogger(__name__)


class Corpus:
    """Accumulates pairs per language plus the bookkeeping the data card reports."""

    def __init__(self):
        self.pairs = defaultdict(list)  # lang -> [(en, xx), ...] in read order
        self.dropped = Counter()  # reason -> pairs
        self.corrupt_files = []
        self.skipped_langs = Counter()  # raw code that is not a language we can name -> catalogs

    def add_archive(self, source):
        """Read every catalog of one archive; returns (catalogs read, corrupt catalogs)."""
        read = corrupt = 0
        for path, data in iter_catalogs(source.archive):
            raw = catalog_lang(path)
            lang = normalize_lang(raw) if raw else None
            if lang is None:
                self.skipped_langs[raw or "?"] += 1
                continue
            if lang == "en" or lang.startswith("en_"):
                continue  # English variants are source-side copies, not translations
            try:
                entries = parse_catalog(data, path)
            except CatalogError as exc:
                corrupt += 1
                self.corrupt_files.append("%s:%s" % (source.name, path))
                logger.warning("skipping corrupt catalog %s", exc)
                continue
            read += 1
            for msgid, msgstr in entries:
                pair, reason = clean_pair(msgid, msgstr)
                if pair is None:
                    self.dropped[reason] += 1
                else:
                    self.pairs[lang].append(pair)
        return read, corrupt
