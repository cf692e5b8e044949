"""Parquet files of telemetry: atomic writes, and reading files, recordings and datasets.

Every file has `schema.ARROW_SCHEMA` (or `schema.REJECTS_SCHEMA` for rejected messages), zstd
compression and dictionary-encoded strings. It is written under a hidden temporary name in its
final folder, fsynced and then `os.replace`d into place, so a reader sees a whole file or none.
Temporary names start with a dot and end in `.tmp`; the readers only pick up `part-*.parquet`
(and `rejects-*.parquet`), so leftovers of a crash are ignored.

The sinks that write files over time (`Recorder`, `DatasetWriter`) are in `tesaiot_data.sinks.base`;
the few helpers below without an underscore and outside `__all__` are theirs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tesaiot_data._version import VERSION
from tesaiot_data.errors import NotARecordingError
from tesaiot_data.schema import (
    ARROW_SCHEMA,
    CATEGORY_COLUMNS,
    COLUMNS,
    REJECTS_SCHEMA,
    TIME_TYPE,
    empty_frame,
    to_canonical,
    used_categories,
)

if TYPE_CHECKING:
    from tesaiot_data.messages import Reject

__all__ = [
    "PARQUET_COMPRESSION",
    "load_recording",
    "load_rejects",
    "read_metadata",
    "table_from_frame",
    "write_batches",
    "write_frame",
    "write_rejects",
]

logger = logging.getLogger(__name__)

PARQUET_COMPRESSION = "zstd"

#: Rows per row group: small enough for row-group statistics to skip most of a file on a
#: time filter.
ROW_GROUP_ROWS = 128 * 1024

_PREFIX = "tesaiot."
# Computed from the data when a file is written; a caller's value for them is ignored.
_RESERVED_KEYS = frozenset({"rows", "start", "end", "version"})
_PART_GLOB = "part-*.parquet"
_REJECTS_PART_GLOB = "rejects-*.parquet"
_PARTS_SUFFIX = ".parts"
_REJECTS_SUFFIX = ".rejects.parquet"
_PART_PREFIX = "part-"
#: The name prefix of a dataset partition's merged file (see `tesaiot_data.files.compaction`).
COMPACTED_PREFIX = "compacted-"
#: The key (`tesaiot.replaces`) of a compacted file's metadata: a JSON list of the names of
#: the files in its folder that it replaces. Readers skip every file so listed.
REPLACES_KEY = "replaces"
# How many times a dataset read starts again when a compaction changed the files under it.
_READ_ATTEMPTS = 10
_DATE_FOLDER = re.compile(r"date=(\d{4}-\d{2}-\d{2})")
_T = TypeVar("_T")
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

# --- writing -------------------------------------------------------------------------------


def write_frame(
    frame: pd.DataFrame, path: str | Path, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a telemetry frame to one Parquet file, atomically.

    The file has `ARROW_SCHEMA`, zstd compression and dictionary-encoded strings holding only
    the strings the rows use. Its key-value metadata holds `tesaiot.rows`, `tesaiot.start`
    and `tesaiot.end` (ISO UTC of the first and last `received_at`; absent when there are no
    rows), `tesaiot.version` and the caller's `metadata`, each key prefixed with `tesaiot.`
    unless it already is.

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
    caller = check_metadata(metadata)
    return write_table(table_from_frame(frame), Path(path), metadata=caller)


def write_batches(
    batches: Sequence[pa.RecordBatch],
    path: str | Path,
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write Arrow record batches of telemetry to one Parquet file, atomically.

    The same file as `write_frame` makes, from batches such as `RollingWindow.batches()`
    without a pandas frame on the way.

    Args:
        batches: Batches in `ARROW_SCHEMA`, in row order; may be empty.
        path: The file to write; missing parent folders are created, an old file is replaced.
        metadata: Extra string key-value pairs to store in the file.

    Returns:
        The path written.

    Raises:
        TypeError: A metadata key or value is not a string.
        ValueError: A batch is not in `ARROW_SCHEMA`.
        OSError: The file could not be written; an old file at `path` is left as it was.
    """
    caller = check_metadata(metadata)
    conformed = [conform_batch(batch) for batch in batches]
    table = pa.Table.from_batches(conformed, schema=ARROW_SCHEMA).unify_dictionaries()
    return write_table(table, Path(path), metadata=caller)


def write_rejects(
    rejects: Sequence[Reject], path: str | Path, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write rejected messages to a Parquet sidecar file, atomically.

    Columns: `received_at` (UTC), `topic`, `reason` (dictionary), `detail`, `payload` (the
    already truncated bytes) and `payload_size` (the size of the whole payload).

    Args:
        rejects: `tesaiot_data.messages.Reject` objects.
        path: The file to write; missing parent folders are created.
        metadata: Extra string key-value pairs to store in the file.

    Returns:
        The path written.

    Raises:
        TypeError: A metadata key or value is not a string.
        OSError: The file could not be written.
    """
    caller = check_metadata(metadata)
    return write_table(rejects_table(rejects), Path(path), metadata=caller, time_column=None)


def table_from_frame(frame: pd.DataFrame) -> pa.Table:
    """Convert a telemetry frame to an Arrow table in `ARROW_SCHEMA`.

    String columns keep only the categories their rows use.

    Args:
        frame: Rows in the canonical columns (other dtypes are converted when they can be).

    Returns:
        The table, one chunk per column.

    Raises:
        ValueError: A column cannot be converted (mixed types, missing required values);
            the message names the column.
    """
    if not _is_canonical(frame, exact_columns=False):
        frame = to_canonical(frame)
    # Column by column from codes and categories: a few times faster than Table.from_pandas.
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


def conform_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Return `batch` labelled with `ARROW_SCHEMA`, or raise if its columns differ from it.

    A batch whose column names and types match is accepted whatever its fields' nullable
    flags and metadata say (as when made with `pa.RecordBatch.from_arrays(..., names=...)`),
    as long as the required columns have no nulls.

    Raises:
        ValueError: It is not a record batch, or a column differs; the message names it.
    """
    hint = "make batches with RollingWindow.batches_of(), or pass a DataFrame"
    if not isinstance(batch, pa.RecordBatch):
        raise ValueError(
            f"expected a pyarrow.RecordBatch, not {type(batch).__name__} (hint: {hint})"
        )
    if batch.schema.equals(ARROW_SCHEMA):
        return batch
    if batch.schema.names != ARROW_SCHEMA.names:
        raise ValueError(
            f"the batch has the columns {batch.schema.names}, not {ARROW_SCHEMA.names} "
            f"(hint: {hint})"
        )
    for field, column in zip(ARROW_SCHEMA, batch.columns, strict=True):
        if column.type != field.type:
            raise ValueError(
                f"column {field.name!r} of the batch is {column.type}, not {field.type} "
                f"(hint: {hint})"
            )
        if not field.nullable and column.null_count:
            raise ValueError(
                f"column {field.name!r} has {column.null_count} missing values; it must have none"
            )
    return pa.RecordBatch.from_arrays(batch.columns, schema=ARROW_SCHEMA)


def write_table(
    table: pa.Table,
    path: Path,
    *,
    metadata: Mapping[str, str],
    time_column: str | None = "received_at",
    make_parents: bool = True,
) -> Path:
    """Write `table` to a Parquet file atomically, with the computed `tesaiot.*` metadata.

    Args:
        table: The rows.
        path: The file.
        metadata: Checked caller metadata (see `check_metadata`), keys without the prefix.
        time_column: The column whose first and last times become `start` and `end`.
        make_parents: Create missing parent folders; False makes a missing folder an error.

    Returns:
        The path written.

    Raises:
        OSError: The file could not be written; nothing is left at a temporary name.
    """
    table = table.replace_schema_metadata(_file_metadata(table, metadata, time_column))

    def write(sink: IO[bytes]) -> None:
        pq.write_table(table, sink, compression=PARQUET_COMPRESSION, row_group_size=ROW_GROUP_ROWS)

    return _atomic_write(path, write, make_parents=make_parents)


def merge_files(
    files: Sequence[Path], path: Path, *, schema: pa.Schema, metadata: Mapping[str, str]
) -> Path:
    """Stream Parquet `files` into one file at `path`, atomically, about a row group at a time.

    Args:
        files: The files, in row order, each with `schema`.
        path: The file to write.
        schema: The schema of the files and of the result.
        metadata: The result's metadata, keys without the prefix; the version is added.

    Returns:
        The path written.

    Raises:
        OSError: A file could not be read or the result written.
    """
    meta = prefixed({**metadata, "version": VERSION})

    def write(sink: IO[bytes]) -> None:
        with pq.ParquetWriter(
            sink, schema.with_metadata(meta), compression=PARQUET_COMPRESSION
        ) as writer:
            tables = (
                pq.read_table(file, schema=schema).replace_schema_metadata(None) for file in files
            )
            write_row_groups(writer, tables, empty=schema.empty_table())

    return _atomic_write(path, write)


def write_row_groups(
    writer: pq.ParquetWriter, tables: Iterable[pa.Table], *, empty: pa.Table
) -> int:
    """Write tables through `writer` in row groups of about `ROW_GROUP_ROWS` rows.

    Small tables (a recording's parts, a dataset's flushes) are buffered until a row group
    is full, so the result has few, large row groups and holds about one group in memory.

    Args:
        writer: An open Parquet writer.
        tables: The tables, in row order, in the writer's schema.
        empty: What to write when `tables` has no rows at all (a file needs one group).

    Returns:
        The rows written.
    """
    buffered: list[pa.Table] = []
    held = total = 0
    for table in tables:
        buffered.append(table)
        held += table.num_rows
        total += table.num_rows
        if held >= ROW_GROUP_ROWS:
            writer.write_table(
                pa.concat_tables(buffered).unify_dictionaries(), row_group_size=ROW_GROUP_ROWS
            )
            buffered, held = [], 0
    if held or not total:
        table = pa.concat_tables(buffered) if held else empty
        writer.write_table(table.unify_dictionaries(), row_group_size=ROW_GROUP_ROWS)
    return total


def rejects_table(rejects: Sequence[Reject]) -> pa.Table:
    """Return rejected messages as an Arrow table in `REJECTS_SCHEMA`."""
    ns = np.array([r.received_ns for r in rejects], dtype="int64")
    reasons = [getattr(r.reason, "value", r.reason) for r in rejects]
    return pa.table(
        [
            pa.array(ns.view("M8[ns]"), type=TIME_TYPE),
            pa.array([r.topic for r in rejects], type=pa.string()),
            pa.array([str(reason) for reason in reasons], type=pa.string()).dictionary_encode(),
            pa.array([r.detail for r in rejects], type=pa.string()),
            pa.array([bytes(r.payload) for r in rejects], type=pa.binary()),
            pa.array([r.payload_size for r in rejects], type=pa.int64()),
        ],
        schema=REJECTS_SCHEMA,
    )


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Return a caller's metadata with bare keys, without the keys computed when writing.

    Raises:
        TypeError: A key or value is not a string.
    """
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


def prefixed(metadata: Mapping[str, str]) -> dict[str, str]:
    """Return `metadata` with every key prefixed by `tesaiot.`, as files store it."""
    return {f"{_PREFIX}{key}": value for key, value in metadata.items()}


def time_range_ns(table: pa.Table | pa.RecordBatch, column: str = "received_at") -> tuple[int, int]:
    """Return the first and last time of a non-empty time column in epoch nanoseconds."""
    result = pc.min_max(table.column(column).cast(pa.int64()))
    return result["min"].as_py(), result["max"].as_py()


def iso_ns(ns: int) -> str:
    """Return an epoch time in nanoseconds as ISO UTC, to the microsecond."""
    # Microseconds, so that datetime.fromisoformat() of Python 3.10 can read it back.
    return pd.Timestamp(ns, tz="UTC").isoformat(timespec="microseconds")


def iso_datetime(moment: datetime) -> str:
    """Return a time as ISO UTC, to the microsecond."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def parts_dir(path: Path) -> Path:
    """Return the folder of an unfinished recording's part files, `<path>.parts`."""
    return path.with_name(path.name + _PARTS_SUFFIX)


def rejects_sidecar(path: Path) -> Path:
    """Return the rejects file beside a recording, `<stem>.rejects.parquet`."""
    return path.with_name(path.stem + _REJECTS_SUFFIX)


def _file_metadata(
    table: pa.Table, caller: Mapping[str, str], time_column: str | None
) -> dict[str, str]:
    meta = dict(caller)
    meta["rows"] = str(table.num_rows)
    if time_column is not None and table.num_rows:
        low, high = time_range_ns(table, time_column)
        meta["start"], meta["end"] = iso_ns(low), iso_ns(high)
    meta["version"] = VERSION
    return prefixed(meta)


def _used_dictionary(categorical: pd.Categorical, name: str, index_type: pa.DataType) -> pa.Array:
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
    compact = used_categories(codes, len(values))
    if compact is not None:
        used, codes = compact
        values = values.take(used)
    if values.type != pa.string():
        values = values.cast(pa.string())
    indices = pa.array(codes, mask=codes < 0, type=index_type)
    return pa.DictionaryArray.from_arrays(indices, values)


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
    expression = _filter_expression(start=start, end=end, devices=devices, metrics=metrics)
    return _read_frame(Path(path), expression, dedupe=dedupe)


def read_received(
    path: str | Path,
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
    devices: Iterable[str] | None = None,
    metrics: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Read the rows of a recording received in `[start_ns, end_ns)`, for `Collector.history`.

    `load_recording` with the time filter on `received_at` instead of `timestamp`. A dataset
    is partitioned by the UTC date of `received_at`, so only the `date=YYYY-MM-DD` folders
    that can hold such rows are listed at all; row groups are skipped by their statistics.

    Args:
        path: A recording file, a parts folder or a dataset folder.
        start_ns: Keep rows received at or after this time, in epoch nanoseconds.
        end_ns: Keep rows received before this time, in epoch nanoseconds.
        devices: Keep only these device ids.
        metrics: Keep only these metrics.

    Returns:
        The rows in file order, canonical dtypes and a fresh RangeIndex.

    Raises:
        FileNotFoundError: Nothing is at `path`.
        NotARecordingError: A file is not a recording (see `load_recording`).
    """
    conditions = []
    if start_ns is not None:
        conditions.append(pc.field("received_at") >= pa.scalar(start_ns, type=TIME_TYPE))
    if end_ns is not None:
        conditions.append(pc.field("received_at") < pa.scalar(end_ns, type=TIME_TYPE))
    others = _filter_expression(start=None, end=None, devices=devices, metrics=metrics)
    if others is not None:
        conditions.append(others)
    expression = None
    for condition in conditions:
        expression = condition if expression is None else expression & condition
    low = date.min if start_ns is None else _utc_day(start_ns)
    high = date.max if end_ns is None else _utc_day(end_ns - 1)
    return _read_frame(Path(path), expression, days=(low, high))


def _read_frame(
    path: Path,
    expression: ds.Expression | None,
    *,
    dedupe: bool = False,
    days: tuple[date, date] | None = None,
) -> pd.DataFrame:
    def read(files: list[Path]) -> pa.Table | None:
        if not files:
            return None
        dataset = _recording_dataset(files)
        try:
            return dataset.to_table(filter=expression)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            # Columns of the right names but types that do not convert (text in `value`).
            raise NotARecordingError(
                f"{path} cannot be read as a recording: {exc}", hint=_WHAT_A_RECORDING_IS
            ) from exc

    table = _read_consistent(path, read, days=days)
    if table is None or table.num_rows == 0:
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
    return _read_consistent(Path(path), _combined_metadata)


def _combined_metadata(files: list[Path]) -> dict[str, str]:
    combined: dict[str, str] = {}
    for file in files:
        meta = _file_key_values(_recording_footer(file))
        meta.pop(REPLACES_KEY, None)
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
    elif rejects_sidecar(path).is_file():
        files = [rejects_sidecar(path)]
    elif parts_dir(path).is_dir():
        files = _sorted_parts(parts_dir(path).glob(_REJECTS_PART_GLOB))
    elif path.exists():
        files = []
    else:
        raise FileNotFoundError(
            f"no recording at {path} and no {rejects_sidecar(path).name} beside it"
        )
    if not files:
        return REJECTS_SCHEMA.empty_table().to_pandas()
    dataset = ds.dataset([str(f) for f in files], schema=REJECTS_SCHEMA, format="parquet")
    return dataset.to_table().to_pandas()


def _sorted_parts(paths: Iterable[Path]) -> list[Path]:
    # A recording's part-1000000 sorts after part-999999: shorter numbered names first. A
    # dataset's part-<UTC stamp>-<host>-<pid>-... names sort by time as they are, whatever
    # the length of each writer's host name.
    def key(path: Path) -> tuple[str, int, str]:
        numbered = path.name.split("-", 1)[-1].removesuffix(".parquet").isdigit()
        return str(path.parent), len(path.name) if numbered else 0, path.name

    return sorted(paths, key=key)


def _recording_files(path: Path) -> list[Path]:
    if path.is_file():
        if path.name.endswith(_REJECTS_SUFFIX):
            raise _rejects_error(path)
        if parts_dir(path).is_dir():
            logger.warning(
                "%s has a leftover %s folder of an unfinished recording; reading the file",
                path,
                parts_dir(path).name,
            )
        return [path]
    if path.is_dir():
        if path.name.endswith(_PARTS_SUFFIX):
            return _sorted_parts(path.glob(_PART_GLOB))
        return _current_files(_dataset_listing(path))
    parts = parts_dir(path)
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


# --- datasets: listing, compacted partitions, consistent reads --------------------------------
# A compacted file (tesaiot_data.files.compaction) lists in its metadata the files it replaces;
# a reader skips them. Between a compacted file's rename into place and the deletion of the
# files it replaces, a reader thus sees the compacted file only, before it the parts only.


def partition_files(
    folder: Path, names: Iterable[str] | None = None
) -> tuple[list[Path], list[Path]]:
    """Return the files of one dataset folder that hold its rows, and the ones replaced.

    A file is replaced when a compacted file in the same folder lists it in its
    `tesaiot.replaces` metadata (a compaction wrote the merged file and has not yet deleted,
    or stopped before deleting, the files it merged).

    Args:
        folder: A partition folder, such as `root/date=2025-12-09`.
        names: The names of its `part-*.parquet` and `compacted-*.parquet` files, when
            already listed; default: list the folder.

    Returns:
        `(current, replaced)`: the files to read, compacted files first, then parts in
        flush order; and the replaced files still present.

    Raises:
        FileNotFoundError: The folder, or a compacted file in it, vanished meanwhile.
        NotARecordingError: A compacted file is not Parquet or has a broken list.
    """
    if names is None:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if _is_data_name(e.name) and e.is_file()]
    names = list(names)
    compacted = sorted(name for name in names if name.startswith(COMPACTED_PREFIX))
    replaced: set[str] = set()
    if compacted and len(names) > 1:  # a lone file replaces nothing: no footer to read
        for name in compacted:
            replaced |= compacted_replaces(folder / name)
    current = [folder / name for name in compacted if name not in replaced]
    current += _sorted_parts(
        folder / name
        for name in names
        if not name.startswith(COMPACTED_PREFIX) and name not in replaced
    )
    return current, sorted(folder / name for name in names if name in replaced)


def compacted_replaces(path: Path) -> frozenset[str]:
    """Return the names of the files a compacted file replaces (its `tesaiot.replaces`).

    Raises:
        FileNotFoundError: The file vanished (a later compaction replaced it).
        NotARecordingError: It is not Parquet, or its list is not a JSON list of names.
    """
    try:
        raw = (pq.read_metadata(path).metadata or {}).get(f"{_PREFIX}{REPLACES_KEY}".encode())
    except pa.ArrowInvalid as exc:
        raise _not_parquet_error(path, exc) from exc
    if raw is None:
        return frozenset()
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise NotARecordingError(
            f"{path} has a broken {_PREFIX}{REPLACES_KEY} list",
            hint="delete that file and run `tesaiot-data compact` again; the files it "
            "merged are still beside it",
        )
    return frozenset(names)


def _is_data_name(name: str) -> bool:
    return name.endswith(".parquet") and name.startswith((_PART_PREFIX, COMPACTED_PREFIX))


def _utc_day(ns: int) -> date:
    return datetime.fromtimestamp(ns // 10**9, tz=timezone.utc).date()


def _dataset_listing(root: Path, days: tuple[date, date] | None = None) -> dict[Path, list[str]]:
    """Each folder under `root` that holds data files, and their names.

    With `days`, only the `date=YYYY-MM-DD` folders in that (inclusive) range are entered.
    """
    listing: dict[Path, list[str]] = {}
    for folder, subfolders, names in os.walk(root):
        if days is not None:
            subfolders[:] = [name for name in subfolders if _day_wanted(name, days)]
        found = [name for name in names if _is_data_name(name)]
        if found:
            listing[Path(folder)] = found
    return listing


def _day_wanted(name: str, days: tuple[date, date]) -> bool:
    match = _DATE_FOLDER.fullmatch(name)
    if match is None:
        return True
    try:
        day = date.fromisoformat(match.group(1))
    except ValueError:
        return True
    return days[0] <= day <= days[1]


def _current_files(listing: Mapping[Path, list[str]]) -> list[Path]:
    files: list[Path] = []
    for folder in sorted(listing, key=str):
        files += partition_files(folder, listing[folder])[0]
    return files


def _read_consistent(
    path: Path,
    read: Callable[[list[Path]], _T],
    *,
    days: tuple[date, date] | None = None,
) -> _T:
    """Run `read` on the files of a recording; for a dataset, on one whole state of it.

    A compaction may replace a dataset's parts while they are read: a part that vanished
    before it was opened fails the read, and a listing that overlapped the merged file's
    rename may miss both it and parts already deleted, which listing again after the read
    shows (a compacted file that was not there before). Either way the read starts again.

    Raises:
        FileNotFoundError: Nothing is at `path`, or the dataset changed under every attempt.
    """
    if not path.is_dir() or path.name.endswith(_PARTS_SUFFIX):
        return read(_recording_files(path))
    for attempt in range(1, _READ_ATTEMPTS + 1):
        listing = _dataset_listing(path, days)
        try:
            result = read(_current_files(listing))
        except FileNotFoundError as exc:
            if attempt == _READ_ATTEMPTS:
                raise
            logger.debug("%s changed while it was read (%s); reading it again", path, exc)
            continue
        if not _new_compacted_files(listing, _dataset_listing(path, days)):
            return result
        logger.debug("%s was compacted while it was read; reading it again", path)
    raise FileNotFoundError(
        f"{path} was compacted during each of {_READ_ATTEMPTS} attempts to read it (hint: "
        "read it again when the compaction has finished)"
    )


def _new_compacted_files(before: Mapping[Path, list[str]], after: Mapping[Path, list[str]]) -> bool:
    for folder, names in after.items():
        seen = set(before.get(folder, ()))
        if any(name.startswith(COMPACTED_PREFIX) and name not in seen for name in names):
            return True
    return False


def _utc_scalar(value: Any, name: str) -> pa.Scalar:
    try:
        moment = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}={value!r} is not a time: {exc}") from exc
    if moment is pd.NaT:
        raise ValueError(f"{name}={value!r} is not a time")
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    return pa.scalar(moment.value, type=TIME_TYPE)


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
