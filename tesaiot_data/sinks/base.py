"""Sinks: the one protocol for rows written to disk over time, as Arrow record batches.

`Sink` is what the collector feeds: `add(batch, rejects)` queues a batch in
`schema.ARROW_SCHEMA` (from `RollingWindow.batches_of`), `flush()` writes what is pending when
`flush_due()` says so, and `close()` finishes. Two sinks implement it: `Recorder`
(`sinks.recorder`, a crash-safe session capture merged into one file when it stops) and
`DatasetWriter` (`sinks.dataset`, auto-persist to a hive-style dataset folder). Neither sees
pandas on the collector's path; `add` also takes a DataFrame, converted once, as a
convenience for code of one's own.
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

from tesaiot_data.files.metadata import check_metadata
from tesaiot_data.files.parquet import conform_batch, table_from_frame

if TYPE_CHECKING:
    import pandas as pd

    from tesaiot_data.messages import Reject

__all__ = ["Sink"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_S = TypeVar("_S", bound="Sink")


class Sink(ABC):
    """Rows on their way to Parquet files: queued by `add`, written by `flush`.

    The collector's one protocol for its recordings and its auto-persist dataset. It calls
    `add` with each batch of rows (and the batch's rejected messages) from its housekeeping
    thread, `flush` whenever `flush_due` is True, and `close` once when the recording or the
    collector stops. Rows wait in memory between flushes. A failed flush raises, sets
    `error` and keeps its rows pending for the next one, so a full disk loses nothing while
    the process lives; a later flush that succeeds sets `error` back to None. All methods
    are thread-safe.

    Args:
        path: Where the sink writes (a file or a folder).
        flush_every: Seconds between the flushes that `flush_due` asks for.
        metadata: Extra string key-value pairs stored in every file.

    Raises:
        TypeError: A metadata key or value is not a string.
        ValueError: `flush_every` is negative.

    Attributes:
        path: Where the sink writes.
    """

    #: Whether the sink keeps the rejected messages given to `add` (and writes them).
    keeps_rejects: ClassVar[bool] = True

    def __init__(
        self,
        path: str | Path,
        *,
        flush_every: float,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if not flush_every >= 0:
            raise ValueError(f"flush_every={flush_every!r} must be >= 0 seconds")
        self._metadata = check_metadata(metadata)
        self.path = Path(path)
        self._flush_every = float(flush_every)
        self._lock = threading.Lock()  # guards the pending lists and counters
        self._write_lock = threading.Lock()  # one writer at a time, so files stay in order
        self._pending: list[pa.RecordBatch] = []
        self._pending_rejects: list[Reject] = []
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
                self._rows += rows
            if kept:
                self._pending_rejects.extend(kept)
                self._rejects += len(kept)

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
    def close(self) -> Path:
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
            self._last_flush = time.monotonic()
        return batches, rejects

    def _give_back(self, batches: Sequence[pa.RecordBatch], rejects: Sequence[Reject]) -> None:
        """Put what could not be written back in front of what came meanwhile."""
        with self._lock:
            self._pending[:0] = batches
            self._pending_rejects[:0] = rejects

    def _tracked(self, write: Callable[[], _T]) -> _T:
        """Run a write and keep `error` true to its outcome."""
        try:
            result = write()
        except Exception as exc:
            self._error = exc
            raise
        self._error = None
        return result
