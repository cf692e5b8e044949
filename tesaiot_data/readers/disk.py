"""Reading recordings and datasets from disk into canonical DataFrames.

`load_recording` reads one Parquet file, an unfinished recording's parts or a dataset folder
(every file the listing of `tesaiot_data.files.layout` says holds rows, read again if a
compaction changed them meanwhile), with filters pushed down to the Parquet row groups;
`read_rows` does the same by receive time for `Collector.history`. `read_metadata` and
`load_rejects` read a recording's metadata and its rejected messages.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tesaiot_data.arguments import name_list
from tesaiot_data.files.layout import (
    REJECTS_PART_GLOB,
    REJECTS_SUFFIX,
    check_utf8_path,
    is_parts_dir,
    not_parquet_error,
    not_telemetry_error,
    parts_dir,
    read_consistent,
    readable_files,
    rejects_error,
    rejects_sidecar,
    sorted_parts,
    utc_day,
)
from tesaiot_data.files.metadata import REPLACES_KEY, footer_time_range, iso_ns, key_values
from tesaiot_data.files.store import Location, StorePath, filesystem_path, location, translated
from tesaiot_data.schema import (
    ARROW_SCHEMA,
    COLUMNS,
    REJECTS_SCHEMA,
    TIME_TYPE,
    empty_frame,
    is_canonical,
    to_canonical,
)

__all__ = [
    "check_recording",
    "load_recording",
    "load_rejects",
    "read_metadata",
    "read_rows",
    "recording_dataset",
    "recording_footer",
]

logger = logging.getLogger(__name__)

# Every data column: a redelivery repeats all of them; only received_at differs.
_DEDUPE_COLUMNS = [name for name in COLUMNS if name != "received_at"]
# Without these a file is not telemetry (value_text may stand in for value).
_REQUIRED_COLUMNS = tuple(field.name for field in ARROW_SCHEMA if not field.nullable)
_VALUE_COLUMNS = ("value", "value_text")


def load_recording(
    path: str | Path | StorePath,
    *,
    start: Any = None,
    end: Any = None,
    devices: Iterable[str] | None = None,
    metrics: Iterable[str] | None = None,
    dedupe: bool = False,
) -> pd.DataFrame:
    """Read a recording, an unfinished recording or a dataset folder into a canonical frame.

    `path` may be one Parquet file; a `<file>.parts` folder left by a crash, or the `<file>`
    itself when only its parts folder exists (every flushed part is read); a folder of
    recordings (such as `recordings/`: every recording in it, and the flushed parts of one
    still running, as one frame); or a dataset folder of hive partitions `date=YYYY-MM-DD/`
    (the partition column is not returned). A folder's files are read whoever wrote them
    (DuckDB's `COPY ... PARTITION_BY`, Spark, pandas): every visible `*.parquet` file but
    a recording's sidecars; the files it leaves out (a dataset's files outside its `date=`
    folders, such as snapshots, files that are not Parquet) are named in a warning. Every
    file is read in the canonical schema, whatever types it stores (int64 values,
    microsecond times). Filters are pushed down to pyarrow, so skipped row groups are never
    read.

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
        The rows in file order (a folder's files by path: compacted files first in each
        folder, then parts in the order they were written, other names in name order),
        canonical dtypes and a fresh RangeIndex.

    Raises:
        FileNotFoundError: Nothing is at `path`.
        NotARecordingError: `path`, or a file in its folder, is not a recording: a rejects
            sidecar, not Parquet (a half-copied file) or Parquet without the telemetry
            columns or with a column of another kind (text in `value`); the message names
            the file. Or `path`'s name is not UTF-8 (a file in its folder so named is
            skipped with a warning).
        ValueError: `start` or `end` is not a time.
    """
    expression = _filter_expression(start=start, end=end, devices=devices, metrics=metrics)
    return _read_frame(location(path), expression, dedupe=dedupe)


def read_rows(
    path: str | Path | StorePath,
    *,
    received_since: int | None = None,
    received_until: int | None = None,
    devices: Iterable[str] | None = None,
    metrics: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Read the rows of a recording received in `[received_since, received_until)`.

    `load_recording` with the time filter on `received_at` instead of `timestamp`, for
    `Collector.history`. A dataset is partitioned by the UTC date of `received_at`, so only
    the `date=YYYY-MM-DD` folders that can hold such rows are listed at all; row groups are
    skipped by their statistics.

    Args:
        path: A recording file, a parts folder or a dataset folder.
        received_since: Keep rows received at or after this time, in epoch nanoseconds.
        received_until: Keep rows received before this time, in epoch nanoseconds.
        devices: Keep only these device ids.
        metrics: Keep only these metrics.

    Returns:
        The rows in file order, canonical dtypes and a fresh RangeIndex.

    Raises:
        FileNotFoundError: Nothing is at `path`.
        NotARecordingError: A file is not a recording (see `load_recording`).
    """
    conditions = []
    if received_since is not None:
        conditions.append(pc.field("received_at") >= pa.scalar(received_since, type=TIME_TYPE))
    if received_until is not None:
        conditions.append(pc.field("received_at") < pa.scalar(received_until, type=TIME_TYPE))
    others = _filter_expression(start=None, end=None, devices=devices, metrics=metrics)
    if others is not None:
        conditions.append(others)
    expression = None
    for condition in conditions:
        expression = condition if expression is None else expression & condition
    low = date.min if received_since is None else utc_day(received_since)
    high = date.max if received_until is None else utc_day(received_until - 1)
    return _read_frame(location(path), expression, days=(low, high))


def _read_frame(
    path: Location,
    expression: ds.Expression | None,
    *,
    dedupe: bool = False,
    days: tuple[date, date] | None = None,
) -> pd.DataFrame:
    def read(files: list[Location]) -> pa.Table | None:
        if not files:
            return None
        dataset = recording_dataset(files)
        try:
            with translated(path):
                return dataset.to_table(filter=expression)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            # Columns of the right names but types that do not convert (text in `value`).
            raise not_telemetry_error(path, f"cannot be read as a recording: {exc}") from exc

    table = read_consistent(path, read, days=days)
    if table is None or table.num_rows == 0:
        return empty_frame()
    frame = table.to_pandas(split_blocks=True, self_destruct=True)
    del table
    if not is_canonical(frame):
        frame = to_canonical(frame)
    if dedupe:
        frame = frame.loc[~frame.duplicated(subset=_DEDUPE_COLUMNS, keep="first")]
    return frame.reset_index(drop=True)


def read_metadata(path: str | Path | StorePath) -> dict[str, str]:
    """Return the `tesaiot.*` key-value metadata of a recording, keys without the prefix.

    For a folder (an unfinished recording, a folder of recordings or a dataset) it is
    combined over the files `load_recording` reads, whoever wrote them: `rows` is their
    rows, `start`/`end` the first and last `received_at` (from a file's metadata, or from
    its column statistics for a file of another tool), other keys as in the first file
    that has them.

    Args:
        path: A Parquet file, a recording whose parts folder is left, a folder of
            recordings or a dataset folder.

    Returns:
        The metadata; empty for a single file written by another tool, and for a folder
        without files.

    Raises:
        FileNotFoundError: Nothing is at `path`.
        NotARecordingError: `path`, or a file in its folder, is not a recording (a rejects
            sidecar, not Parquet, or Parquet without the telemetry columns).
    """
    path = location(path)
    if path.is_file():
        return read_consistent(path, lambda files: _file_keys(files[0]))
    return read_consistent(path, _combined_metadata)


def _file_keys(file: Location) -> dict[str, str]:
    return key_values(recording_footer(file).metadata, skip=frozenset({REPLACES_KEY}))


def _combined_metadata(files: list[Location]) -> dict[str, str]:
    combined: dict[str, str] = {}
    rows = 0
    spans: list[tuple[str, str]] = []
    for file in files:
        footer = recording_footer(file)
        meta = key_values(footer.metadata, skip=frozenset({REPLACES_KEY}))
        for key, value in meta.items():
            combined.setdefault(key, value)
        rows += footer.num_rows
        if "start" in meta and "end" in meta:
            spans.append((meta["start"], meta["end"]))
        else:  # another tool's file: its statistics say
            span = footer_time_range(file, footer, "received_at")
            if span is not None:
                spans.append((iso_ns(span[0]), iso_ns(span[1])))
    if not files:
        return combined
    combined["rows"] = str(rows)
    if spans:
        combined["start"] = min(low for low, _ in spans)
        combined["end"] = max(high for _, high in spans)
    else:
        combined.pop("start", None)
        combined.pop("end", None)
    return combined


def load_rejects(path: str | Path | StorePath) -> pd.DataFrame:
    """Read the rejected messages of a recording.

    Args:
        path: The recording (its `<stem>.rejects.parquet` sidecar is read, or the rejects
            parts of an unfinished recording) or the sidecar itself.

    Returns:
        One row per rejected message, in arrival order; an empty frame with the same columns
        when the recording has none.

    Raises:
        FileNotFoundError: Neither the recording nor its sidecar exists.
        NotARecordingError: The path's name is not UTF-8 (a rejects part so named is
            skipped with a warning).
        OSError: A rejects file cannot be read.
    """
    path = location(path)
    check_utf8_path(path)
    files: list[Location]
    if path.name.endswith(REJECTS_SUFFIX):
        if not path.is_file():
            raise FileNotFoundError(f"no rejects file at {path}")
        files = [path]
    elif path.is_dir() and is_parts_dir(path):
        files = sorted_parts(readable_files(path.glob(REJECTS_PART_GLOB)))
    elif rejects_sidecar(path).is_file():
        files = [rejects_sidecar(path)]
    elif parts_dir(path).is_dir():
        files = sorted_parts(readable_files(parts_dir(path).glob(REJECTS_PART_GLOB)))
    elif path.exists():
        files = []
    else:
        raise FileNotFoundError(
            f"no recording at {path} and no {rejects_sidecar(path).name} beside it"
        )
    if not files:
        return REJECTS_SCHEMA.empty_table().to_pandas()
    filesystem, _ = filesystem_path(files[0])
    where = [filesystem_path(file)[1] for file in files]
    dataset = ds.dataset(where, schema=REJECTS_SCHEMA, format="parquet", filesystem=filesystem)
    with translated(path):
        return dataset.to_table().to_pandas()


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
    return pa.array(name_list(values), type=pa.string())


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


def recording_dataset(files: Sequence[Location]) -> ds.FileSystemDataset:
    """Return a dataset of `files` in that order, in the canonical schema, each checked.

    Whatever a file stores (int64 values of a pandas backfill, microsecond times, plain
    strings), the dataset reads it as `ARROW_SCHEMA`: one schema for `load_recording` and
    `query`. The footers read for the check stay cached in the fragments, so the scan does
    not read them again.

    Raises:
        FileNotFoundError: A file vanished.
        NotARecordingError: A file is a rejects file, not Parquet, lacks the telemetry
            columns or has one of another kind (text in `value`); the message names it.
    """
    file_format = ds.ParquetFileFormat()
    # The files of one read are in one place: one filesystem, local or a store's.
    filesystem = filesystem_path(files[0])[0] if files else pafs.LocalFileSystem()
    fragments = []
    for file in files:
        if file.name.endswith(REJECTS_SUFFIX):
            raise rejects_error(file)
        fragment = file_format.make_fragment(filesystem_path(file)[1], filesystem)
        try:
            with translated(file):
                schema = fragment.physical_schema
        except pa.ArrowInvalid as exc:
            raise not_parquet_error(file, exc) from exc
        check_recording(file, schema.names)
        _check_kinds(file, schema)
        fragments.append(fragment)
    return ds.FileSystemDataset(fragments, ARROW_SCHEMA, file_format, filesystem)


def _check_kinds(file: Location, schema: pa.Schema) -> None:
    for field in ARROW_SCHEMA:
        index = schema.get_field_index(field.name)
        if index >= 0 and not _same_kind(schema.field(index).type, field.type):
            raise not_telemetry_error(
                file,
                f"cannot be read as a recording: its column {field.name!r} is "
                f"{schema.field(index).type}, not {field.type}",
            )


def _same_kind(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Whether a file's column converts to the canonical type without loss of meaning."""
    if pa.types.is_null(actual):
        return True
    if pa.types.is_timestamp(expected):
        return bool(pa.types.is_timestamp(actual))
    if pa.types.is_floating(expected):
        return bool(
            pa.types.is_floating(actual)
            or pa.types.is_integer(actual)
            or pa.types.is_decimal(actual)
        )
    if pa.types.is_dictionary(actual):
        actual = actual.value_type
    return bool(
        pa.types.is_string(actual)
        or pa.types.is_large_string(actual)
        or pa.types.is_string_view(actual)
    )


def recording_footer(path: Location) -> pq.FileMetaData:
    """Return the footer of a recording's file, checked to hold telemetry.

    Raises:
        FileNotFoundError: The file vanished.
        NotARecordingError: It is a rejects file, not Parquet, lacks the telemetry columns
            or has one of another kind (text in `value`).
    """
    if path.name.endswith(REJECTS_SUFFIX):
        raise rejects_error(path)
    filesystem, where = filesystem_path(path)
    try:
        with translated(path):
            footer = pq.read_metadata(where, filesystem=filesystem)
    except pa.ArrowInvalid as exc:
        raise not_parquet_error(path, exc) from exc
    schema = footer.schema.to_arrow_schema()
    check_recording(path, schema.names)
    _check_kinds(path, schema)
    return footer


def check_recording(path: Location, names: Sequence[str]) -> None:
    """Raise unless a file with the columns `names` is a telemetry recording.

    Raises:
        NotARecordingError: The columns are a rejects file's, or required ones are missing.
    """
    present = set(names)
    if set(REJECTS_SCHEMA.names) <= present:
        raise rejects_error(path)
    missing = [name for name in _REQUIRED_COLUMNS if name not in present]
    if not present.intersection(_VALUE_COLUMNS):
        missing.append(_VALUE_COLUMNS[0])
    if missing:
        columns = "column " if len(missing) == 1 else "columns "
        raise not_telemetry_error(
            path, f"is not a telemetry recording: it has no {columns}{', '.join(missing)}"
        )
