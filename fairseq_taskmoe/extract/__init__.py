"""Per-task sub-network extraction (``fairseq-taskmoe-extract``); see docs/EXTRACT.md.

Files: ``fuse.py`` (pure tensor functions), ``subnet.py`` (state dict ->
sub-network), ``stock.py`` (plugin / stock checkpoint states), ``prune.py``
(routing statistics), ``outdir.py`` (what --out may replace, vocabulary
files), ``api.py`` (``extract()``), ``cli.py`` (the console script),
``all_tasks.py`` (``--tasks all``), ``argos*.py`` (``--format argos``: packages,
language codes, README, sentencepiece control symbols, the no-split MiniSBD model)
with ``protowire.py`` (the protobuf they write). Loading and
atomic writes live in ``fairseq_taskmoe.checkpoints``.
"""

from fairseq_taskmoe.extract.api import extract

__all__ = ["extract"]
