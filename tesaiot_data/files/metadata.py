"""The `tesaiot.*` key-value metadata of a file: one prefix, checked, written and read here.

A file's footer holds the caller's pairs (topic, broker, client id) and the ones computed
when it is written: `rows`, `start` and `end` (ISO UTC of the first and last `received_at`),
`version`, and for a compacted file `compacted_at` and `replaces`. Keys are stored with the
prefix `tesaiot.` and handed to callers without it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tesaiot_data._version import VERSION
from tesaiot_data.files.store import Location, filesystem_path
from tesaiot_data.schema import TIME_TYPE, epoch_ns

__all__ = [
    "PREFIX",
    "REPLACES_KEY",
    "check_metadata",
    "file_metadata",
    "footer_time_range",
    "iso_datetime",
    "iso_ns",
    "key_values",
    "prefixed",
    "time_range_ns",
]

logger = logging.getLogger(__name__)

#: The prefix of every key this package stores in a file's footer.
PREFIX = "tesaiot."
#: The key (`tesaiot.replaces`) of a compacted file's metadata: a JSON list of the names of
#: the files in its folder that it replaces. Readers skip every file so listed.
REPLACES_KEY = "replaces"
# Computed from the data when a file is written; a caller's value for them is ignored.
_RESERVED_KEYS = frozenset({"rows", "start", "end", "version"})
# Nanoseconds in one step of each Arrow time unit.
_NS_PER_UNIT = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Return a caller's metadata with bare keys, without the keys computed when writing.

    Args:
        metadata: String key-value pairs, keys with or without the `tesaiot.` prefix.

    Returns:
        The pairs, keys without the prefix; `rows`, `start`, `end` and `version` dropped
        (logged as a warning).

    Raises:
        TypeError: A key or value is not a string.
    """
    out: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"metadata {key!r}: {value!r} is not str: str (hint: convert values with str())"
            )
        bare = key.removeprefix(PREFIX)
        if bare in _RESERVED_KEYS:
            logger.warning(
                "metadata key %r is computed when writing; the given value is ignored", key
            )
            continue
        out[bare] = value
    return out


def prefixed(metadata: Mapping[str, str]) -> dict[str, str]:
    """Return `metadata` with every key prefixed by `tesaiot.`, as files store it."""
    return {f"{PREFIX}{key}": value for key, value in metadata.items()}


def key_values(
    raw: Mapping[bytes, bytes] | None, *, skip: frozenset[str] = frozenset()
) -> dict[str, str]:
    """Return the `tesaiot.*` pairs of a footer's raw metadata, keys without the prefix.

    Args:
        raw: A Parquet footer's key-value metadata (`pq.read_metadata(path).metadata`).
        skip: Bare keys to leave out.

    Returns:
        The pairs, decoded as UTF-8 (undecodable bytes replaced); other keys (pandas',
        Arrow's) are left out.
    """
    out = {}
    for key, value in (raw or {}).items():
        text = key.decode("utf-8", "replace")
        if text.startswith(PREFIX):
            bare = text.removeprefix(PREFIX)
            if bare not in skip:
                out[bare] = value.decode("utf-8", "replace")
    return out


def file_metadata(
    table: pa.Table, caller: Mapping[str, str], time_column: str | None
) -> dict[str, str]:
    """Return the prefixed metadata of a file that holds `table`.

    Args:
        table: The file's rows.
        caller: Checked caller metadata (see `check_metadata`).
        time_column: The column whose first and last times become `start` and `end`, or
            None for none.

    Returns:
        The caller's pairs with `rows`, `start`, `end` (when there are rows) and `version`,
        every key prefixed.
    """
    meta = dict(caller)
    meta["rows"] = str(table.num_rows)
    if time_column is not None and table.num_rows:
        low, high = time_range_ns(table, time_column)
        meta["start"], meta["end"] = iso_ns(low), iso_ns(high)
    meta["version"] = VERSION
    return prefixed(meta)


def time_range_ns(table: pa.Table | pa.RecordBatch, column: str = "received_at") -> tuple[int, int]:
    """Return the first and last time of a non-empty time column in epoch nanoseconds."""
    ns = epoch_ns(table.column(column))
    return int(ns.min()), int(ns.max())


def iso_ns(ns: int) -> str:
    """Return an epoch time in nanoseconds as ISO UTC, to the microsecond."""
    # Microseconds, so that datetime.fromisoformat() of Python 3.10 can read it back.
    return pd.Timestamp(ns, tz="UTC").isoformat(timespec="microseconds")


def iso_datetime(moment: datetime) -> str:
    """Return a time as ISO UTC, to the microsecond."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def footer_time_range(
    path: Location, footer: pq.FileMetaData, column: str = "received_at"
) -> tuple[int, int] | None:
    """Return the first and last time of a file's time column in epoch ns, from its footer.

    The row groups' statistics are in the unit the file stores (seconds, milliseconds,
    microseconds or nanoseconds: pandas writes microseconds, DuckDB and Spark too); they
    are scaled to nanoseconds here. Without statistics (or for INT96 times) the column is
    read.

    Args:
        path: The file, read only when its statistics do not tell.
        footer: Its footer (`pq.read_metadata(path)`).
        column: A time column of the file.

    Returns:
        `(first, last)` in epoch nanoseconds (naive times read as UTC), or None for a file
        without rows.

    Raises:
        KeyError: The file has no such column.
        OSError: The column had to be read and could not be.
    """
    if footer.num_rows == 0:
        return None
    names = footer.schema.names
    if column not in names:
        raise KeyError(column)
    index = names.index(column)
    kind = footer.schema.to_arrow_schema().field(column).type
    scale = _NS_PER_UNIT.get(kind.unit) if pa.types.is_timestamp(kind) else None
    lows, highs = [], []
    for number in range(footer.num_row_groups):
        group = footer.row_group(number)
        if group.num_rows == 0:
            continue
        chunk = group.column(index)
        stats = chunk.statistics
        stated = chunk.physical_type == "INT64" and stats is not None and stats.has_min_max
        if scale is None or not stated:
            filesystem, where = filesystem_path(path)
            table = pq.read_table(where, columns=[column], filesystem=filesystem)
            values = epoch_ns(table.column(0).cast(TIME_TYPE))
            return (int(values.min()), int(values.max())) if values.size else None
        lows.append(int(stats.min_raw) * scale)
        highs.append(int(stats.max_raw) * scale)
    return (min(lows), max(highs)) if lows else None
