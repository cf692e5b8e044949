"""The hand-off from the ingest thread to one sink: a `Feed` queues the window's chunks.

One capture has three names, one per role: the user holds a `Recording`
(`tesaiot_data.collector.recording`), the rows are written by a `Recorder` (a `Sink`), and
the `Feed` here carries rows from the collector's ingest thread to that sink. The collector's
auto-persist dataset has a feed too (to its `DatasetWriter`). The ingest thread only appends
chunks (`put`); the housekeeping thread turns them into Arrow record batches and hands them
on (`drain`, `flush`), because converting every batch on the ingest thread cost 60 % of the
ingest rate (benchmarks/README.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from tesaiot_data.errors import DISK_HINT, RecordingError, disk_error
from tesaiot_data.files.store import Location
from tesaiot_data.messages import Reject
from tesaiot_data.sinks.base import Sink
from tesaiot_data.window.chunk import Chunk, to_batches

__all__ = ["Feed"]

logger = logging.getLogger(__name__)


class Feed:
    """Rows on their way from the ingest thread to one sink (a recording, the dataset).

    Thread-safe: `put` runs on the ingest thread, `drain` and `flush` on the housekeeping
    thread or any caller (one drain at a time, so batches reach the sink in order). A write
    that fails (disk full, folder removed) is logged once, not once per flush; the sink
    keeps the rows and the next flush tries again.

    Args:
        sink: The sink the rows go to (a `Recorder` or a `DatasetWriter`).

    Durability (acknowledgement after the disk): a feed given `mark` is a durable one. `mark`
    returns how far the messages were handed to the feed (the durable inbox's sequence
    number, `TESAIoTMQTTClient.handled_seq`), and `durable_through` says how far they are on
    disk: read before a flush takes the rows, it becomes `durable_through` once that flush
    (which writes everything pending) succeeds with no row dropped. The collector releases
    the inbox up to the lowest `durable_through` of its durable feeds.

    Args:
        sink: The sink the rows go to (a `Recorder` or a `DatasetWriter`).
        mark: For a durable feed, returns the inbox sequence number through which messages
            were put here; None for a feed nobody waits on.

    Attributes:
        sink: That sink.
        pending_rows: Rows put here and not yet handed to the sink.
        error: Why the last `flush` failed, or None after one that succeeded.
        durable_through: The inbox sequence number through which every row put here is on
            disk (0 before the first flush, and always for a feed without `mark`).
    """

    def __init__(self, sink: Sink, *, mark: Callable[[], int] | None = None) -> None:
        self.sink = sink
        self.pending_rows = 0
        self.error: BaseException | None = None
        self.mark = mark
        self.durable_through = 0
        self._chunks: list[Chunk] = []
        self._rejects: list[Reject] = []
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()  # one drain at a time keeps batches in order

    @property
    def where(self) -> Location:
        """Where the sink writes (a file or a folder)."""
        return self.sink.path

    def put(self, chunk: Chunk | None, rejects: Sequence[Reject]) -> None:
        """Queue one batch's chunk (None when it gave no rows) and its rejected messages."""
        with self._lock:
            if chunk is not None:
                self._chunks.append(chunk)
                self.pending_rows += len(chunk)
            if rejects:
                self._rejects.extend(rejects)

    def drain(self) -> None:
        """Hand what is queued to the sink as Arrow record batches (no write yet).

        Raises:
            Exception: Whatever the sink's `add` raises (a bug: `add` only queues).
        """
        with self._drain_lock:
            with self._lock:
                chunks, self._chunks = self._chunks, []
                rejects, self._rejects = self._rejects, []
            if not (chunks or rejects):
                return
            batches = to_batches(chunks)
            for batch in batches[:-1]:
                self.sink.add(batch)
            self.sink.add(batches[-1] if batches else None, rejects)
            with self._lock:
                self.pending_rows -= sum(len(chunk) for chunk in chunks)

    def flush(self) -> None:
        """Drain and write now; a failure is logged once and kept in `error`, never raised."""
        mark = self.mark() if self.mark is not None else None  # before the rows are taken
        dropped = self.sink.rows_dropped
        try:
            self.drain()
            self.sink.flush()
        except Exception as exc:  # OSError mostly; nothing here may stop the collector
            if self.error is None:
                logger.error(
                    "cannot write %s: %s; its rows are kept in memory and written when a "
                    "later flush succeeds (hint: %s)",
                    self.where,
                    exc,
                    DISK_HINT,
                )
            self.error = exc
        else:
            if self.error is not None:
                logger.warning("writing %s again after: %s", self.where, self.error)
            self.error = None
            if mark is not None and self.sink.rows_dropped == dropped:
                self.durable_through = max(self.durable_through, mark)

    def settle(self) -> None:
        """Move `durable_through` up to `mark` when no row waits here or in the sink.

        Batches that gave no row to keep (rejects only, in a sink that does not keep them)
        leave nothing to flush; without this their messages would be held in the inbox.
        """
        if self.mark is None:
            return
        mark = self.mark()  # before looking: a row put after it has a later number
        sink = self.sink
        with self._drain_lock:  # not while a drain holds rows on their way to the sink
            with self._lock:
                queued = bool(self._chunks or self._rejects)
            if not queued and not sink.pending_rows and sink.error is None and not sink.closed:
                self.durable_through = max(self.durable_through, mark)

    def close(self) -> RecordingError | None:
        """Hand the sink its last rows and close it; return the failure instead of raising.

        Returns:
            None once the sink's file or folder is complete; otherwise a `RecordingError`
            (already logged) saying what reached disk, which `load_recording()` still reads.
        """
        sink = self.sink
        try:
            self.drain()
            sink.close()
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, RecordingError)
                else disk_error(
                    f"could not finish {self.where}: {exc}",
                    path=self.where,
                    then="load_recording() reads what reached disk",
                    rows_on_disk=sink.rows_on_disk,
                    rows_lost=sink.rows - sink.rows_on_disk,
                )
            )
            if error is not exc:
                error.__cause__ = exc
            logger.error("%s (%d rows reached disk)", error, error.rows_on_disk)
            return error
        return None

    def __repr__(self) -> str:
        return f"<Feed to {self.where}, {self.pending_rows} rows pending>"
