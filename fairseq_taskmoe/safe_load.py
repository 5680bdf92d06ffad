"""Safe checkpoint loading for fairseq on torch >= 2.6.

torch >= 2.6 calls ``torch.load(..., weights_only=True)`` by default. That
unpickler refuses every class that is not on an allowlist, which is what makes
a checkpoint safe to open: a pickle cannot run code through ``__reduce__``.
fairseq's ``load_checkpoint_to_cpu`` relies on the default, and fairseq
checkpoints of argparse-style models (``transformer``, ``transformer_taskmoe``)
store their model arguments as an ``argparse.Namespace``, so loading fails.

We keep ``weights_only=True`` and add exactly the classes fairseq checkpoints
contain to torch's allowlist (``torch.serialization.add_safe_globals``). An
``argparse.Namespace`` is a plain attribute bag: unpickling it creates the
object and fills its ``__dict__`` with values that must themselves be
allowlisted types, so no code runs. We never turn ``weights_only`` off and never
set ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.

This runs once when the plugin is imported (``--user-dir`` or ``import
fairseq_taskmoe``).
"""

import argparse
import os
import pickle

import torch

# Every global a fairseq checkpoint written by this plugin (or stock fairseq's
# transformer family) needs beyond torch's built-in allowlist.
SAFE_GLOBALS = (argparse.Namespace,)


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds objects outside the allowlist (it could run code)."""


def install_safe_globals():
    """Extend torch's ``weights_only`` allowlist with :data:`SAFE_GLOBALS`."""
    if not hasattr(torch.serialization, "add_safe_globals"):
        raise RuntimeError(
            f"torch {torch.__version__} has no torch.serialization.add_safe_globals; "
            "fairseq_taskmoe needs torch >= 2.4"
        )
    torch.serialization.add_safe_globals(list(SAFE_GLOBALS))


def load_checkpoint_safely(path):
    """Load a checkpoint with ``weights_only=True``; clear errors otherwise.

    Raises ``FileNotFoundError`` for a missing file, ``UnsafeCheckpointError``
    when the file holds a class outside the allowlist, and ``ValueError`` for a
    truncated or corrupt file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it contains objects outside the safe "
            f"allowlist (torch weights_only load failed: {str(err).splitlines()[0]}). "
            "fairseq_taskmoe never runs pickle code from a checkpoint."
        ) from err
    except (RuntimeError, EOFError) as err:
        raise ValueError(
            f"cannot read checkpoint {path}: the file is truncated or corrupt ({err})"
        ) from err
