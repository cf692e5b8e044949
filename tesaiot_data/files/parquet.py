"""Parquet files of telemetry: the Arrow format, atomic writes, and merging files into one.

Every file has `schema.ARROW_SCHEMA` (or `schema.REJECTS_SCHEMA` for rejected messages), zstd
compression and dictionary-encoded strings. It is written under a hidden temporary name in its
final folder, fsynced and then `os.replace`d into place, and the folder is fsynced, so a reader
sees a whole file or none (see `tesaiot_data.files.layout` for the names). The names and
listing are in `files.layout`, the `tesaiot.*` keys in `files.metadata`, the readers in
`tesaiot_data.readers.disk`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tesaiot_data._version import VERSION
from tesaiot_data.files.layout import temporary_path
from tesaiot_data.files.metadata import check_metadata, file_metadata, prefixed
from tesaiot_data.files.store import (
    Location,
    StorePath,
    check_bucket,
    filesystem_path,
    location,
    translated,
    write_object,
)
from tesaiot_data.schema import (
    ARROW_SCHEMA,
    REJECTS_SCHEMA,
    TIME_COLUMNS,
    TIME_TYPE,
    epoch_ns,
    is_canonical,
    to_canonical,
    used_categories,
)

if TYPE_CHECKING:
    from tesaiot_data.messages import Reject

__all__ = [
    "PARQUET_COMPRESSION",
    "ROW_GROUP_ROWS",
    "atomic_write",
    "check_writable",
    "conform_batch",
    "fsync_dir",
    "merge_files",
    "rejects_table",
    "table_from_frame",
    "write_batches",
    "write_frame",
    "write_rejects",
    "write_row_groups",
    "write_table",
]

PARQUET_COMPRESSION = "zstd"


#: Rows per row group: small enough for row-group statistics to skip most of a file on a
#: time filter.
ROW_GROUP_ROWS = 128 * 1024

# --- writing -------------------------------------------------------------------------------


@overload
def write_frame(
    frame: pd.DataFrame, path: Path, *, metadata: Mapping[str, str] | None = None
) -> Path: ...
@overload
def write_frame(
    frame: pd.DataFrame, path: str | StorePath, *, metadata: Mapping[str, str] | None = None
) -> Location: ...
def write_frame(
    frame: pd.DataFrame,
    path: str | Path | StorePath,
    *,
    metadata: Mapping[str, str] | None = None,
) -> Location:
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
    return write_table(table_from_frame(frame), location(path), metadata=caller)


@overload
def write_batches(
    batches: Sequence[pa.RecordBatch], path: Path, *, metadata: Mapping[str, str] | None = None
) -> Path: ...
@overload
def write_batches(
    batches: Sequence[pa.RecordBatch],
    path: str | StorePath,
    *,
    metadata: Mapping[str, str] | None = None,
) -> Location: ...
def write_batches(
    batches: Sequence[pa.RecordBatch],
    path: str | Path | StorePath,
    *,
    metadata: Mapping[str, str] | None = None,
) -> Location:
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
    return write_table(table, location(path), metadata=caller)


def write_rejects(
    rejects: Sequence[Reject],
    path: str | Path | StorePath,
    *,
    metadata: Mapping[str, str] | None = None,
) -> Location:
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
    return write_table(rejects_table(rejects), location(path), metadata=caller, time_column=None)


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
    if not is_canonical(frame, exact_columns=False):
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


@overload
def write_table(
    table: pa.Table,
    path: Path,
    *,
    metadata: Mapping[str, str],
    time_column: str | None = ...,
    make_parents: bool = ...,
) -> Path: ...
@overload
def write_table(
    table: pa.Table,
    path: Location,
    *,
    metadata: Mapping[str, str],
    time_column: str | None = ...,
    make_parents: bool = ...,
) -> Location: ...
def write_table(
    table: pa.Table,
    path: Location,
    *,
    metadata: Mapping[str, str],
    time_column: str | None = "received_at",
    make_parents: bool = True,
) -> Location:
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
    table = table.replace_schema_metadata(file_metadata(table, metadata, time_column))

    def write(sink: Any) -> None:
        pq.write_table(table, sink, compression=PARQUET_COMPRESSION, row_group_size=ROW_GROUP_ROWS)

    return atomic_write(path, write, make_parents=make_parents)


def merge_files(
    files: Sequence[Location],
    path: Location,
    *,
    schema: pa.Schema,
    metadata: Mapping[str, str],
    received_bounds: Sequence[tuple[int, int] | None] | None = None,
    delta_times: bool = False,
    make_parents: bool = True,
) -> Location:
    """Stream Parquet `files` into one file at `path`, atomically, about a row group at a time.

    The one merge of the package: a recording's parts when it stops, and a dataset
    partition's files when it is compacted.

    Args:
        files: The files, in row order, each with `schema`.
        path: The file to write.
        schema: The schema of the files and of the result.
        metadata: The result's metadata, keys without the prefix; the version is added.
        received_bounds: Each file's first and last `received_at` in epoch ns (None for a
            file without rows). Given, the rows are written in `received_at` order (a
            stable sort: rows of one time keep their file order), and memory holds the
            largest run of files whose time ranges overlap; files without rows are skipped.
        delta_times: Encode the time columns as deltas (`DELTA_BINARY_PACKED`, a few bytes
            a row) and the other columns as dictionaries: for a file kept long.
        make_parents: Create missing parent folders; False makes a missing folder an error.

    Returns:
        The path written.

    Raises:
        OSError: A file could not be read or the result written.
    """
    meta = prefixed({**metadata, "version": VERSION})
    options: dict[str, object] = {}
    if delta_times:
        options["use_dictionary"] = [name for name in schema.names if name not in TIME_COLUMNS]
        options["column_encoding"] = {
            name: "DELTA_BINARY_PACKED" for name in schema.names if name in TIME_COLUMNS
        }

    def read(file: Location) -> pa.Table:
        filesystem, where = filesystem_path(file)
        with translated(file):
            table = pq.read_table(where, schema=schema, filesystem=filesystem)
        return table.replace_schema_metadata(None)

    def write(sink: Any) -> None:
        with pq.ParquetWriter(
            sink, schema.with_metadata(meta), compression=PARQUET_COMPRESSION, **options
        ) as writer:
            if received_bounds is None:
                tables: Iterable[pa.Table] = (read(file) for file in files)
            else:
                runs = _overlapping_runs(files, received_bounds)
                tables = (_in_time_order([read(file) for file in run]) for run in runs)
            write_row_groups(writer, tables, empty=schema.empty_table())

    return atomic_write(path, write, make_parents=make_parents)


def _overlapping_runs(
    files: Sequence[Location], bounds: Sequence[tuple[int, int] | None]
) -> list[list[Location]]:
    """Group files, ordered by first `received_at`, into runs whose time ranges overlap.

    Only the files of one run need sorting together; a dataset written by one collector has
    runs of one file, so the merge holds one part at a time.
    """
    order = sorted(range(len(files)), key=lambda i: (bounds[i] or (-1, -1))[0])
    runs: list[list[Location]] = []
    run_end: int | None = None
    for index in order:
        span = bounds[index]
        if span is None:  # no rows: its place does not matter
            continue
        low, high = span
        if runs and run_end is not None and low < run_end:
            runs[-1].append(files[index])
            run_end = max(run_end, high)
        else:
            runs.append([files[index]])
            run_end = high
    return runs


def _in_time_order(tables: Sequence[pa.Table]) -> pa.Table:
    table = pa.concat_tables(tables).unify_dictionaries() if len(tables) > 1 else tables[0]
    received = epoch_ns(table.column("received_at"))
    if received.size < 2 or bool(np.all(received[1:] >= received[:-1])):
        return table
    order = pc.sort_indices(table, sort_keys=[("received_at", "ascending")])  # stable
    return table.combine_chunks().take(order)


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


def atomic_write(
    path: Location, write: Callable[[Any], None], *, make_parents: bool = True
) -> Location:
    """Write a file through `write` under a temporary name, then rename it into place.

    The file is fsynced before the rename and its folder after it, so after a crash `path`
    holds the old file or the whole new one, never a part.

    On an object store, which has no rename, the object is written whole under a hidden
    name and copied to `path` by the server (`store.write_object`); it has no folders to make.

    Args:
        path: The file to write; an old file there is replaced.
        write: Writes the whole content to the binary stream it is given.
        make_parents: Create missing parent folders; False makes a missing folder an error.

    Returns:
        `path`.

    Raises:
        OSError: The file could not be written; the temporary file is removed and an old
            file at `path` is left as it was. A `StorageError` for a store that refused.
    """
    if isinstance(path, StorePath):
        return write_object(path, write)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    temp = temporary_path(path)
    try:
        with open(temp, "wb") as sink:
            write(sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def check_writable(folder: Location) -> None:
    """Create `folder` if missing and prove a file can be made in it, leaving nothing behind.

    For a writer that should fail when it starts, not at its first flush minutes later: a
    read-only mount, a folder of another user, a path through a file. Root passes permission
    checks, so only a real file shows what the file system allows.

    On an object store, a small probe object is written and deleted: a missing bucket,
    credentials it refuses or an endpoint that does not answer fail here.

    Raises:
        OSError: The folder cannot be made, or no file can be created in it; a
            `StorageError` for a store.
    """
    if isinstance(folder, StorePath):
        check_bucket(folder)  # errors name the folder, not the probe
        probe = write_object(folder / f".tesaiot-probe-{os.getpid()}", lambda sink: None)
        probe.unlink(missing_ok=True)
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".tesaiot-probe-", dir=folder)  # exclusive, 0600
    os.close(fd)
    os.unlink(name)


def fsync_dir(folder: Location) -> None:
    """Make the renames and deletions in `folder` durable (a no-op on Windows and stores).

    Raises:
        OSError: The folder cannot be opened or synced.
    """
    if os.name == "nt" or isinstance(folder, StorePath):  # nothing to sync, or no way
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
