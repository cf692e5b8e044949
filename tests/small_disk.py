"""A tiny tmpfs to fill up: disk-full and read-only tests on a real file system, no mocks.

Mounting needs root (CAP_SYS_ADMIN) on Linux; elsewhere the tests that use it are skipped
with the reason.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_PAGE = 4096


@contextmanager
def small_disk(folder: Path, *, size: str = "256k", read_only: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of `size` on `folder` for the block; always unmounted afterwards.

    With `read_only`, the mount refuses every write, root's too (EROFS).
    """
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a disk-full test mounts a small tmpfs: needs root on Linux")
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size},ro" if read_only else f"size={size}"
    mount = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]
    result = subprocess.run(mount, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs (not permitted here?): {result.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True, capture_output=True)


def fill(folder: Path, name: str = "filler", *, limit: int | None = None) -> Path:
    """Write zeros to `folder/name` until the disk is full, or `limit` bytes are written."""
    path = folder / name
    written = 0
    with path.open("wb", buffering=0) as sink:
        while limit is None or written < limit:
            try:
                sink.write(b"\0" * _PAGE)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
            written += _PAGE
    return path


def remount_read_only(folder: Path) -> None:
    """Make a mounted small disk read-only (chmod does not stop root; this does)."""
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
