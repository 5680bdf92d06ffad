"""Analysis tools: ``routing.py`` (``fairseq-taskmoe-routing``: expert usage per language)."""
