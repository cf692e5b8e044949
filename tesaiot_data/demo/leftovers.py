"""The folders that brokers of dead processes left behind, and how a live broker claims its own.

A broker's temporary folder (`$TMPDIR/tesaiot-broker-*`) holds the token (see `credentials`).
`LocalBroker.close()` removes it, and so does the exit of the process, Ctrl-C and SIGTERM
included; only a SIGKILL (a notebook kernel killed for memory) or a power cut leaves it. So
each folder names its owner in `owner.json`: the pid of the process that made it and of its
Mosquitto, with (on Linux) each one's start time and the pid namespace, so that a reused pid
or a process in another container is not taken for the owner. Every new `LocalBroker` removes
the folders whose owner and Mosquitto are both gone; a folder without a readable `owner.json`
(one being made right now) is left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["FOLDER_PREFIX", "OWNER_FILE", "claim", "remove_abandoned"]

logger = logging.getLogger(__name__)

#: How the temporary folder of every `LocalBroker` is named, in `tempfile.gettempdir()`.
FOLDER_PREFIX = "tesaiot-broker-"
#: The file in it that names the process owning it.
OWNER_FILE = "owner.json"

_LINUX = sys.platform.startswith("linux")


def claim(folder: Path, *, broker_pid: int | None = None) -> None:
    """Write this process (and its Mosquitto, if started) as the owner of `folder`.

    Args:
        folder: The broker's temporary folder.
        broker_pid: The pid of the Mosquitto serving from it, once started.

    Raises:
        OSError: The file could not be written.
    """
    owner = {
        "owner": _identity(os.getpid()),
        "broker": None if broker_pid is None else _identity(broker_pid),
        "pid_namespace": _pid_namespace(),
    }
    fd, temp = tempfile.mkstemp(prefix=f".{OWNER_FILE}.", dir=folder)
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(owner, file)
        os.replace(temp, folder / OWNER_FILE)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def remove_abandoned(parent: Path | None = None) -> list[Path]:
    """Remove the broker folders of this user whose owner and Mosquitto are both gone.

    Never raises: a folder that cannot be read or removed is left for the next time.

    Args:
        parent: Where to look; by default `tempfile.gettempdir()`.

    Returns:
        The folders removed.
    """
    parent = Path(tempfile.gettempdir()) if parent is None else parent
    try:
        candidates = [entry for entry in parent.iterdir() if entry.name.startswith(FOLDER_PREFIX)]
    except OSError:
        return []
    removed = []
    for folder in candidates:
        if _abandoned(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            logger.info("removed %s, left by a broker whose process is gone", folder)
    return removed


def _abandoned(folder: Path) -> bool:
    try:
        status = folder.lstat()  # a symlink is not a broker's folder: never followed
        if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid():
            return False
        owner = json.loads((folder / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False  # no owner yet (a folder being made), or not ours to judge
    if not isinstance(owner, dict) or owner.get("pid_namespace") != _pid_namespace():
        return False  # written in another container: its pids mean nothing here
    identities = [owner.get("owner"), owner.get("broker")]
    if not isinstance(identities[0], dict):
        return False
    return not any(_alive(identity) for identity in identities if isinstance(identity, dict))


def _identity(pid: int) -> dict[str, Any]:
    return {"pid": pid, "started": _start_time(pid)}


def _alive(identity: dict[str, Any]) -> bool:
    pid = identity.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True  # not ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # there, and another user's: leave it
    started = identity.get("started")
    # A zombie (None) is gone; another start time is a reused pid.
    return started is None or _start_time(pid) == started


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), else None."""
    if not _LINUX:
        return None
    with contextlib.suppress(OSError, ValueError, IndexError):
        text = Path(f"/proc/{pid}/stat").read_text()
        # "<pid> (<comm>) <state> <ppid> ...": comm may hold spaces and parentheses.
        fields = text.rpartition(")")[2].split()
        if fields[0] != "Z":
            return int(fields[19])  # field 22 of proc(5), counted from the state (field 3)
    return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
