"""Child processes that end with this process, however it ends (even by SIGKILL).

The local broker must not outlive the notebook kernel or test run that started it, and
neither must a service a notebook starts (notebook 04's recorder): `popen_tied` is the public
way to start one, `spawn_tied` / `stop_tied` the broker's. On Linux
the kernel sends the child SIGTERM when its parent dies (`PR_SET_PDEATHSIG`), which it ties to
the *thread* that forked: every child is therefore forked from one thread that lives as long
as the process. Elsewhere a tiny watchdog process does it, when the pipe from its parent
closes without a byte on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import IO

__all__ = ["STOP_TIMEOUT", "die_with_parent_preexec", "popen_tied", "spawn_tied", "stop_tied"]

logger = logging.getLogger(__name__)

#: Seconds a child is given to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = 5.0

# Linux ties the child to its parent with prctl(PR_SET_PDEATHSIG); elsewhere a watchdog
# process does (tests switch this off to run the watchdog on Linux too).
_USE_PDEATHSIG = sys.platform.startswith("linux")
_PR_SET_PDEATHSIG = 1
# SIGTERM: Mosquitto saves its persistence file and exits within milliseconds.
_PARENT_DEATH_SIGNAL = signal.SIGTERM
# Run as `python -I -S -c _WATCHDOG <child pid>` with a pipe as stdin. A byte on the pipe
# means the owner stops the child itself; end of file without one means the owner died.
_WATCHDOG = """\
import os, signal, sys, time
broker = int(sys.argv[1])
if sys.stdin.buffer.read(1):
    raise SystemExit(0)
for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
    try:
        os.kill(broker, sig)
    except ProcessLookupError:
        raise SystemExit(0)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(broker, 0)
        except ProcessLookupError:
            raise SystemExit(0)
        time.sleep(0.05)
"""


@functools.cache
def _prctl() -> Callable[..., int]:
    # Looked up before the fork: the child must do as little as possible before exec.
    function: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return function


def die_with_parent_preexec() -> Callable[[], None]:
    """A `preexec_fn` that makes the child get SIGTERM when the forking thread ends (Linux).

    Returns:
        The function to pass as `subprocess.Popen(preexec_fn=...)`; in the child it raises
        OSError if `prctl` fails, and exits at once if the parent is already gone.
    """
    prctl = _prctl()
    parent = os.getpid()
    option, sig = _PR_SET_PDEATHSIG, int(_PARENT_DEATH_SIGNAL)

    def die_with_parent() -> None:
        if prctl(option, sig, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before prctl: nobody would signal
            os._exit(1)

    return die_with_parent


_Factory = Callable[[], "subprocess.Popen[bytes]"]


class _Spawner:
    """Forks every child from one thread that lives as long as the process (Linux).

    The kernel sends the parent-death signal when the *thread* that forked the child ends,
    not the process: a broker that `start()` or `restart()` forked on a short-lived thread (a
    worker, a widget's callback) would be killed as soon as that thread returned.
    """

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[_Factory, Future[subprocess.Popen[bytes]]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, factory: _Factory) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="tesaiot-broker-spawner", daemon=True
                )
                self._thread.start()
        future: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((factory, future))
        try:
            return future.result()
        except BaseException:
            # Interrupted (Ctrl-C) while the spawner forks: leave no broker without an owner.
            with contextlib.suppress(BaseException):
                orphan = future.result(timeout=STOP_TIMEOUT)
                orphan.kill()
                orphan.wait()
            raise

    def _serve(self) -> None:
        while True:
            factory, future = self._requests.get()
            try:
                process = factory()
            except BaseException as exc:  # handed to the caller, which raises it
                future.set_exception(exc)
            else:
                future.set_result(process)


_spawner = _Spawner()


def spawn_tied(
    argv: list[str], *, stdout: IO[bytes], cwd: Path
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes] | None]:
    """Start a process that ends when this process ends, even by SIGKILL.

    Its standard error goes to `stdout`, its standard input is /dev/null, and it runs in a
    session of its own (a Ctrl-C goes to the caller, which then stops it in order).

    Args:
        argv: The program and its arguments.
        stdout: Where the child's standard output and error go.
        cwd: The child's working directory.

    Returns:
        The process, and its watchdog process where there is one (not on Linux); stop both
        with `stop_tied`.

    Raises:
        OSError: The program could not be started.
        subprocess.SubprocessError: The child failed before exec.
    """
    return _start(
        argv,
        {
            "stdin": subprocess.DEVNULL,
            "stdout": stdout,
            "stderr": subprocess.STDOUT,
            "cwd": cwd,
            "start_new_session": True,
        },
    )


# Watchdogs of the processes popen_tied started (not on Linux), by child pid.
_watchdogs: dict[int, subprocess.Popen[bytes]] = {}


def popen_tied(
    args: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process that ends when this process ends, even by SIGKILL: a notebook's service.

    Like `subprocess.Popen(args, ...)`, for a child that must not outlive the notebook
    kernel or script that started it (a recorder service, say): when this process dies,
    however it dies, the child gets SIGTERM (on Linux from the kernel, `PR_SET_PDEATHSIG`;
    elsewhere from a small watchdog process). It may be forked from any thread. The child's
    standard input is /dev/null, and it runs in a session of its own, so that a Ctrl-C or a
    notebook's interrupt reaches the caller only; stop it with `send_signal`, `terminate`
    or `kill` as any `Popen`.

    Example:
        >>> command = ["tesaiot-data", "record", "--dataset", "data/"]
        >>> recorder = popen_tied(command)  # doctest: +SKIP

    Args:
        args: The program and its arguments.
        env: The child's environment; None inherits this process's.
        cwd: The child's working directory; None for this process's.
        stdout: Where its standard output goes, as for `Popen` (a file, `subprocess.PIPE`,
            `subprocess.DEVNULL`); None inherits this process's.
        stderr: Likewise for its standard error (`subprocess.STDOUT`: with its output).

    Returns:
        The running child.

    Raises:
        OSError: The program could not be started.
        subprocess.SubprocessError: The child failed before exec.
    """
    process, watchdog = _start(
        [os.fspath(arg) for arg in args],
        {
            "stdin": subprocess.DEVNULL,
            "stdout": stdout,
            "stderr": stderr,
            "cwd": cwd,
            "env": None if env is None else dict(env),
            "start_new_session": True,
        },
    )
    if watchdog is not None:
        _watchdogs[process.pid] = watchdog  # lives, armed, as long as this process does
    return process


def _start(
    argv: list[str], options: dict[str, object]
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes] | None]:
    def popen(preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
        # Unsafe with threads only if the function takes a lock another thread held at the
        # fork; ours calls prctl and getppid, nothing else.
        return subprocess.Popen(argv, preexec_fn=preexec_fn, **options)  # type: ignore[call-overload]  # noqa: PLW1509

    if _USE_PDEATHSIG:
        preexec = die_with_parent_preexec()
        return _spawner.popen(lambda: popen(preexec)), None
    process = popen()
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(process.pid)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Not in our process group: a Ctrl-C must not end the watchdog before the child.
            start_new_session=True,
        )
    except BaseException:
        _terminate(process, signal.SIGKILL, STOP_TIMEOUT)
        raise
    return process, watchdog


def stop_tied(
    process: subprocess.Popen[bytes] | None,
    watchdog: subprocess.Popen[bytes] | None,
    sig: int,
) -> None:
    """Stop a process from `spawn_tied`: disarm its watchdog first, then signal it.

    Args:
        process: The process; None does nothing.
        watchdog: Its watchdog, if it has one.
        sig: The signal to send; SIGKILL follows if the process ignores it for
            `STOP_TIMEOUT` seconds.
    """
    if watchdog is not None:
        _disarm(watchdog)
    if process is not None:
        _terminate(process, sig, STOP_TIMEOUT)


def _disarm(watchdog: subprocess.Popen[bytes]) -> None:
    # The byte tells the watchdog that we stop the broker; it exits without signalling.
    if watchdog.stdin is not None:
        with contextlib.suppress(OSError):
            watchdog.stdin.write(b"x")
        with contextlib.suppress(OSError):
            watchdog.stdin.close()
    try:
        watchdog.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()


def _terminate(process: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        logger.warning("mosquitto (pid %d) ignored signal %d; killing it", process.pid, sig)
        process.kill()
        process.wait()
