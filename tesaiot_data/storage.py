"""Parquet files of telemetry: single files, session recordings and a hive-style dataset.

Every file is written under a hidden temporary name in its final folder, fsynced and then
`os.replace`d into place, so a reader sees a whole file or none. Temporary names start with a
dot and end in `.tmp`; the readers only pick up `part-*.parquet` (and `rejects-*.parquet`),
so leftovers of a crash are ignored.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tesaiot_data.errors import NotARecordingError, RecordingError
from tesaiot_data.schema import ARROW_SCHEMA, CATEGORY_COLUMNS, COLUMNS, empty_frame, to_canonical

if TYPE_CHECKING:
    from tesaiot_data.messages import Reject

__all__ = [
    "PARQUET_COMPRESSION",
    "REJECTS_SCHEMA",
    "DatasetWriter",
    "Recorder",
    "load_recording",
    "load_rejects",
    "read_metadata",
    "write_frame",
    "write_rejects",
]

logger = logging.getLogger(__name__)

PARQUET_COMPRESSION = "zstd"

#: The schema of a recording's rejects sidecar (`<stem>.rejects.parquet`).
REJECTS_SCHEMA = pa.schema(
    [
        pa.field("received_at", pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field("topic", pa.string(), nullable=False),
        pa.field("reason", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("payload", pa.binary()),
        pa.field("payload_size", pa.int64(), nullable=False),
    ]
)

_PREFIX = "tesaiot."
# Computed from the data when a file is written; a caller's value for them is ignored.
_RESERVED_KEYS = frozenset({"rows", "start", "end", "version"})
# Small enough for row-group statistics to skip most of a file on a time filter.
_ROW_GROUP_ROWS = 128 * 1024
_PART_GLOB = "part-*.parquet"
_REJECTS_PART_GLOB = "rejects-*.parquet"
_PARTS_SUFFIX = ".parts"
_REJECTS_SUFFIX = ".rejects.parquet"
_NS_PER_DAY = 86_400 * 10**9
# Every data column: a redelivery repeats all of them; only received_at differs.
_DEDUPE_COLUMNS = [name for name in COLUMNS if name != "received_at"]
# Without these a file is not telemetry (value_text may stand in for value).
_REQUIRED_COLUMNS = tuple(field.name for field in ARROW_SCHEMA if not field.nullable)
_VALUE_COLUMNS = ("value", "value_text")
_WHAT_A_RECORDING_IS = (
    "a recording is a Parquet file written by tesaiot-data (write_frame, Recorder, "
    "DatasetWriter), an unfinished recording's <file>.parts folder or a dataset folder, "
    f"with the columns {', '.join(COLUMNS)}"
)
_USE_LOAD_REJECTS = (
    "use load_rejects() for the rejected messages, and load_recording() on the recording beside it"
)

try:
    _VERSION = version("tesaiot-data")
except PackageNotFoundError:  # running from a source tree that was never installed
    _VERSION = "0.0.0"


# --- writing -------------------------------------------------------------------------------


def write_frame(
    frame: pd.DataFrame, path: str | Path, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a telemetry frame to one Parquet file, atomically.

    The file has `ARROW_SCHEMA`, zstd compression and dictionary-encoded strings. Its
    key-value metadata holds `tesaiot.rows`, `tesaiot.start` and `tesaiot.end` (ISO UTC of the
    first and last `received_at`; absent when there are no rows), `tesaiot.version` and the
    caller's `metadata`, each key prefixed with `tesaiot.` unless it already is.

    Args:
        frame: Rows in the canonical columns (other dtypes are converted when they can be).
        path: The file to write; missing parent folders are created, an old file is replaced.
        metadata: Extra string key-value pairs to store in the file.

    Returns:
        The path written.

    Raises:
        TypeError: A metadata key or value is not a string.
        ValueError: The frame cannot be converted to the canonical schema (for example a
            column of strings mixed with numbers); the message names the column.
        OSError: The file could not be written; an old file at `path` is left as it was.
    """
    caller = _check_metadata(metadata)
    table = _frame_to_table(frame)
    return _write_table(table, Path(path), _file_metadata(table, caller))


def write_rejects(
    rejects: Sequence[Reject], path: str | Path, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write rejected messages to a Parquet sidecar file, atomically.

    Columns: `received_at` (UTC), `topic`, `reason` (dictionary), `detail`, `payload` (the
    already truncated bytes) and `payload_size` (the size of the whole payload).

    Args:
        rejects: `tesaiot_data.parsing.Reject` objects.
        path: The file to write; missing parent folders are created.
        metadata: Extra string key-value pairs to store in the file.

    Returns:
        The path written.

    Raises:
        TypeError: A metadata key or value is not a string.
        OSError: The file could not be written.
    """
    caller = _check_metadata(metadata)
    table = _rejects_to_table(rejects)
    return _write_table(table, Path(path), _file_metadata(table, caller, time_column=None))


class Recorder:
    """Session capture: every row from now until stop(), not limited by any window.

    `add` is called on the ingest thread and only converts the batch to Arrow; `flush`,
    called from a housekeeping thread, writes what is pending as a new part file in
    `<path>.parts/`; `stop` merges the parts into the one file at `path` (and the rejects
    into `<stem>.rejects.parquet` beside it) and removes the parts folder. If the process
    dies, `load_recording(path)` still reads every flushed part.

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
        if not flush_every >= 0:
            raise ValueError(f"flush_every={flush_every!r} must be >= 0 seconds")
        self._metadata = _check_metadata(metadata)
        self.path = Path(path)
        self.parts_dir = _parts_dir(self.path)
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
        self._flush_every = float(flush_every)
        self._lock = threading.Lock()  # guards the pending lists and counters
        self._write_lock = threading.Lock()  # one writer at a time, so parts stay in order
        self._pending: list[pa.Table] = []
        self._pending_rejects: list[Reject] = []
        self._last_flush = time.monotonic()
        self._rows = 0
        self._rejects = 0
        self._rows_on_disk = 0
        self._error: BaseException | None = None
        self._stop_error: RecordingError | None = None
        self._merged = False  # the final file is written
        self._closed = False
        self._stopped = False
        self._parts: list[tuple[Path, int]] = []  # each part file and its rows
        self._reject_parts: list[Path] = []
        self._first_ns: int | None = None
        self._last_ns: int | None = None

    @property
    def rows(self) -> int:
        """Rows added so far."""
        return self._rows

    @property
    def rejects(self) -> int:
        """Rejected messages added so far."""
        return self._rejects

    @property
    def rows_on_disk(self) -> int:
        """Rows that reached disk: in part files so far, in the final file once stopped.

        After a failed `stop`, the rows in the part files that are still there.
        """
        return self._rows_on_disk

    @property
    def error(self) -> BaseException | None:
        """The last failure of `flush` or `stop`; None again once a later flush succeeds."""
        return self._error

    @property
    def stopped(self) -> bool:
        """Whether `stop` has run; it may have failed, see `error`. No rows are taken after."""
        return self._stopped

    def add(self, frame: pd.DataFrame, rejects: Sequence[Reject] = ()) -> None:
        """Queue a batch of rows (and rejected messages) for the next flush. Thread-safe.

        Once `stop` has begun, batches are dropped (they arrived after the session ended):
        an ingest thread that still holds the recorder must not fail because of a race.

        Args:
            frame: A batch in the canonical columns; may be empty.
            rejects: The batch's rejected messages.

        Raises:
            ValueError: The frame cannot be converted to the canonical schema.
        """
        table = _frame_to_table(frame) if len(frame) else None
        with self._lock:
            if self._closed:
                logger.debug("%s is stopped; dropped a batch of %d rows", self.path, len(frame))
                return
            if table is not None:
                self._pending.append(table)
                self._rows += table.num_rows
            if rejects:
                self._pending_rejects.extend(rejects)
                self._rejects += len(rejects)

    def flush_due(self) -> bool:
        """Whether `flush_every` seconds passed since the last flush and anything is pending.

        Returns:
            True when the housekeeping thread should call `flush`.
        """
        with self._lock:
            if self._stopped:
                return False
            pending = bool(self._pending or self._pending_rejects)
            return pending and time.monotonic() - self._last_flush >= self._flush_every

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
            try:
                part = self._flush_locked()
            except Exception as exc:
                self._error = exc
                raise
            self._error = None
            return part

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

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "failed" if self._stop_error else "stopped" if self._stopped else "recording"
        return f"Recorder({str(self.path)!r}, rows={self._rows}, {state})"

    def _finish(self) -> None:
        self._flush_locked()
        stopped_at = datetime.now(timezone.utc)
        meta = dict(self._metadata)
        meta["rows"] = str(self._rows)
        meta["rejects"] = str(self._rejects)
        if self._first_ns is not None and self._last_ns is not None:
            meta["start"], meta["end"] = _iso(self._first_ns), _iso(self._last_ns)
        else:
            meta["start"], meta["end"] = _iso_dt(self.started_at), _iso_dt(stopped_at)
        meta["version"] = _VERSION
        parts = [part for part, _ in self._parts]
        _merge_files(parts, self.path, ARROW_SCHEMA, _prefixed(meta))
        self._merged = True
        self._rows_on_disk = self._rows
        sidecar = _sidecar(self.path)
        if self._reject_parts:
            reject_meta = {**self._metadata, "rows": str(self._rejects), "version": _VERSION}
            _merge_files(self._reject_parts, sidecar, REJECTS_SCHEMA, _prefixed(reject_meta))
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

    def _flush_locked(self) -> Path | None:
        with self._lock:
            tables, self._pending = self._pending, []
            rejects, self._pending_rejects = self._pending_rejects, []
            self._last_flush = time.monotonic()
        part = None
        try:
            if tables:
                part = self._write_rows(tables)
        except BaseException:
            with self._lock:
                self._pending[:0] = tables
                self._pending_rejects[:0] = rejects
            raise
        try:
            if rejects:
                self._write_rejects(rejects)
        except BaseException:
            with self._lock:
                self._pending_rejects[:0] = rejects
            raise
        return part

    def _write_rows(self, tables: list[pa.Table]) -> Path:
        table = pa.concat_tables(tables).unify_dictionaries()
        path = self.parts_dir / f"part-{len(self._parts) + 1:06d}.parquet"
        # No parents made: a parts folder someone removed must fail the flush, not start
        # a second set of parts that the merge would mix with missing ones.
        _write_table(table, path, _file_metadata(table, self._metadata), make_parents=False)
        low, high = _min_max_ns(table)
        self._first_ns = low if self._first_ns is None else min(self._first_ns, low)
        self._last_ns = high if self._last_ns is None else max(self._last_ns, high)
        self._parts.append((path, table.num_rows))
        self._rows_on_disk += table.num_rows
        logger.debug("flushed %d rows to %s", table.num_rows, path)
        return path

    def _write_rejects(self, rejects: list[Reject]) -> None:
        path = self.parts_dir / f"rejects-{len(self._reject_parts) + 1:06d}.parquet"
        table = _rejects_to_table(rejects)
        meta = _file_metadata(table, self._metadata, time_column=None)
        _write_table(table, path, meta, make_parents=False)
        self._reject_parts.append(path)


class DatasetWriter:
    """Auto-persist: a hive-style dataset folder that holds every row exactly once.

    Each `flush` writes the rows added since the last one as new files
    `root/date=YYYY-MM-DD/part-<YYYYmmddTHHMMSSffffff>-<8 hex>.parquet`, split by the UTC
    date of `received_at`. Read it back with `load_recording(root)` or
    `pyarrow.dataset.dataset(root, partitioning="hive")`.

    Args:
        root: The dataset folder; created when missing, appended to when it exists.
        metadata: Extra string key-value pairs stored in every file.

    Raises:
        TypeError: A metadata key or value is not a string.

    Attributes:
        root: The dataset folder.
    """

    def __init__(self, root: str | Path, *, metadata: Mapping[str, str] | None = None) -> None:
        self.root = Path(root)
        self._metadata = _check_metadata(metadata)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: list[pa.Table] = []
        self._rows_written = 0
        self._error: BaseException | None = None
        self._last_stamp = ""

    @property
    def rows_written(self) -> int:
        """Rows written to the dataset so far (the same as `rows_on_disk`)."""
        return self._rows_written

    @property
    def rows_on_disk(self) -> int:
        """Rows that reached disk in the dataset's files so far."""
        return self._rows_written

    @property
    def error(self) -> BaseException | None:
        """The last failure of `flush`; None again once a later flush succeeds."""
        return self._error

    def add(self, frame: pd.DataFrame) -> None:
        """Queue a batch of rows for the next flush. Thread-safe.

        Args:
            frame: A batch in the canonical columns; may be empty.

        Raises:
            ValueError: The frame cannot be converted to the canonical schema.
        """
        if not len(frame):
            return
        table = _frame_to_table(frame)
        with self._lock:
            self._pending.append(table)

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
            try:
                written = self._flush_locked()
            except Exception as exc:
                self._error = exc
                raise
            self._error = None
            return written

    def __repr__(self) -> str:
        return f"DatasetWriter({str(self.root)!r}, rows_written={self._rows_written})"

    def _flush_locked(self) -> list[Path]:
        with self._lock:
            tables, self._pending = self._pending, []
        if not tables:
            return []
        try:
            by_day = _split_by_day(pa.concat_tables(tables).unify_dictionaries())
        except BaseException:
            with self._lock:
                self._pending[:0] = tables
            raise
        stamp = self._next_stamp()
        written: list[Path] = []
        for index, (day, table) in enumerate(by_day):
            name = f"part-{stamp}-{secrets.token_hex(4)}.parquet"
            path = self.root / f"date={day}" / name
            try:
                _write_table(table, path, _file_metadata(table, self._metadata))
            except BaseException:
                with self._lock:
                    self._pending[:0] = [t for _, t in by_day[index:]]
                raise
            self._rows_written += table.num_rows
            written.append(path)
        logger.debug("flushed %d files to %s", len(written), self.root)
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


# --- reading -------------------------------------------------------------------------------


def load_recording(
    path: str | Path,
    *,
    start: Any = None,
    end: Any = None,
    devices: Iterable[str] | None = None,
    metrics: Iterable[str] | None = None,
    dedupe: bool = False,
) -> pd.DataFrame:
    """Read a recording, an unfinished recording or a dataset folder into a canonical frame.

    `path` may be one Parquet file; a `<file>.parts` folder left by a crash, or the `<file>`
    itself when only its parts folder exists (every flushed part is read); or a dataset
    folder of hive partitions `date=YYYY-MM-DD/part-*.parquet` (the partition column is not
    returned). Filters are pushed down to pyarrow, so skipped row groups are never read.

    Args:
        path: Where the recording is.
        start: Keep rows with `timestamp >= start` (str, datetime or Timestamp; naive is UTC).
        end: Keep rows with `timestamp < end`.
        devices: Keep only these device ids (one string is one device).
        metrics: Keep only these metrics (one string is one metric).
        dedupe: Drop exact redeliveries, as MQTT QoS 1 may deliver a message twice: rows
            equal in every data column (timestamp, device_id, sensor_type, metric, value,
            unit and value_text; NaN equals NaN, a missing text equals a missing text), but
            not `received_at`, which differs on a redelivery. The first is kept. Two
            readings of one metric in the same timestamp that differ in anything (two text
            values such as "open" and "closed") are both kept.

    Returns:
        The rows in file order, canonical dtypes and a fresh RangeIndex.

    Raises:
        FileNotFoundError: Nothing is at `path`.
        NotARecordingError: `path`, or a file in its folder, is not a recording: a rejects
            sidecar, not Parquet (a CSV, a half-copied file) or Parquet without the
            telemetry columns.
        ValueError: `start` or `end` is not a time.
    """
    path = Path(path)
    files = _recording_files(path)
    expression = _filter_expression(start=start, end=end, devices=devices, metrics=metrics)
    if not files:
        return empty_frame()
    dataset = _recording_dataset(files)
    try:
        table = dataset.to_table(filter=expression)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        # Columns of the right names but types that do not convert (text in `value`).
        raise NotARecordingError(
            f"{path} cannot be read as a recording: {exc}", hint=_WHAT_A_RECORDING_IS
        ) from exc
    if table.num_rows == 0:
        return empty_frame()
    frame = table.to_pandas(split_blocks=True, self_destruct=True)
    del table
    if not _is_canonical(frame):
        frame = to_canonical(frame)
    if dedupe:
        frame = frame.loc[~frame.duplicated(subset=_DEDUPE_COLUMNS, keep="first")]
    return frame.reset_index(drop=True)


def read_metadata(path: str | Path) -> dict[str, str]:
    """Return the `tesaiot.*` key-value metadata of a recording, keys without the prefix.

    For a folder (an unfinished recording or a dataset) the parts' metadata is combined:
    `rows` is their sum, `start`/`end` the earliest and latest, other keys as in the first.

    Args:
        path: A Parquet file, a recording whose parts folder is left, or a dataset folder.

    Returns:
        The metadata; empty for a file written by another tool.

    Raises:
        FileNotFoundError: Nothing is at `path`.
        NotARecordingError: `path`, or a file in its folder, is not a recording (a rejects
            sidecar, not Parquet, or Parquet without the telemetry columns).
    """
    files = _recording_files(Path(path))
    combined: dict[str, str] = {}
    for file in files:
        meta = _file_key_values(_recording_footer(file))
        if not combined:
            combined = meta
            continue
        if "rows" in meta:
            combined["rows"] = str(int(combined.get("rows", "0")) + int(meta["rows"]))
        if "start" in meta:
            combined["start"] = min(combined.get("start", meta["start"]), meta["start"])
        if "end" in meta:
            combined["end"] = max(combined.get("end", meta["end"]), meta["end"])
    return combined


def load_rejects(path: str | Path) -> pd.DataFrame:
    """Read the rejected messages of a recording.

    Args:
        path: The recording (its `<stem>.rejects.parquet` sidecar is read, or the rejects
            parts of an unfinished recording) or the sidecar itself.

    Returns:
        One row per rejected message, in arrival order; an empty frame with the same columns
        when the recording has none.

    Raises:
        FileNotFoundError: Neither the recording nor its sidecar exists.
        OSError: A rejects file cannot be read.
    """
    path = Path(path)
    if path.name.endswith(_REJECTS_SUFFIX):
        if not path.is_file():
            raise FileNotFoundError(f"no rejects file at {path}")
        files = [path]
    elif path.is_dir() and path.name.endswith(_PARTS_SUFFIX):
        files = _sorted_parts(path.glob(_REJECTS_PART_GLOB))
    elif _sidecar(path).is_file():
        files = [_sidecar(path)]
    elif _parts_dir(path).is_dir():
        files = _sorted_parts(_parts_dir(path).glob(_REJECTS_PART_GLOB))
    elif path.exists():
        files = []
    else:
        raise FileNotFoundError(f"no recording at {path} and no {_sidecar(path).name} beside it")
    if not files:
        return REJECTS_SCHEMA.empty_table().to_pandas()
    dataset = ds.dataset([str(f) for f in files], schema=REJECTS_SCHEMA, format="parquet")
    return dataset.to_table().to_pandas()


# --- helpers -------------------------------------------------------------------------------


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"metadata {key!r}: {value!r} is not str: str (hint: convert values with str())"
            )
        bare = key.removeprefix(_PREFIX)
        if bare in _RESERVED_KEYS:
            logger.warning(
                "metadata key %r is computed when writing; the given value is ignored", key
            )
            continue
        out[bare] = value
    return out


def _prefixed(metadata: Mapping[str, str]) -> dict[str, str]:
    return {f"{_PREFIX}{key}": value for key, value in metadata.items()}


def _file_metadata(
    table: pa.Table, caller: Mapping[str, str], *, time_column: str | None = "received_at"
) -> dict[str, str]:
    meta = dict(caller)
    meta["rows"] = str(table.num_rows)
    if time_column is not None and table.num_rows:
        low, high = _min_max_ns(table, time_column)
        meta["start"], meta["end"] = _iso(low), _iso(high)
    meta["version"] = _VERSION
    return _prefixed(meta)


def _min_max_ns(table: pa.Table, column: str = "received_at") -> tuple[int, int]:
    result = pc.min_max(table.column(column).cast(pa.int64()))
    return result["min"].as_py(), result["max"].as_py()


def _iso(ns: int) -> str:
    # Microseconds, so that datetime.fromisoformat() of Python 3.10 can read it back.
    return pd.Timestamp(ns, tz="UTC").isoformat(timespec="microseconds")


def _iso_dt(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _frame_to_table(frame: pd.DataFrame) -> pa.Table:
    if not _is_canonical(frame, exact_columns=False):
        frame = to_canonical(frame)
    # Column by column from codes and categories: a few times faster than Table.from_pandas,
    # which matters on the ingest thread.
    arrays = []
    for field in ARROW_SCHEMA:
        column = frame[field.name]
        try:
            if isinstance(field.type, pa.DictionaryType):
                array = _used_dictionary(column.array, field.name, field.type.index_type)
            else:
                array = pa.array(column, type=field.type, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            kind = "strings" if isinstance(field.type, pa.DictionaryType) else str(field.type)
            raise ValueError(
                f"column {field.name!r} cannot be stored as {kind}: {exc} (hint: give it one "
                f"type, e.g. frame[{field.name!r}].astype(str) for text)"
            ) from exc
        if not field.nullable and array.null_count:
            raise ValueError(
                f"column {field.name!r} has {array.null_count} missing values; it must have none"
            )
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)


def _used_dictionary(categorical: pd.Categorical, name: str, index_type: pa.DataType) -> pa.Array:
    # Only the categories the rows use: a window's dictionaries are shared and only grow, and
    # a small file must not carry every string the collector ever saw.
    codes = np.asarray(categorical.codes)
    values = pa.array(categorical.categories.array)  # no copy for pandas' Arrow strings
    if not len(values):
        values = pa.array([], type=pa.string())
    elif not (
        pa.types.is_string(values.type)
        or pa.types.is_large_string(values.type)
        or pa.types.is_string_view(values.type)
    ):
        raise ValueError(
            f"column {name!r} holds {values.type} values, not strings (hint: convert it with "
            f"frame[{name!r}].astype(str))"
        )
    compact = _compact_codes(codes, len(values))
    if compact is not None:
        used, codes = compact
        values = values.take(used)
    if values.type != pa.string():
        values = values.cast(pa.string())
    indices = pa.array(codes, mask=codes < 0, type=index_type)
    return pa.DictionaryArray.from_arrays(indices, values)


def _compact_codes(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The used entries of a dictionary of `size` and the codes remapped to them.

    None when every entry is used. Negative codes (missing values) stay -1.
    """
    if size <= codes.size:  # a count per entry is cheap: O(rows + size), no sort
        shifted = codes.astype(np.intp) + 1  # missing values (-1) count in slot 0
        used_mask = np.bincount(shifted, minlength=size + 1)[1:] > 0
        if used_mask.all():
            return None
        remap = np.concatenate(([-1], np.cumsum(used_mask) - 1))
        return np.flatnonzero(used_mask), remap[shifted]
    # A dictionary larger than the rows: sort the few codes instead of touching every entry.
    used, inverse = np.unique(codes, return_inverse=True)
    inverse = inverse.reshape(-1)
    if used.size and used[0] < 0:
        return used[1:], inverse - 1
    return used, inverse


def _compact_dictionaries(table: pa.Table) -> pa.Table:
    columns = []
    for column in table.columns:
        if pa.types.is_dictionary(column.type):
            array = column.combine_chunks()
            codes = pc.fill_null(array.indices, -1).to_numpy()
            compact = _compact_codes(codes, len(array.dictionary))
            if compact is not None:
                used, codes = compact
                indices = pa.array(codes, mask=codes < 0, type=column.type.index_type)
                array = pa.DictionaryArray.from_arrays(indices, array.dictionary.take(used))
            columns.append(array)
        else:
            columns.append(column)
    return pa.Table.from_arrays(columns, schema=table.schema)


def _rejects_to_table(rejects: Sequence[Reject]) -> pa.Table:
    ns = np.array([r.received_ns for r in rejects], dtype="int64")
    reasons = [getattr(r.reason, "value", r.reason) for r in rejects]
    return pa.table(
        [
            pa.array(ns, type=pa.int64()).cast(REJECTS_SCHEMA.field("received_at").type),
            pa.array([r.topic for r in rejects], type=pa.string()),
            pa.array([str(reason) for reason in reasons], type=pa.string()).dictionary_encode(),
            pa.array([r.detail for r in rejects], type=pa.string()),
            pa.array([bytes(r.payload) for r in rejects], type=pa.binary()),
            pa.array([r.payload_size for r in rejects], type=pa.int64()),
        ],
        schema=REJECTS_SCHEMA,
    )


def _write_table(
    table: pa.Table, path: Path, metadata: Mapping[str, str], *, make_parents: bool = True
) -> Path:
    table = table.replace_schema_metadata(metadata)

    def write(sink: IO[bytes]) -> None:
        pq.write_table(
            table,
            sink,
            compression=PARQUET_COMPRESSION,
            row_group_size=_ROW_GROUP_ROWS,
        )

    return _atomic_write(path, write, make_parents=make_parents)


def _merge_files(
    files: Sequence[Path], path: Path, schema: pa.Schema, metadata: Mapping[str, str]
) -> Path:
    """Stream `files` into one file at `path`, at most about a row group in memory."""

    def write(sink: IO[bytes]) -> None:
        with pq.ParquetWriter(
            sink, schema.with_metadata(metadata), compression=PARQUET_COMPRESSION
        ) as writer:
            buffered: list[pa.Table] = []
            rows = 0
            for file in files:
                table = pq.read_table(file, schema=schema).replace_schema_metadata(None)
                buffered.append(table)
                rows += table.num_rows
                if rows >= _ROW_GROUP_ROWS:
                    writer.write_table(
                        pa.concat_tables(buffered).unify_dictionaries(),
                        row_group_size=_ROW_GROUP_ROWS,
                    )
                    buffered, rows = [], 0
            if rows or not files:
                table = pa.concat_tables(buffered) if buffered else schema.empty_table()
                writer.write_table(table.unify_dictionaries(), row_group_size=_ROW_GROUP_ROWS)

    return _atomic_write(path, write)


def _atomic_write(
    path: Path, write: Callable[[IO[bytes]], None], *, make_parents: bool = True
) -> Path:
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name ending in .tmp: never matched by the readers' part-*.parquet globs and
    # skipped by pyarrow.dataset discovery, which ignores names starting with "." or "_".
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temp, "wb") as sink:
            write(sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; Windows cannot open a folder for fsync.
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _split_by_day(table: pa.Table) -> list[tuple[str, pa.Table]]:
    days = table.column("received_at").cast(pa.int64()).to_numpy() // _NS_PER_DAY
    unique = np.unique(days)
    out = []
    for day in unique:
        label = (np.datetime64(0, "D") + day).astype(str)
        part = table if len(unique) == 1 else _compact_dictionaries(table.filter(days == day))
        out.append((label, part))
    return out


def _parts_dir(path: Path) -> Path:
    return path.with_name(path.name + _PARTS_SUFFIX)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.stem + _REJECTS_SUFFIX)


def _sorted_parts(paths: Iterable[Path]) -> list[Path]:
    # part-1000000 sorts after part-999999: shorter numbered names first.
    return sorted(paths, key=lambda p: (str(p.parent), len(p.name), p.name))


def _recording_files(path: Path) -> list[Path]:
    if path.is_file():
        if path.name.endswith(_REJECTS_SUFFIX):
            raise _rejects_error(path)
        if _parts_dir(path).is_dir():
            logger.warning(
                "%s has a leftover %s folder of an unfinished recording; reading the file",
                path,
                _parts_dir(path).name,
            )
        return [path]
    if path.is_dir():
        if path.name.endswith(_PARTS_SUFFIX):
            return _sorted_parts(path.glob(_PART_GLOB))
        return _sorted_parts(p for p in path.rglob(_PART_GLOB) if p.is_file())
    parts = _parts_dir(path)
    if parts.is_dir():
        files = _sorted_parts(parts.glob(_PART_GLOB))
        logger.warning(
            "%s does not exist; reading the %d flushed parts of its unfinished recording",
            path,
            len(files),
        )
        return files
    raise FileNotFoundError(
        f"no recording at {path}: not a Parquet file, a dataset folder or a recording with a "
        f"{parts.name} folder"
    )


def _utc_scalar(value: Any, name: str) -> pa.Scalar:
    try:
        moment = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}={value!r} is not a time: {exc}") from exc
    if moment is pd.NaT:
        raise ValueError(f"{name}={value!r} is not a time")
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    return pa.scalar(moment.value, type=ARROW_SCHEMA.field("timestamp").type)


def _names(values: Iterable[str]) -> pa.Array:
    names = [values] if isinstance(values, str) else [str(v) for v in values]
    return pa.array(names, type=pa.string())


def _filter_expression(
    *,
    start: Any,
    end: Any,
    devices: Iterable[str] | None,
    metrics: Iterable[str] | None,
) -> ds.Expression | None:
    conditions = []
    if start is not None:
        conditions.append(pc.field("timestamp") >= _utc_scalar(start, "start"))
    if end is not None:
        conditions.append(pc.field("timestamp") < _utc_scalar(end, "end"))
    if devices is not None:
        conditions.append(pc.field("device_id").isin(_names(devices)))
    if metrics is not None:
        conditions.append(pc.field("metric").isin(_names(metrics)))
    if not conditions:
        return None
    expression = conditions[0]
    for condition in conditions[1:]:
        expression = expression & condition
    return expression


def _is_canonical(frame: pd.DataFrame, *, exact_columns: bool = True) -> bool:
    if exact_columns and tuple(frame.columns) != COLUMNS:
        return False
    dtypes = frame.dtypes
    utc = pd.DatetimeTZDtype(unit="ns", tz="UTC")
    return (
        frame.columns.is_unique
        and all(name in dtypes for name in COLUMNS)
        and dtypes["timestamp"] == utc
        and dtypes["received_at"] == utc
        and dtypes["value"] == "float64"
        and all(isinstance(dtypes[c], pd.CategoricalDtype) for c in CATEGORY_COLUMNS)
    )


def _recording_dataset(files: Sequence[Path]) -> ds.FileSystemDataset:
    """A dataset of `files` in that order, each checked to be a recording.

    The footers read for the check stay cached in the fragments, so the scan does not read
    them again.
    """
    file_format = ds.ParquetFileFormat()
    filesystem = pafs.LocalFileSystem()
    fragments = []
    for file in files:
        if file.name.endswith(_REJECTS_SUFFIX):
            raise _rejects_error(file)
        fragment = file_format.make_fragment(str(file.absolute()), filesystem)
        try:
            schema = fragment.physical_schema
        except pa.ArrowInvalid as exc:
            raise _not_parquet_error(file, exc) from exc
        _check_columns(file, schema.names)
        fragments.append(fragment)
    return ds.FileSystemDataset(fragments, ARROW_SCHEMA, file_format, filesystem)


def _recording_footer(path: Path) -> pq.FileMetaData:
    if path.name.endswith(_REJECTS_SUFFIX):
        raise _rejects_error(path)
    try:
        footer = pq.read_metadata(path)
    except pa.ArrowInvalid as exc:
        raise _not_parquet_error(path, exc) from exc
    _check_columns(path, footer.schema.to_arrow_schema().names)
    return footer


def _check_columns(path: Path, names: Sequence[str]) -> None:
    present = set(names)
    if set(REJECTS_SCHEMA.names) <= present:
        raise _rejects_error(path)
    missing = [name for name in _REQUIRED_COLUMNS if name not in present]
    if not present.intersection(_VALUE_COLUMNS):
        missing.append(_VALUE_COLUMNS[0])
    if missing:
        columns = "column " if len(missing) == 1 else "columns "
        raise NotARecordingError(
            f"{path} is not a telemetry recording: it has no {columns}{', '.join(missing)}",
            hint=_WHAT_A_RECORDING_IS,
        )


def _rejects_error(path: Path) -> NotARecordingError:
    return NotARecordingError(
        f"{path} holds a recording's rejected messages, not its telemetry",
        hint=_USE_LOAD_REJECTS,
    )


def _not_parquet_error(path: Path, cause: BaseException) -> NotARecordingError:
    return NotARecordingError(
        f"{path} is not a Parquet file, or only part of one (a half-copied file): {cause}",
        hint=_WHAT_A_RECORDING_IS,
    )


def _file_key_values(footer: pq.FileMetaData) -> dict[str, str]:
    raw = footer.metadata or {}
    out = {}
    for key, value in raw.items():
        text = key.decode("utf-8", "replace")
        if text.startswith(_PREFIX):
            out[text.removeprefix(_PREFIX)] = value.decode("utf-8", "replace")
    return out
