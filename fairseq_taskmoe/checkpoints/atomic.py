"""Atomic writes: a file or a directory appears complete or not at all.

Everything is written to a hidden temp name in the destination's own directory
(same filesystem, so ``os.replace`` is atomic), flushed with ``fsync``, then
renamed. Temp names are ``.NAME.tmp-XXXXXXXX``; a directory that ``replace``
pushes aside is ``.NAME.old-XXXXXXXX`` until the new one is in place. New
files and directories are created with ``os.open``/``os.mkdir`` mode
0666/0777, so the user's umask decides who can read them (``tempfile``'s
0600/0700 would hide a deployed model from a serving account).

OSErrors raised here carry the destination path (``err.filename``), so
:mod:`fairseq_taskmoe.checkpoints.cli` can name it.
"""

import contextlib
import errno
import glob
import json
import os
import secrets
import shutil
from typing import Dict, List

TMP, OLD = "tmp", "old"


def _hidden(path: str, kind: str) -> str:
    head, name = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{name}.{kind}-{secrets.token_hex(4)}")


def _with_path(err: OSError, path: str, tmp: str = None) -> OSError:
    """The same OSError naming ``path`` (the destination, not our temp name)."""
    if err.errno is None or (err.filename and os.fspath(err.filename) != tmp):
        return err
    new = type(err)(err.errno, err.strerror or str(err), os.fspath(path))
    new.__cause__ = err
    return new


def fsync_dir(directory: str):
    """Persist a rename: fsync the directory entry (not supported everywhere: best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _parent(path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise _with_path(err, parent) from err
    return parent


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb"):
    """Yield a file object open on a temp file; on success it becomes ``path``.

    On any exception the temp file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    parent = _parent(path)
    while True:
        tmp = _hidden(path, TMP)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            break
        except FileExistsError:
            continue
        except OSError as err:
            raise _with_path(err, path, tmp) from err
    try:
        try:
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as err:
            raise _with_path(err, path, tmp) from err
        fsync_dir(parent)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def check_writable(path) -> str:
    """Fail early, naming ``path``, if it could not be written: probes its nearest existing
    ancestor directory by creating and removing a hidden temp file (root ignores mode bits,
    so ``os.access`` alone would miss a read-only mount). Returns that directory."""
    path = os.path.abspath(os.fspath(path))
    probe_dir = os.path.dirname(path)
    while not os.path.isdir(probe_dir):
        if os.path.lexists(probe_dir):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", probe_dir)
        probe_dir = os.path.dirname(probe_dir)
    probe = _hidden(os.path.join(probe_dir, os.path.basename(path)), TMP)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
    except OSError as err:
        raise type(err)(err.errno, err.strerror, path) from err
    os.remove(probe)
    return probe_dir


def atomic_write_bytes(path, data: bytes):
    with atomic_file(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text: str):
    with atomic_file(path, "w") as f:
        f.write(text)


def atomic_write_json(path, obj, indent=1, **kwargs):
    """JSON to ``path`` atomically (``kwargs`` go to ``json.dump``)."""
    text = json.dumps(obj, indent=indent, **kwargs)  # serialise first: a TypeError writes nothing
    atomic_write_text(path, text + "\n")


class _WriteErrors:
    """A binary file wrapper that keeps the OSError of a failed ``write``.

    torch.save's C++ zip writer calls ``write`` on a Python file object, and when a
    write fails (disk full) it reports ``[enforce fail at inline_container.cc] unexpected
    pos``, a RuntimeError without the cause; the OSError kept here is the cause.
    """

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self):
        return self.f.flush()


def _torch_save_into(obj, f):
    import torch

    writer = _WriteErrors(f)
    try:
        torch.save(obj, writer)
        f.flush()  # a buffered write error shows here, before fsync
    except RuntimeError as err:
        if writer.error is not None:
            raise writer.error from err
        raise


def atomic_torch_save(obj, path):
    """``torch.save`` to ``path`` atomically; a full disk raises OSError(ENOSPC) naming ``path``."""
    with atomic_file(path, "wb") as f:
        _torch_save_into(obj, f)


def atomic_torch_save_many(items):
    """``torch.save`` each ``(obj, path)`` of ``items``: all files appear, or none does.

    Every object is written to its temp file first; only when all are complete are they
    renamed into place. A failure (a full disk at the last file) removes the temp files,
    so no partial set (e.g. shard 0 of a split) is left to block a rerun.
    """
    done, temps = [], []
    try:
        for obj, path in items:
            path = os.fspath(path)
            _parent(path)
            tmp = _hidden(path, TMP)
            temps.append(tmp)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
                with os.fdopen(fd, "wb") as f:
                    _torch_save_into(obj, f)
                    os.fsync(f.fileno())
            except OSError as err:
                raise _with_path(err, path, tmp) from err
            done.append((tmp, path))
        for tmp, path in done:
            try:
                os.replace(tmp, path)
            except OSError as err:
                raise _with_path(err, path, tmp) from err
        for parent in {os.path.dirname(os.path.abspath(p)) for _, p in done}:
            fsync_dir(parent)
    finally:
        for tmp in temps:
            if os.path.lexists(tmp):
                os.remove(tmp)


def space_error(directory, path, nbytes: int = 1 << 20):
    """After an engine (e.g. CTranslate2's C++ writer) failed with an opaque error: the
    OSError that writing ``nbytes`` into ``directory`` gives now (ENOSPC on a full disk),
    naming ``path``; None when the write succeeds (the failure had another cause)."""
    probe = _hidden(os.path.join(os.fspath(directory), "space-probe"), TMP)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * nbytes)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return type(err)(err.errno, err.strerror or str(err), os.fspath(path))
    finally:
        if os.path.lexists(probe):
            os.remove(probe)
    return None


def atomic_copy(src, dst):
    """Copy the bytes of ``src`` to ``dst`` atomically (new file: umask mode, not ``src``'s)."""
    with open(src, "rb") as fin, atomic_file(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def leftovers(out_dir) -> Dict[str, List[str]]:
    """Hidden temp / pushed-aside directories of ``out_dir`` left by an interrupted run."""
    head, name = os.path.split(os.path.abspath(out_dir))
    return {kind: sorted(glob.glob(os.path.join(glob.escape(head), f".{glob.escape(name)}.{kind}-*")))
            for kind in (TMP, OLD)}


def recover_dir(out_dir, is_valid=lambda path: True) -> List[str]:
    """Undo a replace that was killed between its two renames; report what is left.

    When ``out_dir`` is missing and exactly one ``.NAME.old-*`` passes
    ``is_valid``, it is renamed back to ``out_dir`` (the state before the
    interrupted run). Returns one human-readable line per action or leftover;
    temp directories (incomplete outputs) are reported, never deleted here.
    """
    out_dir = os.path.abspath(out_dir)
    found = leftovers(out_dir)
    notes = []
    old_ok = [p for p in found[OLD] if os.path.isdir(p) and is_valid(p)]
    if not os.path.lexists(out_dir) and len(old_ok) == 1:
        os.replace(old_ok[0], out_dir)
        fsync_dir(os.path.dirname(out_dir))
        notes.append(f"restored {out_dir} from {old_ok[0]} (an earlier replace of it was interrupted)")
        found[OLD].remove(old_ok[0])
    for path in found[TMP]:
        notes.append(f"{path}: incomplete output of an interrupted run; delete it (rm -r) when no other "
                     "run is writing there")
    for path in found[OLD]:
        notes.append(f"{path}: previous contents of {out_dir} kept by an interrupted replace; delete it "
                     "(rm -r) if you do not need them")
    return notes


@contextlib.contextmanager
def atomic_dir(out_dir, replace: bool = False):
    """Yield an empty temp directory; on success it becomes ``out_dir``.

    An existing ``out_dir`` raises ``FileExistsError`` unless ``replace``; it is
    then renamed to ``.NAME.old-*`` first and removed only after the new one is
    in place (a kill in between leaves both, which :func:`recover_dir` handles).
    Callers decide whether the existing directory may be replaced at all.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    parent = _parent(out_dir)
    if os.path.lexists(out_dir) and not replace:
        raise FileExistsError(f"{out_dir} already exists")
    while True:
        tmp = _hidden(out_dir, TMP)
        try:
            os.mkdir(tmp, 0o777)
            break
        except FileExistsError:
            continue
        except OSError as err:
            raise _with_path(err, out_dir, tmp) from err
    try:
        try:
            yield tmp
        except OSError as err:  # name the file as it will be, not its temp name
            name = os.fspath(err.filename) if err.filename else ""
            if name == tmp or name.startswith(tmp + os.sep):
                raise type(err)(err.errno, err.strerror, out_dir + name[len(tmp):]) from err
            raise
        fsync_dir(tmp)
        old = None
        try:
            if os.path.lexists(out_dir):
                if not replace:
                    raise FileExistsError(f"{out_dir} already exists")
                old = _hidden(out_dir, OLD)
                os.replace(out_dir, old)
            os.replace(tmp, out_dir)
        except OSError as err:
            if old is not None and not os.path.lexists(out_dir):
                os.replace(old, out_dir)  # put the previous contents back
            raise _with_path(err, out_dir, tmp) from err
        fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
