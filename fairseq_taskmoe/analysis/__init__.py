"""Analysis tools: ``routing.py`` (``fairseq-taskmoe-routing``: expert usage per language) and
``stats.py`` (run a model over one pair's split and count expert assignments; also used by
``fairseq-taskmoe-extract --prune-token-experts``)."""
