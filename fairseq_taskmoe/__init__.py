"""fairseq_taskmoe: Task-level Mixture-of-Experts for fairseq.

Importing the package (``--user-dir``, or ``import fairseq_taskmoe``) makes
torch's safe checkpoint loader accept fairseq checkpoints (see
``checkpoints/safe_load.py``; it warns loudly if TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD
is set) and registers with fairseq:
- model ``transformer_taskmoe`` (archs ``transformer_taskmoe_{tiny,base,big}``),
- criterion ``label_smoothed_cross_entropy_moe``,
- task ``translation_multi_simple_epoch_taskmoe``,
- optimizer ``adam_ep`` (Adam that gathers sharded experts into rank-0 checkpoints).
"""

from fairseq_taskmoe.checkpoints.safe_load import install_safe_globals

install_safe_globals()

from fairseq_taskmoe.criterions import label_smoothed_cross_entropy_moe  # noqa: E402,F401
from fairseq_taskmoe.models import transformer_taskmoe  # noqa: E402,F401
from fairseq_taskmoe.parallel import optimizer  # noqa: E402,F401
from fairseq_taskmoe.tasks import translation_multi_taskmoe  # noqa: E402,F401
