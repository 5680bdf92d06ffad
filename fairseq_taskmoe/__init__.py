"""fairseq_taskmoe: Task-level Mixture-of-Experts for fairseq.

Importing the package (``--user-dir``, or ``import fairseq_taskmoe``) makes
torch's safe checkpoint loader accept fairseq checkpoints (see
``safe_load.py``) and registers the model, criterion and task with fairseq.
"""

from fairseq_taskmoe.safe_load import install_safe_globals

install_safe_globals()
