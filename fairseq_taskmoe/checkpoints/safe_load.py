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

That variable is the usual workaround for fairseq on new torch, and with it set
fairseq's own loaders (which do not pass ``weights_only``) unpickle anything:
a checkpoint can run code. The plugin makes it unnecessary, so importing the
plugin warns when it is set, and the plugin's tools refuse to run.
"""

import argparse
import io
import os
import pickle
import pickletools
import re
import warnings
import zipfile

import torch

# Every global a fairseq checkpoint written by this plugin (or stock fairseq's
# transformer family) needs beyond torch's built-in allowlist.
SAFE_GLOBALS = (argparse.Namespace,)

UNSAFE_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_TRUE = ("1", "y", "yes", "true")  # what torch.load accepts as "set"


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds objects outside the allowlist (it could run code)."""


class UnsafeEnvironmentError(RuntimeError):
    """``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set: fairseq's loaders would run pickled code."""


def unsafe_torch_env() -> bool:
    """True when torch.load would unpickle arbitrary objects for callers that omit weights_only."""
    return os.environ.get(UNSAFE_ENV, "0").lower() in _TRUE


def unsafe_env_message() -> str:
    return (f"{UNSAFE_ENV}={os.environ.get(UNSAFE_ENV)} is set: with it, fairseq's checkpoint loaders "
            "run any code pickled into a checkpoint. fairseq_taskmoe does not need it (it allowlists "
            f"argparse.Namespace for torch's safe loader); unset it (`unset {UNSAFE_ENV}`) and rerun")


def refuse_unsafe_torch_env():
    """Raise :class:`UnsafeEnvironmentError` if ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set."""
    if unsafe_torch_env():
        raise UnsafeEnvironmentError(unsafe_env_message())


def install_safe_globals():
    """Extend torch's ``weights_only`` allowlist with :data:`SAFE_GLOBALS`; warn on the unsafe env."""
    if not hasattr(torch.serialization, "add_safe_globals"):
        raise RuntimeError(
            f"torch {torch.__version__} has no torch.serialization.add_safe_globals; "
            "fairseq_taskmoe needs torch >= 2.6"
        )
    torch.serialization.add_safe_globals(list(SAFE_GLOBALS))
    if unsafe_torch_env():
        warnings.warn(f"fairseq_taskmoe: UNSAFE ENVIRONMENT: {unsafe_env_message()}. The plugin's "
                      "tools refuse to run while it is set.", RuntimeWarning, stacklevel=2)


def _blocked_global(message: str) -> str:
    """The global torch's weights-only unpickler refused, from its error message."""
    for pattern in (r"GLOBAL (\S+) was not an allowed global", r"Unsupported global: GLOBAL (\S+)",
                    r"whose module (\S+) is blocked", r"(\S+) must be \S+ to load"):
        found = re.search(pattern, message)
        if found:
            return found.group(1).rstrip(".,")
    return ""


def _pickle_bytes(path: str, limit: int = 64 << 20) -> bytes:
    """The pickle stream of a checkpoint (``data.pkl`` of a torch zip file, else the file)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("data.pkl")]
            if not names:
                return b""
            with zf.open(names[0]) as f:
                return f.read(limit)
    with open(path, "rb") as f:
        return f.read(limit)


def pickle_globals(path: str) -> list:
    """``module.name`` of every global a pickle file imports, read without unpickling.

    ``pickletools.genops`` only decodes opcodes, so nothing runs; it is how the
    refusal can name what was blocked even when torch's unpickler stops earlier
    (e.g. at an opcode it does not support).
    """
    found, strings = [], []
    try:
        stream = io.BytesIO(_pickle_bytes(path))
        for _ in range(8):  # legacy torch files hold several pickles back to back
            for op, arg, _pos in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name):
                    strings.append(str(arg))
            if stream.tell() >= len(stream.getbuffer()):
                break
    except Exception:  # noqa: BLE001  (a diagnostic only: whatever was found so far)
        pass
    return list(dict.fromkeys(found))


def _unsafe_globals(path: str, message: str) -> list:
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    named = _blocked_global(message)
    scanned = [g for g in pickle_globals(path)
               if g not in allowed and not g.startswith(("torch.", "collections.OrderedDict"))]
    return list(dict.fromkeys(([named] if named else []) + scanned))


def load_checkpoint_safely(path, mmap: bool = False):
    """Load a checkpoint with ``weights_only=True``; clear errors otherwise.

    ``mmap``: map the tensors' storage instead of reading it (a zip-format file only;
    others are read): what a caller that looks only at the args and a few tensors wants.

    Raises ``FileNotFoundError`` for a missing file, ``UnsafeCheckpointError``
    when the file holds a class outside the allowlist, and ``ValueError`` for a
    truncated or corrupt file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        mmap = mmap and zipfile.is_zipfile(path)
        return torch.load(path, map_location="cpu", weights_only=True, **({"mmap": True} if mmap else {}))
    except pickle.UnpicklingError as err:
        blocked = _unsafe_globals(path, str(err))
        what = f"the global {', '.join(blocked[:3])}" if blocked else "an object of an unknown kind"
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it contains {what}, which is outside the safe allowlist "
            f"({', '.join(f'{g.__module__}.{g.__qualname__}' for g in SAFE_GLOBALS)} and plain "
            "containers/tensors); loading it could run code, so the file is refused"
        ) from err
    except (RuntimeError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"cannot read checkpoint {path}: the file is truncated or corrupt ({first})"
        ) from err
