"""Expert parallelism on fairseq's own distributed training.

Imports register ``--optimizer adam_ep``; ``shard_experts_for_expert_parallel``
is called from ``TransformerTaskMoEModel.build_model``. See docs/PARALLEL.md.
"""

from fairseq_taskmoe.parallel import optimizer  # noqa: F401  (registers adam_ep)
from fairseq_taskmoe.parallel.sharding import shard_experts_for_expert_parallel  # noqa: F401
