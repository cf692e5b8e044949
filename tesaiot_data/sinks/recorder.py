"""The crash-safe recording: every row from start to stop, as part files merged into one file.

`Recorder` writes each flush as a part file in `<path>.parts/` and, when it stops, merges the
parts into the one file at `path` (the rejects into `<stem>.rejects.parquet`) and removes the
folder. If the process dies, `load_recording(path)` reads every flushed part.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from tesaiot_data.errors import RecordingError, disk_error
from tesaiot_data.files.layout import (
    parts_dir,
    recording_part_name,
    rejects_part_name,
    rejects_sidecar,
)
from tesaiot_data.files.metadata import iso_datetime, iso_ns, time_range_ns
from tesaiot_data.files.parquet import merge_files, rejects_table, write_table
from tesaiot_data.files.store import Location, StorePath, remove_tree
from tesaiot_data.schema import ARROW_SCHEMA, REJECTS_SCHEMA
from tesaiot_data.sinks.base import DEFAULT_MAX_PENDING_ROWS, Sink

if TYPE_CHECKING:
    from tesaiot_data.messages import Reject

__all__ = ["Recorder"]

logger = logging.getLogger(__name__)


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
    `stop` raises `RecordingError` with the counts. While the parts folder cannot be
    written, at most `max_pending_rows` rows (and as many rejects) wait in memory; beyond,
    the oldest are dropped, counted in `rows_dropped` and logged (see `Sink`), and the
    final file holds the rows that were kept (its `tesaiot.rows` counts them).

    On an object store (`s3://bucket/session.parquet`) each part and the final file are
    written as whole objects (see `tesaiot_data.files.store`); the check that keeps a
    second recorder off the parts is not atomic there (a store has no exclusive create).

    Args:
        path: The recording's final Parquet file, or its URL on an object store.
        flush_every: Seconds between flushes that `flush_due` asks for.
        metadata: Extra string key-value pairs stored in every file of the recording.
        max_pending_rows: Rows kept in memory at most while no part can be written;
            default 5,000,000 (about 300 MB).

    Raises:
        FileExistsError: `<path>.parts` already exists (an unfinished earlier recording, or
            another recorder writing to the same path).
        OSError: The parts folder cannot be made (no permission, a file in the way).
        TypeError: A metadata key or value is not a string, or `max_pending_rows` is not
            an int.
        ValueError: `flush_every` is negative, or `max_pending_rows` is below 1.

    Attributes:
        path: The recording's final Parquet file.
        parts_dir: The folder of part files, `<path>.parts`.
        started_at: When the recorder was made (UTC).
    """

    def __init__(
        self,
        path: str | Path | StorePath,
        *,
        flush_every: float = 5.0,
        metadata: Mapping[str, str] | None = None,
        max_pending_rows: int = DEFAULT_MAX_PENDING_ROWS,
    ) -> None:
        super().__init__(
            path, flush_every=flush_every, metadata=metadata, max_pending_rows=max_pending_rows
        )
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
        self._parts: list[tuple[Location, int]] = []  # each part file and its rows
        self._reject_parts: list[Location] = []
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

    def flush(self) -> Location | None:
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

    def stop(self) -> Location:
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
            self._say_dropped()
            logger.info("recorded %d rows to %s", self._rows_on_disk, self.path)
            return self.path

    def close(self) -> Location:
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
        kept = self._rows - self._rows_dropped  # dropped ones never reached a part
        meta["rows"] = str(kept)
        meta["rejects"] = str(self._rejects - self._rejects_dropped)
        if self._first_ns is not None and self._last_ns is not None:
            meta["start"], meta["end"] = iso_ns(self._first_ns), iso_ns(self._last_ns)
        else:
            meta["start"], meta["end"] = iso_datetime(self.started_at), iso_datetime(stopped_at)
        parts = [part for part, _ in self._parts]
        merge_files(parts, self.path, schema=ARROW_SCHEMA, metadata=meta)
        self._merged = True
        self._rows_on_disk = kept
        sidecar = rejects_sidecar(self.path)
        if self._reject_parts:
            reject_meta = {**self._metadata, "rows": meta["rejects"]}
            merge_files(self._reject_parts, sidecar, schema=REJECTS_SCHEMA, metadata=reject_meta)
        elif sidecar.exists():
            logger.info("removing %s, the rejects of an earlier recording", sidecar)
            sidecar.unlink()
        remove_tree(self.parts_dir)

    def _failure(self, cause: BaseException) -> RecordingError:
        then = None
        if self._merged:
            kept = self._rows - self._rows_dropped
            where = f"all {kept:,} rows kept are in the file, the rejects in {self.parts_dir}"
        else:  # count what is still there: someone may have removed the parts folder
            self._rows_on_disk = sum(rows for part, rows in self._parts if part.is_file())
            lost = self._rows - self._rows_on_disk
            where = f"{self._rows_on_disk:,} rows reached disk, {lost:,} rows were lost"
            if self._rows_on_disk:
                then = f"read the rows on disk with load_recording({str(self.parts_dir)!r})"
        return disk_error(
            f"recording to {self.path} failed: {cause}; {where}",
            path=self.path,
            then=then,
            rows_on_disk=self._rows_on_disk,
            rows_lost=self._rows - self._rows_on_disk,
            cause=cause,
        )

    def _write_pending(self) -> Location | None:
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

    def _write_rows(self, batches: list[pa.RecordBatch]) -> Location:
        table = pa.Table.from_batches(batches).unify_dictionaries()
        path = self.parts_dir / recording_part_name(len(self._parts) + 1)
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
        path = self.parts_dir / rejects_part_name(len(self._reject_parts) + 1)
        table = rejects_table(rejects)
        write_table(table, path, metadata=self._metadata, time_column=None, make_parents=False)
        self._reject_parts.append(path)
