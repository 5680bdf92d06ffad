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
  130  interrupted (ctrl-C); outputs are written atomically, so none is left half-written

Quiet by default: fairseq's import-time INFO lines and warnings that a user cannot act
on (tensorboardX, the "External language dictionary" warning, torch deprecations
raised inside fairseq / fairscale) are filtered; ``--verbose`` keeps everything.
"""

import argparse
import errno
import logging
import sys
import warnings
import zipfile
from typing import Callable, Optional, Sequence

from fairseq_taskmoe.checkpoints.safe_load import (
    UnsafeCheckpointError, UnsafeEnvironmentError, refuse_unsafe_torch_env,
)

EXIT_OK, EXIT_BAD_INPUT, EXIT_UNSAFE, EXIT_ENVIRONMENT = 0, 2, 3, 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a ctrl-C'd program
EXIT_TERMINATED = 143  # 128 + SIGTERM (`kill`)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like ctrl-C so that ``finally`` blocks remove temp outputs, and
    ``except Exception`` handlers do not swallow it."""


def exit_on_signals(prog: str):
    """Make SIGTERM unwind the stack (Python's default kills the process on the spot, which
    leaves atomic writers' hidden temp files and directories behind). Returns the previous
    handler (None when not in the main thread, where handlers cannot be set)."""
    import signal

    def _terminate(signum, frame):
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (an embedding application): leave its handlers alone
        return None

# fairseq log lines (logger name, message start) that say nothing a user of our tools can act on.
NOISE = (
    ("fairseq.tasks.text_to_speech", "Please install tensorboardX"),
    ("fairseq.data.multilingual.multilingual_data_manager", "External language dictionary is not provided"),
)

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


class UsageError(ValueError):
    """A bad command line or input found by the plugin's own checks inside a fairseq CLI
    (fairseq-generate / -interactive / -train with ``--user-dir``): shown as one line."""


def fairseq_cli_excepthook(exc_type, exc, tb, _default=sys.excepthook):
    """``sys.excepthook`` under a fairseq console script: a :class:`UsageError` (or an unsafe
    checkpoint refusal) becomes ``PROG: error: MESSAGE`` and exit status 2 (3); anything else
    keeps its traceback. fairseq's CLIs have no error handling of their own to hook into."""
    import os

    known = classify(exc) if issubclass(exc_type, (UsageError, UnsafeCheckpointError)) else None
    if known is None:
        return _default(exc_type, exc, tb)
    code, message = known
    print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)  # the interpreter would exit 1 after any excepthook


def refuse_at_fairseq_cli():
    """Under a fairseq console script: exit 3 with one line while TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD
    is set (fairseq's loader would then unpickle anything from ``--path`` / ``--restore-file``)."""
    import os

    try:
        refuse_unsafe_torch_env()
    except UnsafeEnvironmentError as err:
        print(f"{os.path.basename(sys.argv[0])}: error: {one_line(str(err))}", file=sys.stderr)
        raise SystemExit(EXIT_UNSAFE) from None


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
    except KeyboardInterrupt as err:
        if isinstance(err, Terminated):
            print(f"{prog}: terminated; no output was left half-written", file=sys.stderr)
            return EXIT_TERMINATED
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001  (re-raised unless known)
        known = classify(err)
        if known is None:
            raise
        code, message = known
        print(f"{prog}: error: {message}", file=sys.stderr)
        return code
    return result if isinstance(result, int) else EXIT_OK


class _DropNoise(logging.Filter):
    def filter(self, record):
        return not any(record.name == name and str(record.msg).startswith(start) for name, start in NOISE)


def quiet_logging(verbose: bool = False):
    """Our tools' logging: WARNING and up without the :data:`NOISE` lines; INFO and all with ``verbose``."""
    # force: importing fairseq already set the root logger to DEBUG (its wav2vec2_classification
    # module calls basicConfig(level=DEBUG)), which would print every library's debug lines.
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, force=True)
    if verbose:
        return
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropNoise())
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(fairseq|fairscale|torch)(\.|$)")


def add_verbose(parser: argparse.ArgumentParser):
    parser.add_argument("--verbose", action="store_true",
                        help="show fairseq's INFO log and library warnings (hidden by default)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """The plugin's help style: every option documented, its default shown (none: not shown)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or default in ("", []) \
                or "%(default)" in text or "(default" in text:
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text + " (default: %(default)s)"
        return text


def split_list(values) -> list:
    """A list option given as commas, spaces or both (``--tasks en-de,en-fr en-es``), in order."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [v for item in values for v in str(item).replace(",", " ").split()]


def console_main(prog: str, main: Callable, loads_checkpoints: bool = True):
    """Entry point body of a console script: quiet logging, :func:`run`, ``sys.exit``."""
    quiet_logging("--verbose" in sys.argv[1:])
    exit_on_signals(prog)
    sys.exit(run(prog, main, None, loads_checkpoints))
