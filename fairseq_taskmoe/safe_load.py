"""Moved to :mod:`fairseq_taskmoe.checkpoints.safe_load`; re-exported here for old imports."""

from fairseq_taskmoe.checkpoints.safe_load import (  # noqa: F401
    SAFE_GLOBALS, UNSAFE_ENV, UnsafeCheckpointError, UnsafeEnvironmentError, install_safe_globals,
    load_checkpoint_safely, refuse_unsafe_torch_env, unsafe_torch_env,
)
