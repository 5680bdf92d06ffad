"""Checkpoint I/O, in one place: every tool of the plugin reads and writes through here.

- ``safe_load.py``: torch's ``weights_only`` loader with the plugin's allowlist,
  clear refusals, the TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD guard.
- ``args.py``: a loaded checkpoint's model / task args and language pairs, shard sets merged.
- ``shards.py``: reading expert shard sets (a sharded training save, a split set) and
  merging them into one complete state; writing them is ``fairseq_taskmoe.parallel``'s.
- ``atomic.py``: atomic file / JSON / torch.save / directory writes (umask honoured).
- ``cli.py``: the console scripts' error wrapper and exit statuses.
"""

from fairseq_taskmoe.checkpoints.args import lang_pairs, load_source, model_args, sha256, task_args
from fairseq_taskmoe.checkpoints.atomic import (
    atomic_copy, atomic_dir, current_umask, atomic_file, atomic_torch_save, atomic_write_bytes, atomic_write_json,
    atomic_write_text, check_writable, leftovers, recover_dir,
)
from fairseq_taskmoe.checkpoints.cli import (
    EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_OK, EXIT_UNSAFE, classify, console_main, run,
)
from fairseq_taskmoe.checkpoints.shards import (
    REF_KEY, SHARD_FILE, SPLIT_FILE, ShardReader, load_merged_state, resolve_shard_dir, shard_ref,
)
from fairseq_taskmoe.checkpoints.safe_load import (
    SAFE_GLOBALS, UNSAFE_ENV, UnsafeCheckpointError, UnsafeEnvironmentError, install_safe_globals,
    load_checkpoint_safely, refuse_unsafe_torch_env, unsafe_torch_env,
)

__all__ = [
    "REF_KEY", "SAFE_GLOBALS", "SHARD_FILE", "SPLIT_FILE", "ShardReader", "UNSAFE_ENV",
    "UnsafeCheckpointError", "UnsafeEnvironmentError",
    "atomic_copy", "atomic_dir", "atomic_file", "atomic_torch_save", "atomic_write_bytes",
    "atomic_write_json", "atomic_write_text", "check_writable", "current_umask", "classify", "console_main", "install_safe_globals",
    "lang_pairs", "leftovers", "load_checkpoint_safely", "load_merged_state", "load_source", "model_args", "recover_dir",
    "refuse_unsafe_torch_env", "resolve_shard_dir", "run", "sha256", "shard_ref", "task_args", "unsafe_torch_env",
    "EXIT_OK", "EXIT_BAD_INPUT", "EXIT_UNSAFE", "EXIT_ENVIRONMENT",
]
