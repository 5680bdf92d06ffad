"""Serving: translate with a full model, an extract (plugin, stock) or a CTranslate2 export.

Files: ``ctranslate2_export.py`` (``--format ctranslate2`` of fairseq-taskmoe-extract),
``ct2_ffn_trim.py`` (trims the stock extract's FFN padding from the converted spec),
``fairseq_translator.py`` and ``ct2_translator.py`` (one ``translate(sentences, src, tgt)``
per engine), ``hub.py`` (``from_pretrained``: picks the engine by what the path holds),
``cli.py`` (``fairseq-taskmoe-translate``), ``libretranslate.py`` (Argos packages served by
LibreTranslate from its own environment; standard library only). ``ctranslate2`` is imported only when a
CTranslate2 model is exported or loaded.
"""


def from_pretrained(path, **kwargs):
    """A translator for ``path`` (see :func:`fairseq_taskmoe.serve.hub.from_pretrained`)."""
    from fairseq_taskmoe.serve.hub import from_pretrained as _from_pretrained

    return _from_pretrained(path, **kwargs)
