"""Expert parallelism on fairseq's own distributed training.

Imports register ``--optimizer adam_ep``. ``TransformerTaskMoEModel.build_model``
gets the ``ExpertParallelPlan`` from ``expert_parallel_from_args`` and hands it to
every MoE layer it builds. See docs/PARALLEL.md.
"""

from fairseq_taskmoe.parallel import optimizer  # noqa: F401  (registers adam_ep)
from fairseq_taskmoe.parallel.sharding import (  # noqa: F401
    ExpertParallelPlan, expert_parallel_from_args,
)
