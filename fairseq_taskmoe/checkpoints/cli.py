"""One error wrapper for the plugin's console scripts.

Known failures become one line on stderr, ``PROG: error: MESSAGE`` naming the
flag or file, and a documented exit status; anything else is a bug and keeps
its traceback.

Exit status:
    0  success
    2  bad input: a flag value, a missing / wrong / corrupt input file, an
       existing output without --force (argparse also exits 2)
    3  refused for safety: a checkpoint holding objects outside the safe
       allowlist, or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD set
    4  the environment: disk full, read-only file system, permission denied,
       another OS error while reading or writing (the path is named)
"""

import errno
import logging
import sys
import zipfile
from typing import Callable, Optional, Sequence

from fairseq_taskmoe.checkpoints.safe_load import (
    UnsafeCheckpointError, UnsafeEnvironmentError, refuse_unsafe_torch_env,
)

EXIT_OK, EXIT_BAD_INPUT, EXIT_UNSAFE, EXIT_ENVIRONMENT = 0, 2, 3, 4

_OS_WORDS = {
    errno.ENOSPC: "disk full (no space left on device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "not writable (read-only file system)",
    errno.EACCES: "permission denied",
    errno.EPERM: "not writable (operation not permitted)",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory",
    errno.ENOENT: "not found",
}


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def os_error_message(err: OSError) -> str:
    """``PATH: disk full ...`` for an OSError from the file system."""
    what = _OS_WORDS.get(err.errno) or (err.strerror or "").lower() or str(err)
    where = err.filename
    if where is None:
        return one_line(str(err)) if err.errno is None else one_line(f"{what} ({err})")
    target = f" -> {err.filename2}" if err.filename2 else ""
    return one_line(f"{where}{target}: {what}")


def classify(err: BaseException):
    """(exit status, one-line message) for a known failure, or None for a bug."""
    if isinstance(err, (UnsafeCheckpointError, UnsafeEnvironmentError)):
        return EXIT_UNSAFE, one_line(str(err))
    if isinstance(err, (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)):
        return EXIT_BAD_INPUT, os_error_message(err)
    if isinstance(err, OSError):
        return EXIT_ENVIRONMENT, os_error_message(err)
    if isinstance(err, zipfile.BadZipFile):
        return EXIT_BAD_INPUT, one_line(f"not a valid zip/wheel file: {err}")
    if isinstance(err, ValueError):
        return EXIT_BAD_INPUT, one_line(str(err))
    return None


def run(prog: str, main: Callable, argv: Optional[Sequence[str]] = None,
        loads_checkpoints: bool = True) -> int:
    """Call ``main(argv)``; map known failures to ``prog: error: ...`` and an exit status.

    ``loads_checkpoints``: refuse to start while TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set.
    """
    try:
        if loads_checkpoints:
            refuse_unsafe_torch_env()
        result = main(argv)
    except Exception as err:  # noqa: BLE001  (re-raised unless known)
        known = classify(err)
        if known is None:
            raise
        code, message = known
        print(f"{prog}: error: {message}", file=sys.stderr)
        return code
    return result if isinstance(result, int) else EXIT_OK


def console_main(prog: str, main: Callable, loads_checkpoints: bool = True):
    """Entry point body of a console script: quiet logging, :func:`run`, ``sys.exit``."""
    # force: importing fairseq already set the root logger to DEBUG (its wav2vec2_classification
    # module calls basicConfig(level=DEBUG)), which would print every library's debug lines.
    logging.basicConfig(level=logging.WARNING, force=True)
    sys.exit(run(prog, main, None, loads_checkpoints))
