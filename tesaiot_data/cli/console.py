r"""What the command line does while a command runs: the status line, errors, stop signals.

`printable` is the one escape of text that comes from outside (device ids, metrics, values,
paths, error messages): control characters are printed as `\x1b` or `\n`, so no device id
or file name can move the cursor, recolour or clear the terminal, or forge a line.

`stop_on_signals` turns SIGTERM (and SIGHUP for the demo) into a clean stop. `watch` is the one
status loop of `record`, `record --dataset` and `demo`: on a terminal the
status line is redrawn in place twice a second; elsewhere (a pipe, a file, systemd's journal)
a plain line goes out every few seconds, so that a log is not flooded.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from tesaiot_data.collector.stats import status_line

if TYPE_CHECKING:
    from tesaiot_data.collector import Collector, Recording

__all__ = ["one_line", "printable", "recording_status", "stop_on_signals", "watch"]

# C0 and C1 controls, DEL, line and paragraph separators, bidirectional overrides and
# isolates, and surrogates (the bytes of a name that is not UTF-8).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

_TICK = 0.5  # seconds between two status lines on a terminal
_PLAIN_EVERY = 5.0  # seconds between two plain status lines, by default


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, signals: Collection[int]) -> Iterator[None]:
    """Within the block, these signals set `stop` instead of ending the process.

    The command then finishes as on Ctrl-C: it writes its last rows and prints its summary.
    A signal that is ignored when the block starts stays ignored (`nohup` keeps a command
    running when its terminal closes). Outside the main thread nothing is changed: Python
    sets signal handlers only there.

    Args:
        stop: The event the command's loop watches.
        signals: For example `{signal.SIGTERM}` (systemd, `docker stop`, `kill`), plus
            `signal.SIGHUP` (a closed terminal).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()  # nothing else here: the main thread may hold any lock (logging's too)

    previous = {
        number: signal.signal(number, on_signal)
        for number in signals
        if signal.getsignal(number) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def watch(
    collector: Collector,
    *,
    duration: float | None,
    line: Callable[[], str],
    out: TextIO,
    plain: Callable[[str], None] | None = None,
    plain_every: float = _PLAIN_EVERY,
    plain_at_start: bool = True,
    stop: threading.Event | None = None,
) -> None:
    """Show a live status line until the duration ends, Ctrl-C, `stop` or the stream fails.

    Args:
        collector: The running collector; a failure of its connection ends the watch.
        duration: Seconds to watch; None: until Ctrl-C or `stop`.
        line: Makes the status line (called when it is shown).
        out: Where a terminal's line is drawn; where plain lines go by default.
        plain: What to do with a status line when `out` is not a terminal; default: print
            it on `out`.
        plain_every: Seconds between two plain status lines.
        plain_at_start: Give the first plain line at once, else after `plain_every`.
        stop: An event that ends the watch when set (SIGTERM, for a service).

    Raises:
        TesaiotError: The collector's connection failed (for example, the token was
            revoked); Ctrl-C is not an error and ends the watch quietly.
    """
    if plain is None:

        def plain(text: str) -> None:
            print(text, file=out, flush=True)

    stop = stop or threading.Event()
    tty = out.isatty()
    deadline = None if duration is None else time.monotonic() + duration
    next_plain = time.monotonic() + (0.0 if plain_at_start else plain_every)
    try:
        while True:
            wait = _TICK if deadline is None else min(_TICK, deadline - time.monotonic())
            if wait <= 0 or stop.wait(wait):
                break
            if tty:  # our own escape clears the rest of the line; the line's own are escaped
                print(f"\r{printable(line())}\x1b[K", end="", file=out, flush=True)
            elif time.monotonic() >= next_plain:
                next_plain = time.monotonic() + plain_every
                plain(printable(line()))
            client = collector.client
            if client is not None and client.error is not None:
                raise client.error
    except KeyboardInterrupt:
        pass
    finally:
        if tty:
            print(file=out)


def recording_status(collector: Collector, recording: Recording) -> str:
    """The status line of a collector that records: the collector's, and the rows recorded."""
    return status_line(collector.stats, running=collector.running, rows_recorded=recording.rows)


def printable(text: object) -> str:
    r"""Return `str(text)` with its control characters escaped as Python writes them.

    An escape sequence (`"\x1b[31m"`) or a newline from a device id reaches the terminal
    as the text `\x1b[31m` or `\n`; everything else, other languages included, as it is.

    Args:
        text: Anything; its `str()` is escaped.

    Returns:
        The text, safe to print on a terminal: one line, no control characters.
    """
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def one_line(exc: BaseException) -> str:
    r"""An exception's message on one line, for `error: ...` on standard error.

    The message's own lines are joined with spaces; the control characters left (an escape
    sequence in a path or a device id) are escaped with `printable`.
    """
    return printable(" ".join(str(exc).splitlines()))
