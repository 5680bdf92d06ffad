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

import os as _os
import sys as _sys

if _os.path.basename(_sys.argv[0] if _sys.argv else "").startswith("fairseq-taskmoe-"):
    # One of our console scripts: quiet before fairseq and fairscale are imported, since
    # their import-time INFO lines and warnings are printed right here (--verbose keeps them).
    from fairseq_taskmoe.checkpoints.cli import quiet_logging

    quiet_logging("--verbose" in _sys.argv[1:])

from fairseq_taskmoe.checkpoints.safe_load import install_safe_globals  # noqa: E402

install_safe_globals()

if _os.path.basename(_sys.argv[0] if _sys.argv else "").startswith("fairseq-") and not \
        _os.path.basename(_sys.argv[0]).startswith("fairseq-taskmoe-"):
    # fairseq's own CLI with --user-dir: its checkpoint loader follows TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD,
    # and this import is the plugin's only point before it runs: refuse here (see checkpoints/cli.py).
    from fairseq_taskmoe.checkpoints.cli import fairseq_cli_excepthook, refuse_at_fairseq_cli

    _sys.excepthook = fairseq_cli_excepthook
    refuse_at_fairseq_cli()

from fairseq_taskmoe.criterions import label_smoothed_cross_entropy_moe  # noqa: E402,F401
from fairseq_taskmoe.models import transformer_taskmoe  # noqa: E402,F401
from fairseq_taskmoe.parallel import optimizer  # noqa: E402,F401
from fairseq_taskmoe.tasks import translation_multi_taskmoe  # noqa: E402,F401
