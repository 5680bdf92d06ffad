"""Sparse upcycling (``fairseq-taskmoe-upcycle``): a dense fairseq transformer -> a task-MoE; see docs/UPCYCLE.md.

Files: ``source.py`` (read and validate the dense checkpoint), ``plan.py`` (the
upcycled model's args and the fine-tuning flags), ``mapping.py`` (state dict
mapping, pure), ``check.py`` (the built-in agreement check), ``api.py``
(``upcycle()``), ``cli.py`` (the console script). Loading and the atomic
write live in ``fairseq_taskmoe.checkpoints``.
"""

from fairseq_taskmoe.upcycle.api import UpcycleCheckError, upcycle
from fairseq_taskmoe.upcycle.plan import UpcycleOptions

__all__ = ["UpcycleCheckError", "UpcycleOptions", "upcycle"]
