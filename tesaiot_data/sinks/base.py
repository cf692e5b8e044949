"""Sinks: where rows go on their way to disk, as Arrow record batches written over time.

One protocol, `Sink`, for every writer the collector feeds: `add(batch, rejects)` queues a
batch in `schema.ARROW_SCHEMA` (from `RollingWindow.batches_of`), `flush()` writes what is
pending when `flush_due()` says so, and `close()` finishes. Two sinks implement it:

- `Recorder`: a session capture, flushed as crash-safe part files and merged into one file
  when it stops;
- `DatasetWriter`: auto-persist, a hive-style dataset folder that grows by one file per day
  and flush.

Neither sees pandas on the collector's path; `add` also takes a DataFrame, converted once,
as a convenience for code of one's own.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tesaiot_data.errors import RecordingError
from tesaiot_data.files.parquet import (
    check_metadata,
    conform_batch,
    iso_datetime,
    iso_ns,
    merge_files,
    parts_dir,
    rejects_sidecar,
    rejects_table,
    table_from_frame,
    time_range_ns,
    write_table,
)
from tesaiot_data.schema import ARROW_SCHEMA, REJECTS_SCHEMA, used_categories

if TYPE_CHECKING:
    import pandas as pd

    from tesaiot_data.messages import Reject

__all__ = ["DatasetWriter", "Recorder", "Sink"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_S = TypeVar("_S", bound="Sink")
_NS_PER_DAY = 86_400 * 10**9
_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9-]")
_HOST_MAX = 32  # characters of the host name kept in a part file's name


def _writer_tag() -> str:
    """`<host>-<pid>` of this process, safe in a file name: the short host name only."""
    host = socket.gethostname().split(".", 1)[0]
    host = _HOST_UNSAFE.sub("_", host)[:_HOST_MAX].strip("-") or "host"
    return f"{host}-{os.getpid()}"


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


class Recorder(Sink):
    """Session capture: every row from now until stop(), not limited by any window.

    `add` only queues the batch; `flush`, called from a housekeeping thread, writes what is
    pending as a new part file in `<path>.parts/`; `stop` (or `close`) merges the parts into
    the one file at `path` (and the rejects into `<stem>.rejects.parquet` beside it) and
    removes the parts folder. If the process dies, `load_recording(path)` still reads every
    flushed part. Every row is thus written twice: once in a part, once in the merge.

    The parts folder is made here, so two recorders on one path, in one process or two,
    cannot both write `part-000001`: the second one fails at once.

    Failures are counted, never hidden: `rows_on_disk` is what reached disk, `error` the
    last failure, a failed `flush` raises and keeps its rows for the next one, and a failed
    `stop` raises `RecordingError` with the counts.

    Args:
        path: The recording's final Parquet file.
        flush_every: Seconds between flushes that `flush_due` asks for.
        metadata: Extra string key-value pairs stored in every file of the recording.

    Raises:
        FileExistsError: `<path>.parts` already exists (an unfinished earlier recording, or
            another recorder writing to the same path).
        OSError: The parts folder cannot be made (no permission, a file in the way).
        TypeError: A metadata key or value is not a string.
        ValueError: `flush_every` is negative.

    Attributes:
        path: The recording's final Parquet file.
        parts_dir: The folder of part files, `<path>.parts`.
        started_at: When the recorder was made (UTC).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        flush_every: float = 5.0,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(path, flush_every=flush_every, metadata=metadata)
        self.parts_dir = parts_dir(self.path)
        try:
            # Without exist_ok: making the folder is the lock that keeps a second recorder out.
            self.parts_dir.mkdir(parents=True)
        except FileExistsError as exc:
            raise FileExistsError(
                f"{self.parts_dir} already exists: another recorder is writing to {self.path}, "
                "or an earlier recording to it did not finish (hint: read it with "
                "load_recording() and delete the folder, or record to another path)"
            ) from exc
        if self.path.exists():
            logger.warning("%s exists and will be replaced when the recording stops", self.path)
        self.started_at = datetime.now(timezone.utc)
        self._stop_error: RecordingError | None = None
        self._merged = False  # the final file is written
        self._stopped = False
        self._parts: list[tuple[Path, int]] = []  # each part file and its rows
        self._reject_parts: list[Path] = []
        self._first_ns: int | None = None
        self._last_ns: int | None = None

    @property
    def rows_on_disk(self) -> int:
        """Rows that reached disk: in part files so far, in the final file once stopped.

        After a failed `stop`, the rows in the part files that are still there.
        """
        return self._rows_on_disk

    @property
    def stopped(self) -> bool:
        """Whether `stop` has run; it may have failed, see `error`. No rows are taken after."""
        return self._stopped

    def flush(self) -> Path | None:
        """Write the pending rows as a new part file and the pending rejects as a rejects part.

        Rows are written as `<path>.parts/part-NNNNNN.parquet`, rejects as
        `<path>.parts/rejects-NNNNNN.parquet`, each atomically. If writing fails, the rows
        stay pending for the next try, `error` is set and the error is raised; a later
        flush that succeeds sets `error` back to None. After `stop`, it does nothing.

        Returns:
            The new part file, or None when no rows were pending.

        Raises:
            OSError: The part could not be written (disk full, parts folder removed, no
                permission); the rows are still pending.
        """
        with self._write_lock:
            if self._stopped:
                return None
            return self._tracked(self._write_pending)

    def stop(self) -> Path:
        """Flush, merge all parts into the file at `path` and remove the parts folder.

        The parts are streamed into the final file a few at a time, never all in memory. Its
        metadata has `tesaiot.start`/`tesaiot.end` (first and last `received_at`, or the
        recording's start and stop times when there are no rows), `tesaiot.rows`,
        `tesaiot.rejects` and the caller's metadata. Rejects, when any, go to
        `<stem>.rejects.parquet` beside it. Calling `stop` again returns the same path, or
        raises the same error when it failed.

        If the last flush or the merge fails, the recorder is stopped all the same (later
        rows are dropped), the part files that reached disk stay in `<path>.parts`, where
        `load_recording` reads them, and `RecordingError` says how many rows reached disk
        and how many were lost.

        Returns:
            The recording's path.

        Raises:
            RecordingError: The recording could not be finished (disk full, folder removed,
                no permission); its `rows_on_disk` and `rows_lost` count the damage.
        """
        with self._write_lock:
            if self._stop_error is not None:
                raise self._stop_error
            if self._stopped:
                return self.path
            with self._lock:
                self._closed = True
            self._stopped = True
            try:
                self._finish()
            except (OSError, pa.ArrowException) as exc:
                self._stop_error = self._failure(exc)
                self._error = self._stop_error
                raise self._stop_error from exc
            except BaseException as exc:  # Ctrl-C or a bug: raised as it is, but remembered
                self._stop_error = self._failure(exc)
                self._error = self._stop_error
                raise
            self._error = None
            logger.info(
                "recorded %d rows and %d rejects to %s", self._rows, self._rejects, self.path
            )
            return self.path

    def close(self) -> Path:
        """Stop the recording: the same as `stop`.

        Returns:
            The recording's path.

        Raises:
            RecordingError: The recording could not be finished; see `stop`.
        """
        return self.stop()

    def __repr__(self) -> str:
        state = "failed" if self._stop_error else "stopped" if self._stopped else "recording"
        return f"Recorder({str(self.path)!r}, rows={self._rows}, {state})"

    def _finish(self) -> None:
        self._write_pending()
        stopped_at = datetime.now(timezone.utc)
        meta = dict(self._metadata)
        meta["rows"] = str(self._rows)
        meta["rejects"] = str(self._rejects)
        if self._first_ns is not None and self._last_ns is not None:
            meta["start"], meta["end"] = iso_ns(self._first_ns), iso_ns(self._last_ns)
        else:
            meta["start"], meta["end"] = iso_datetime(self.started_at), iso_datetime(stopped_at)
        parts = [part for part, _ in self._parts]
        merge_files(parts, self.path, schema=ARROW_SCHEMA, metadata=meta)
        self._merged = True
        self._rows_on_disk = self._rows
        sidecar = rejects_sidecar(self.path)
        if self._reject_parts:
            reject_meta = {**self._metadata, "rows": str(self._rejects)}
            merge_files(self._reject_parts, sidecar, schema=REJECTS_SCHEMA, metadata=reject_meta)
        elif sidecar.exists():
            logger.info("removing %s, the rejects of an earlier recording", sidecar)
            sidecar.unlink()
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    def _failure(self, cause: BaseException) -> RecordingError:
        hint = "free disk space, or check that the folder exists and is writable"
        if self._merged:
            where = f"all {self._rows:,} rows are in the file, the rejects in {self.parts_dir}"
        else:  # count what is still there: someone may have removed the parts folder
            self._rows_on_disk = sum(rows for part, rows in self._parts if part.is_file())
            lost = self._rows - self._rows_on_disk
            where = f"{self._rows_on_disk:,} rows reached disk, {lost:,} rows were lost"
            if self._rows_on_disk:
                hint += f"; read the rows on disk with load_recording({str(self.parts_dir)!r})"
        return RecordingError(
            f"recording to {self.path} failed: {cause}; {where}",
            hint=hint,
            path=str(self.path),
            rows_on_disk=self._rows_on_disk,
            rows_lost=self._rows - self._rows_on_disk,
        )

    def _write_pending(self) -> Path | None:
        batches, rejects = self._take()
        part = None
        try:
            if batches:
                part = self._write_rows(batches)
        except BaseException:
            self._give_back(batches, rejects)
            raise
        try:
            if rejects:
                self._write_rejects(rejects)
        except BaseException:
            self._give_back([], rejects)
            raise
        return part

    def _write_rows(self, batches: list[pa.RecordBatch]) -> Path:
        table = pa.Table.from_batches(batches).unify_dictionaries()
        path = self.parts_dir / f"part-{len(self._parts) + 1:06d}.parquet"
        # No parents made: a parts folder someone removed must fail the flush, not start
        # a second set of parts that the merge would mix with missing ones.
        write_table(table, path, metadata=self._metadata, make_parents=False)
        low, high = time_range_ns(table)
        self._first_ns = low if self._first_ns is None else min(self._first_ns, low)
        self._last_ns = high if self._last_ns is None else max(self._last_ns, high)
        self._parts.append((path, table.num_rows))
        self._rows_on_disk += table.num_rows
        logger.debug("flushed %d rows to %s", table.num_rows, path)
        return path

    def _write_rejects(self, rejects: list[Reject]) -> None:
        path = self.parts_dir / f"rejects-{len(self._reject_parts) + 1:06d}.parquet"
        table = rejects_table(rejects)
        write_table(table, path, metadata=self._metadata, time_column=None, make_parents=False)
        self._reject_parts.append(path)


class DatasetWriter(Sink):
    """Auto-persist: a hive-style dataset folder that holds every row exactly once.

    Each `flush` writes the rows added since the last one as new files
    `root/date=YYYY-MM-DD/part-<YYYYmmddTHHMMSSffffff>-<host>-<pid>-<8 hex>.parquet`, split
    by the UTC date of `received_at`. The names sort by flush time (UTC, to the
    microsecond) first; the short host name (its first 32 letters, digits and `-`, the
    rest as `_`), the process id and a random suffix make them unique, so several writers
    (processes, or hosts sharing a folder) append to one dataset without coordination.
    Read it back with `load_recording(root)` or
    `pyarrow.dataset.dataset(root, partitioning="hive")`. A dataset holds telemetry only:
    rejected messages given to `add` are not kept.

    Args:
        root: The dataset folder; created when missing, appended to when it exists.
        flush_every: Seconds between flushes that `flush_due` asks for.
        metadata: Extra string key-value pairs stored in every file.

    Raises:
        TypeError: A metadata key or value is not a string.
        ValueError: `flush_every` is negative.

    Attributes:
        root: The dataset folder (the same as `path`).
    """

    keeps_rejects: ClassVar[bool] = False

    def __init__(
        self,
        root: str | Path,
        *,
        flush_every: float = 60.0,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(root, flush_every=flush_every, metadata=metadata)
        self.root = self.path
        self._last_stamp = ""
        self._tag = _writer_tag()

    @property
    def rows_written(self) -> int:
        """Rows written to the dataset so far (the same as `rows_on_disk`)."""
        return self._rows_on_disk

    def flush(self) -> list[Path]:
        """Write the rows pending since the last flush, one new file per UTC date.

        If writing one date's file fails, its rows (and those of the dates not yet written)
        stay pending for the next try, so no row is written twice or lost; `error` is set and
        the error is raised. A later flush that succeeds sets `error` back to None.

        Returns:
            The files written, in date order; empty when nothing was pending.

        Raises:
            OSError: A file could not be written (disk full, no permission); the rows not
                written are still pending.
        """
        with self._write_lock:
            return self._tracked(self._write_pending)

    def close(self) -> Path:
        """Write the pending rows; rows added later are dropped.

        Calling it again after a failure tries the pending rows again.

        Returns:
            The dataset folder.

        Raises:
            RecordingError: The pending rows could not be written (disk full, no
                permission); they stay pending, and it counts the rows on disk and lost.
        """
        with self._write_lock:
            with self._lock:
                self._closed = True
            try:
                self._tracked(self._write_pending)
            except Exception as exc:
                lost = self._rows - self._rows_on_disk
                raise RecordingError(
                    f"could not finish the dataset {self.path}: {exc}; "
                    f"{self._rows_on_disk:,} rows reached disk, {lost:,} rows were not written",
                    hint="free disk space or check the folder; load_recording() reads what "
                    "reached disk",
                    path=str(self.path),
                    rows_on_disk=self._rows_on_disk,
                    rows_lost=lost,
                ) from exc
        return self.path

    def __repr__(self) -> str:
        return f"DatasetWriter({str(self.path)!r}, rows_written={self._rows_on_disk})"

    def _write_pending(self) -> list[Path]:
        batches, _ = self._take()
        if not batches:
            return []
        try:
            by_day = _split_by_day(pa.Table.from_batches(batches).unify_dictionaries())
        except BaseException:
            self._give_back(batches, ())
            raise
        stamp = self._next_stamp()
        written: list[Path] = []
        for index, (day, table) in enumerate(by_day):
            name = f"part-{stamp}-{self._tag}-{secrets.token_hex(4)}.parquet"
            path = self.path / f"date={day}" / name
            try:
                write_table(table, path, metadata=self._metadata)
            except BaseException:
                self._give_back([b for _, t in by_day[index:] for b in t.to_batches()], ())
                raise
            self._rows_on_disk += table.num_rows
            written.append(path)
        logger.debug("flushed %d files to %s", len(written), self.path)
        return written

    def _next_stamp(self) -> str:
        # Names sort in flush order even if two flushes share a microsecond or the clock steps.
        now = datetime.now(timezone.utc)
        stamp = now.strftime("%Y%m%dT%H%M%S%f")
        while stamp <= self._last_stamp:
            now += timedelta(microseconds=1)
            stamp = now.strftime("%Y%m%dT%H%M%S%f")
        self._last_stamp = stamp
        return stamp


def _split_by_day(table: pa.Table) -> list[tuple[str, pa.Table]]:
    days = table.column("received_at").cast(pa.int64()).to_numpy() // _NS_PER_DAY
    unique = np.unique(days)
    out = []
    for day in unique:
        label = (np.datetime64(0, "D") + day).astype(str)
        part = table if len(unique) == 1 else _compact_dictionaries(table.filter(days == day))
        out.append((label, part))
    return out


def _compact_dictionaries(table: pa.Table) -> pa.Table:
    # One day's rows of a table that held several: only the strings that day uses.
    columns = []
    for column in table.columns:
        if pa.types.is_dictionary(column.type):
            array = column.combine_chunks()
            codes = pc.fill_null(array.indices, -1).to_numpy()
            compact = used_categories(codes, len(array.dictionary))
            if compact is not None:
                used, codes = compact
                indices = pa.array(codes, mask=codes < 0, type=column.type.index_type)
                array = pa.DictionaryArray.from_arrays(indices, array.dictionary.take(used))
            columns.append(array)
        else:
            columns.append(column)
    return pa.Table.from_arrays(columns, schema=table.schema)
