"""Sinks: the one protocol for rows written to disk over time, as Arrow record batches.

`Sink` is what the collector feeds: `add(batch, rejects)` queues a batch in
`schema.ARROW_SCHEMA` (from `RollingWindow.batches_of`), `flush()` writes what is pending when
`flush_due()` says so, and `close()` finishes. Two sinks implement it: `Recorder`
(`sinks.recorder`, a crash-safe session capture merged into one file when it stops) and
`DatasetWriter` (`sinks.dataset`, auto-persist to a hive-style dataset folder). Neither sees
pandas on the collector's path; `add` also takes a DataFrame, converted once, as a
convenience for code of one's own.

Memory is bounded: at most `max_pending_rows` rows (and as many rejected messages) wait in a
sink, so a store that fails for hours (a full disk, a folder made read-only or removed) cannot
grow the process without end. Beyond the bound the oldest rows are dropped, counted in
`rows_dropped` and said in the log.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, TypeVar

import pyarrow as pa

from tesaiot_data.errors import DISK_HINT
from tesaiot_data.files.metadata import check_metadata, iso_ns, time_range_ns
from tesaiot_data.files.parquet import conform_batch, table_from_frame
from tesaiot_data.files.store import Location, StorePath, location

if TYPE_CHECKING:
    import pandas as pd

    from tesaiot_data.messages import Reject

__all__ = ["DEFAULT_MAX_PENDING_ROWS", "Sink"]

logger = logging.getLogger(__name__)

#: Rows a sink holds in memory at most while they wait for a write (`max_pending_rows`): about
#: 60 bytes each in Arrow, some 300 MB; 20 minutes of 4,000 rows a second.
DEFAULT_MAX_PENDING_ROWS = 5_000_000

_T = TypeVar("_T")
_S = TypeVar("_S", bound="Sink")


class Sink(ABC):
    """Rows on their way to Parquet files: queued by `add`, written by `flush`.

    The collector's one protocol for its recordings and its auto-persist dataset. It calls
    `add` with each batch of rows (and the batch's rejected messages) from its housekeeping
    thread, `flush` whenever `flush_due` is True, and `close` once when the recording or the
    collector stops. Rows wait in memory between flushes. A failed flush raises, sets
    `error` and keeps its rows pending for the next one, so a short outage of the store
    (a full disk that is cleaned up) loses nothing; a later flush that succeeds sets `error`
    back to None. All methods are thread-safe.

    The rows that wait are bounded by `max_pending_rows` (and the rejected messages by the
    same number): when more wait, because the store keeps failing or flushes cannot keep up,
    the oldest are dropped. The oldest, because the newest rows are the ones a user looks at
    when the store comes back (as the window evicts its oldest rows), and because the ones
    kept then reach disk as one unbroken stretch up to the moment of recovery. The drop is
    counted (`rows_dropped`, `rejects_dropped`) and logged twice per outage: a WARNING when
    dropping begins, and one saying how many rows of which receive times were dropped once
    a write succeeds again (or the sink closes).

    Args:
        path: Where the sink writes (a file or a folder): a local path, or a URL of an object
            store such as `s3://bucket/telemetry` (see `tesaiot_data.files.store`).
        flush_every: Seconds between the flushes that `flush_due` asks for.
        metadata: Extra string key-value pairs stored in every file.
        max_pending_rows: Rows (and, apart, rejected messages) kept in memory at most while
            they wait for a write; default `DEFAULT_MAX_PENDING_ROWS` (5,000,000 rows,
            about 300 MB).

    Raises:
        TypeError: A metadata key or value is not a string, or `max_pending_rows` is not
            an int.
        ValueError: `flush_every` is negative, or `max_pending_rows` is below 1.

    Attributes:
        path: Where the sink writes.
    """

    #: Whether the sink keeps the rejected messages given to `add` (and writes them).
    keeps_rejects: ClassVar[bool] = True

    def __init__(
        self,
        path: str | Path | StorePath,
        *,
        flush_every: float,
        metadata: Mapping[str, str] | None = None,
        max_pending_rows: int = DEFAULT_MAX_PENDING_ROWS,
    ) -> None:
        if not flush_every >= 0:
            raise ValueError(f"flush_every={flush_every!r} must be >= 0 seconds")
        self._max_pending_rows = _checked_bound(max_pending_rows)
        self._metadata = check_metadata(metadata)
        self.path: Location = location(path)
        self._flush_every = float(flush_every)
        self._lock = threading.Lock()  # guards the pending lists and counters
        self._write_lock = threading.Lock()  # one writer at a time, so files stay in order
        self._pending: list[pa.RecordBatch] = []
        self._pending_rejects: list[Reject] = []
        self._pending_rows = 0
        self._rows_dropped = 0
        self._rejects_dropped = 0
        self._outage = _Outage()  # what was dropped since the last write that succeeded
        self._last_flush = time.monotonic()
        self._rows = 0
        self._rejects = 0
        self._rows_on_disk = 0
        self._error: BaseException | None = None
        self._closed = False  # no more rows are taken

    @property
    def rows(self) -> int:
        """Rows added so far."""
        return self._rows

    @property
    def rejects(self) -> int:
        """Rejected messages added (and kept) so far."""
        return self._rejects

    @property
    def rows_on_disk(self) -> int:
        """Rows that reached disk so far."""
        return self._rows_on_disk

    @property
    def pending_rows(self) -> int:
        """Rows in memory, waiting for the next flush."""
        return self._pending_rows

    @property
    def rows_dropped(self) -> int:
        """Rows dropped from memory unwritten: beyond `max_pending_rows`, the oldest first.

        `rows == rows_on_disk + pending_rows + rows_dropped` until the sink closes; rows
        added after `close` are not counted at all.
        """
        return self._rows_dropped

    @property
    def rejects_dropped(self) -> int:
        """Rejected messages dropped from memory unwritten (beyond `max_pending_rows`)."""
        return self._rejects_dropped

    @property
    def max_pending_rows(self) -> int:
        """Rows (and, apart, rejected messages) kept in memory at most; settable.

        Raises:
            TypeError: A new value is not an int.
            ValueError: A new value is below 1.
        """
        return self._max_pending_rows

    @max_pending_rows.setter
    def max_pending_rows(self, value: int) -> None:
        bound = _checked_bound(value)
        with self._lock:
            self._max_pending_rows = bound
            began = self._trim()
        self._say_dropping(began)

    @property
    def error(self) -> BaseException | None:
        """The last failure of `flush` or `close`; None again once a later flush succeeds."""
        return self._error

    @property
    def closed(self) -> bool:
        """Whether `close` has begun: rows added from then on are dropped."""
        return self._closed

    def add(
        self,
        batch: pa.RecordBatch | pd.DataFrame | None,
        rejects: Sequence[Reject] = (),
    ) -> None:
        """Queue a batch of rows (and rejected messages) for the next flush.

        Once `close` has begun, batches are dropped (they arrived after the session ended):
        an ingest thread that still holds the sink must not fail because of a race.

        Args:
            batch: Rows in `schema.ARROW_SCHEMA` (see `RollingWindow.batches_of`); a
                DataFrame in the canonical columns, converted here; or None for none.
            rejects: The batch's rejected messages; dropped by a sink that does not keep
                them (`keeps_rejects`).

        Raises:
            ValueError: The batch is not in `ARROW_SCHEMA`, or the frame cannot be converted
                to it; the message names the column.
        """
        if batch is None:
            batches = []
        elif isinstance(batch, pa.RecordBatch):
            batches = [conform_batch(batch)] if batch.num_rows else []
        else:
            batches = table_from_frame(batch).to_batches() if len(batch) else []
        rows = sum(b.num_rows for b in batches)
        kept = rejects if self.keeps_rejects else ()
        with self._lock:
            if self._closed:
                logger.debug("%s is closed; dropped a batch of %d rows", self.path, rows)
                return
            if batches:
                self._pending.extend(batches)
                self._pending_rows += rows
                self._rows += rows
            if kept:
                self._pending_rejects.extend(kept)
                self._rejects += len(kept)
            began = self._trim()
        self._say_dropping(began)

    def flush_due(self) -> bool:
        """Whether `flush_every` seconds passed since the last flush and anything is pending.

        Returns:
            True when the caller should call `flush`.
        """
        with self._lock:
            if self._closed:
                return False
            pending = bool(self._pending or self._pending_rejects)
            return pending and time.monotonic() - self._last_flush >= self._flush_every

    @abstractmethod
    def flush(self) -> object:
        """Write the rows pending now; see the subclass for what it returns.

        Raises:
            OSError: A file could not be written; the rows not written are still pending.
        """

    @abstractmethod
    def close(self) -> Location:
        """Write the last rows and finish; later rows are dropped. Idempotent.

        Returns:
            `path`.

        Raises:
            RecordingError: The last rows could not be written; it counts the rows on disk
                and the rows lost.
        """

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _take(self) -> tuple[list[pa.RecordBatch], list[Reject]]:
        """Take what is pending, to be written; call with the write lock held."""
        with self._lock:
            batches, self._pending = self._pending, []
            rejects, self._pending_rejects = self._pending_rejects, []
            self._pending_rows = 0
            self._last_flush = time.monotonic()
        return batches, rejects

    def _give_back(self, batches: Sequence[pa.RecordBatch], rejects: Sequence[Reject]) -> None:
        """Put what could not be written back in front of what came meanwhile.

        Then the bound holds again: beyond `max_pending_rows`, the oldest rows are dropped.
        """
        with self._lock:
            self._pending[:0] = batches
            self._pending_rows += sum(b.num_rows for b in batches)
            self._pending_rejects[:0] = rejects
            began = self._trim()
        self._say_dropping(began)

    def _tracked(self, write: Callable[[], _T]) -> _T:
        """Run a write and keep `error` true to its outcome."""
        try:
            result = write()
        except Exception as exc:
            self._error = exc
            raise
        self._error = None
        self._say_dropped()
        return result

    def _trim(self) -> bool:
        """Drop the oldest rows and rejects beyond the bound; call with `_lock` held.

        Returns:
            True when this began an outage's dropping (the caller logs it, outside the lock).
        """
        excess = self._pending_rows - self._max_pending_rows
        extra_rejects = len(self._pending_rejects) - self._max_pending_rows
        if excess <= 0 and extra_rejects <= 0:
            return False
        outage = self._outage
        began = not (outage.rows or outage.rejects)
        while excess > 0:
            first = self._pending[0]
            if first.num_rows <= excess:
                gone = self._pending.pop(0)
            else:
                gone, self._pending[0] = first.slice(0, excess), first.slice(excess)
            excess -= gone.num_rows
            self._pending_rows -= gone.num_rows
            self._rows_dropped += gone.num_rows
            outage.count(gone)
        if extra_rejects > 0:
            del self._pending_rejects[:extra_rejects]
            self._rejects_dropped += extra_rejects
            outage.rejects += extra_rejects
        return began

    def _say_dropping(self, began: bool) -> None:
        if began:
            logger.warning(
                "%s: more than %s rows wait in memory (last write error: %s); the oldest are "
                "dropped from now on and counted in rows_dropped until a write succeeds "
                "(hint: %s)",
                self.path,
                f"{self._max_pending_rows:,}",
                self._error or "none, the flushes do not keep up",
                getattr(self._error, "hint", None) or DISK_HINT,  # a store's own hint
            )

    def _say_dropped(self) -> None:
        """Log what an outage dropped, once it is over (a write succeeded, or at close)."""
        with self._lock:
            outage, self._outage = self._outage, _Outage()
        if outage.rows or outage.rejects:
            logger.warning("%s: %s", self.path, outage.describe())


def _checked_bound(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_pending_rows={value!r} must be an int (a number of rows)")
    if value < 1:
        raise ValueError(f"max_pending_rows={value!r} must be >= 1 row")
    return value


class _Outage:
    """What a sink dropped since its last successful write: counts and receive times."""

    def __init__(self) -> None:
        self.rows = 0
        self.rejects = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None

    def count(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        low, high = time_range_ns(batch)
        self.rows += batch.num_rows
        self.first_ns = low if self.first_ns is None else min(self.first_ns, low)
        self.last_ns = high if self.last_ns is None else max(self.last_ns, high)

    def describe(self) -> str:
        parts = []
        if self.rows and self.first_ns is not None and self.last_ns is not None:
            parts.append(
                f"{self.rows:,} rows received from {iso_ns(self.first_ns)} to "
                f"{iso_ns(self.last_ns)}"
            )
        if self.rejects:
            parts.append(f"{self.rejects:,} rejected messages")
        return f"dropped {' and '.join(parts)} unwritten (beyond max_pending_rows)"
