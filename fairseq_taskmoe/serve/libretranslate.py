"""Serve Argos packages (``--format argos``) with LibreTranslate, from its own environment.

LibreTranslate pins its dependencies (flask 2.2, packaging 23.1, numpy < 2, ...), so it
lives in its own virtual environment (``make libretranslate-env``: ``.venv-libretranslate``),
as a service would; this module runs in ours and drives it by subprocess, with the
standard library only:

    python -m fairseq_taskmoe.serve.libretranslate PACKAGES_DIR [--lt-env .venv-libretranslate]
        [--home DIR] [--port 5000] [--threads 4]

installs every ``*.argosmodel`` of PACKAGES_DIR with argostranslate's own
``package.install_from_path`` into ``HOME/packages`` and runs ``libretranslate --host
127.0.0.1 --load-only <the packages' languages>`` in the foreground. Its data, config and
cache directories (``XDG_*``) are under HOME, so nothing goes to ``~/.local``, and nothing
is downloaded: LibreTranslate only fetches models when fewer than two packages are
installed, and each package carries its sentence splitter (``extract/argos_sbd.py``).

What fixes the decoding (argostranslate's ``apply_packaged_translation``): beam
``ARGOS_BEAM_SIZE`` (set to 4 here), length penalty 0.2 and CTranslate2's default
``max_decoding_length`` 256, CTranslate2's own ranking; our API gives the same text with
``translate(..., beam=4, lenpen=0.2, max_len_b=256, fairseq_ranking=False)``.
LibreTranslate then post-processes the text (``improve_translation_formatting``: the
source's final punctuation and case; ``html.unescape``); no option turns that off.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from typing import Dict, List, Optional, Sequence

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_ENV = ".venv-libretranslate"
ARGOS_SETTINGS = {"ARGOS_DEVICE_TYPE": "cpu", "ARGOS_BEAM_SIZE": "4"}


def environment(home: str, threads: Optional[int] = None) -> Dict[str, str]:
    """Process environment for argostranslate / LibreTranslate with every directory under ``home``."""
    home = os.path.abspath(home)
    env = dict(os.environ)
    for key in [k for k in env if k.startswith(("ARGOS_", "LT_"))]:
        del env[key]  # a caller's settings would change the decoding or the languages
    env.update(ARGOS_SETTINGS, ARGOS_PACKAGES_DIR=os.path.join(home, "packages"),
               XDG_DATA_HOME=os.path.join(home, "data"), XDG_CONFIG_HOME=os.path.join(home, "config"),
               XDG_CACHE_HOME=os.path.join(home, "cache"))
    if threads:
        env.update(ARGOS_INTRA_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    return env


def lt_python(lt_env: str) -> str:
    path = os.path.join(lt_env, "bin", "python")
    if not os.path.isfile(path):
        raise ValueError(f"--lt-env {lt_env}: no bin/python; build LibreTranslate's environment with "
                         "`make libretranslate-env`")
    return path


def package_files(packages_dir: str) -> List[str]:
    files = sorted(os.path.join(packages_dir, f) for f in os.listdir(packages_dir) if f.endswith(".argosmodel"))
    if not files:
        raise ValueError(f"{packages_dir}: no *.argosmodel; write them with fairseq-taskmoe-extract CKPT "
                         "--tasks all --format argos --out DIR")
    return files


def languages(files: Sequence[str]) -> List[str]:
    """Argos codes of the packages (from each zip's metadata.json), in first-seen order."""
    codes = []
    for path in files:
        with zipfile.ZipFile(path) as zf:
            name = next(n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/metadata.json"))
            meta = json.loads(zf.read(name))
        codes += [meta["from_code"], meta["to_code"]]
    return list(dict.fromkeys(codes))


INSTALL = "import sys\nfrom argostranslate import package\nfor p in sys.argv[1:]:\n    package.install_from_path(p)\n"


def install(lt_env: str, files: Sequence[str], home: str):
    """argostranslate's own offline install of ``files`` into ``home/packages``."""
    env = environment(home)
    os.makedirs(env["ARGOS_PACKAGES_DIR"], exist_ok=True)
    subprocess.run([lt_python(lt_env), "-c", INSTALL, *map(os.path.abspath, files)], env=env, check=True,
                   timeout=600)


def command(lt_env: str, port: int, codes: Sequence[str], host: str = "127.0.0.1", threads: int = 4,
            extra: Sequence[str] = ()) -> List[str]:
    if host not in LOOPBACK:
        raise ValueError(f"--host {host}: this helper serves on loopback only ({', '.join(LOOPBACK)}); "
                         "to serve a network, run libretranslate yourself (docs/DEPLOY.md)")
    return [os.path.join(lt_env, "bin", "libretranslate"), "--host", host, "--port", str(port),
            "--load-only", ",".join(codes), "--threads", str(threads), "--disable-files-translation",
            *extra]


def get_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def post_json(url: str, payload, timeout: float = 60.0):
    """(status, body as JSON or text) of a JSON POST (``payload`` bytes: sent as they are);
    4xx/5xx are returned, not raised."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        body = err.read().decode("utf-8", "replace")
        try:
            return err.code, json.loads(body)
        except ValueError:
            return err.code, body


class Server:
    """LibreTranslate in its own process group; ``stop()`` ends the group, whatever happened."""

    def __init__(self, lt_env: str, home: str, port: int, codes: Sequence[str], threads: int = 4,
                 argos_threads: Optional[int] = None, log_path: Optional[str] = None):
        self.url = f"http://127.0.0.1:{port}"
        self.cmd = command(lt_env, port, codes, threads=threads)
        self.env = environment(home, argos_threads)
        self.log_path = log_path or os.path.join(home, "libretranslate.log")
        self.proc = None

    def start(self, timeout: float = 120.0):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded: the server answers or the test fails
            if self.proc.poll() is not None:
                raise RuntimeError(f"libretranslate exited ({self.proc.returncode}); log: {self.log_path}")
            try:
                get_json(self.url + "/languages", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"libretranslate did not answer within {timeout:.0f} s; log: {self.log_path}")

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fairseq_taskmoe.serve.libretranslate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("packages", help="directory of *.argosmodel (fairseq-taskmoe-extract --format argos)")
    p.add_argument("--lt-env", default=DEFAULT_ENV, help="LibreTranslate's virtualenv (make libretranslate-env)")
    p.add_argument("--home", default=None, help="argos/LibreTranslate data dir (default: PACKAGES/libretranslate)")
    p.add_argument("--host", default="127.0.0.1", help="loopback address only")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--threads", type=int, default=4, help="LibreTranslate's HTTP worker threads")
    args, extra = p.parse_known_args(argv)
    files = package_files(args.packages)
    home = args.home or os.path.join(args.packages, "libretranslate")
    cmd = command(args.lt_env, args.port, languages(files), host=args.host, threads=args.threads, extra=extra)
    lt_python(args.lt_env)
    install(args.lt_env, files, home)
    print(f"installed {len(files)} packages into {os.path.join(home, 'packages')}; running: {' '.join(cmd)}",
          flush=True)
    os.execve(cmd[0], cmd, environment(home))
    return 0  # not reached


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as err:
        sys.exit(f"fairseq_taskmoe.serve.libretranslate: error: {err}")
