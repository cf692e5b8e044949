"""The multi-writer dataset: a hive-style folder that grows by one file per UTC date and flush.

`DatasetWriter` is the collector's auto-persist (`dataset=`) and `tesaiot-data record
--dataset`: each flush adds new, uniquely named files under `date=YYYY-MM-DD/`, so several
processes (or hosts sharing a folder) append to one dataset without coordination, and
`files.compaction` later merges each closed day into one file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tesaiot_data.errors import StorageError, disk_error
from tesaiot_data.files.layout import dataset_part_name, partition_name, utc_stamp, writer_tag
from tesaiot_data.files.parquet import check_writable, write_table
from tesaiot_data.files.store import Location, StorePath, location
from tesaiot_data.schema import epoch_ns, used_categories
from tesaiot_data.sinks.base import DEFAULT_MAX_PENDING_ROWS, Sink

__all__ = ["DatasetWriter", "prepare_dataset_folder"]

logger = logging.getLogger(__name__)

_NS_PER_DAY = 86_400 * 10**9


def prepare_dataset_folder(root: str | Path | StorePath) -> None:
    """Create a dataset folder if missing and prove that files can be written in it.

    On an object store, a probe object is written and deleted under the prefix.

    Args:
        root: The dataset folder, or a store's URL such as `s3://bucket/telemetry`.

    Raises:
        RecordingError: It cannot be made or written to (a read-only mount, no right, a
            path through a file); the message names the folder and the cause.
        StorageError: A store's bucket is missing, its credentials are refused or its
            endpoint does not answer; the message names the URL.
    """
    root = location(root)
    try:
        check_writable(root)
    except StorageError:
        raise
    except OSError as exc:
        raise disk_error(f"cannot write to the dataset folder {root}: {exc}", path=root) from exc


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

    A folder that cannot be written when the writer is made is an error at once. One that
    fails later (the disk fills, the folder is made read-only or removed) keeps the rows in
    memory, retried at every flush, up to `max_pending_rows`; beyond it the oldest rows are
    dropped, counted in `rows_dropped` and logged (see `Sink`).

    Args:
        root: The dataset folder; created when missing, appended to when it exists. Or
            a prefix on an object store (`s3://bucket/telemetry`), where each file is
            written as one whole object: a killed writer leaves none half-written.
        flush_every: Seconds between flushes that `flush_due` asks for.
        metadata: Extra string key-value pairs stored in every file.
        max_pending_rows: Rows kept in memory at most while the folder cannot be written;
            default 5,000,000 (about 300 MB).

    Raises:
        RecordingError: `root` cannot be made or written to (a read-only mount, no right,
            a path through a file), at once rather than at the first flush.
        TypeError: A metadata key or value is not a string, or `max_pending_rows` is not
            an int.
        ValueError: `flush_every` is negative, or `max_pending_rows` is below 1.

    Attributes:
        root: The dataset folder (the same as `path`).
    """

    keeps_rejects: ClassVar[bool] = False

    def __init__(
        self,
        root: str | Path | StorePath,
        *,
        flush_every: float = 60.0,
        metadata: Mapping[str, str] | None = None,
        max_pending_rows: int = DEFAULT_MAX_PENDING_ROWS,
    ) -> None:
        super().__init__(
            root, flush_every=flush_every, metadata=metadata, max_pending_rows=max_pending_rows
        )
        self.root = self.path
        prepare_dataset_folder(self.root)  # now, not at the first flush a minute from now
        self._last_stamp = ""
        self._tag = writer_tag()

    @property
    def rows_written(self) -> int:
        """Rows written to the dataset so far (the same as `rows_on_disk`)."""
        return self._rows_on_disk

    def flush(self) -> list[Location]:
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

    def close(self) -> Location:
        """Write the pending rows; rows added later are dropped.

        Calling it again after a failure tries the pending rows again.

        Returns:
            The dataset folder.

        Raises:
            RecordingError: The pending rows could not be written (disk full, no
                permission); they stay pending, and it counts the rows on disk and lost
                (the rows dropped beyond `max_pending_rows` among them).
        """
        with self._write_lock:
            with self._lock:
                self._closed = True
            try:
                self._tracked(self._write_pending)
            except Exception as exc:
                lost = self._rows - self._rows_on_disk
                dropped = (
                    f" ({self._rows_dropped:,} of them dropped from memory earlier)"
                    if self._rows_dropped
                    else ""
                )
                raise disk_error(
                    f"could not finish the dataset {self.path}: {exc}; "
                    f"{self._rows_on_disk:,} rows reached disk, {lost:,} rows were not "
                    f"written{dropped}",
                    path=self.path,
                    then="load_recording() reads what reached disk",
                    rows_on_disk=self._rows_on_disk,
                    rows_lost=lost,
                    cause=exc,
                ) from exc
        return self.path

    def __repr__(self) -> str:
        dropped = f", rows_dropped={self._rows_dropped}" if self._rows_dropped else ""
        return f"DatasetWriter({str(self.path)!r}, rows_written={self._rows_on_disk}{dropped})"

    def _write_pending(self) -> list[Location]:
        batches, _ = self._take()
        if not batches:
            return []
        try:
            by_day = _split_by_day(pa.Table.from_batches(batches).unify_dictionaries())
        except BaseException:
            self._give_back(batches, ())
            raise
        stamp = self._next_stamp()
        written: list[Location] = []
        for index, (day, table) in enumerate(by_day):
            path = self.path / partition_name(day) / dataset_part_name(stamp, self._tag)
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
        stamp = utc_stamp(now)
        while stamp <= self._last_stamp:
            now += timedelta(microseconds=1)
            stamp = utc_stamp(now)
        self._last_stamp = stamp
        return stamp


def _split_by_day(table: pa.Table) -> list[tuple[str, pa.Table]]:
    days = epoch_ns(table.column("received_at")) // _NS_PER_DAY
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
