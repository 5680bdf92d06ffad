"""A small tmpfs for real disk-full tests (a patched torch.save cannot show what a full disk does)."""
import contextlib
import subprocess

import pytest


@contextlib.contextmanager
def tiny_disk(path, size_kb: int):
    """Mount a ``size_kb`` tmpfs on ``path`` (created); skip the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)
