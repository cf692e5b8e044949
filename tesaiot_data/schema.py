"""The telemetry columns, their pandas dtypes and Arrow schemas: one home for all of them."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = [
    "ARROW_SCHEMA",
    "CATEGORY_COLUMNS",
    "COLUMNS",
    "REJECTS_SCHEMA",
    "TIME_COLUMNS",
    "TIME_TYPE",
    "empty_frame",
    "epoch_ns",
    "is_canonical",
    "text_categories",
    "to_canonical",
    "used_categories",
]

COLUMNS = (
    "timestamp",
    "received_at",
    "device_id",
    "sensor_type",
    "metric",
    "value",
    "unit",
    "value_text",
)
TIME_COLUMNS = ("timestamp", "received_at")
CATEGORY_COLUMNS = ("device_id", "sensor_type", "metric", "unit", "value_text")

#: Arrow's type of both time columns: int64 nanoseconds since the epoch, UTC.
TIME_TYPE = pa.timestamp("ns", tz="UTC")
_STRINGS = pa.dictionary(pa.int32(), pa.string())

#: The one Arrow schema of every telemetry batch and Parquet file this package writes.
ARROW_SCHEMA = pa.schema(
    [
        pa.field("timestamp", TIME_TYPE, nullable=False),
        pa.field("received_at", TIME_TYPE, nullable=False),
        pa.field("device_id", _STRINGS, nullable=False),
        pa.field("sensor_type", _STRINGS, nullable=False),
        pa.field("metric", _STRINGS, nullable=False),
        pa.field("value", pa.float64()),
        pa.field("unit", _STRINGS),
        pa.field("value_text", _STRINGS),
    ]
)

#: The schema of a recording's rejects sidecar (`<stem>.rejects.parquet`).
REJECTS_SCHEMA = pa.schema(
    [
        pa.field("received_at", TIME_TYPE, nullable=False),
        pa.field("topic", pa.string(), nullable=False),
        pa.field("reason", _STRINGS, nullable=False),
        pa.field("detail", pa.string()),
        pa.field("payload", pa.binary()),
        pa.field("payload_size", pa.int64(), nullable=False),
    ]
)


# What to_canonical makes of a column, for its error message.
_TARGETS = {"timestamp": "UTC times", "received_at": "UTC times", "value": "float64 numbers"}


def text_categories(values: Iterable[str]) -> pd.Index:
    """Return the categories of a canonical category column, holding `values`.

    pandas' default string dtype (`str`: pandas 3's `StringDtype(na_value=nan)`; `object` on
    pandas 2), which is what pandas makes of the Parquet files' dictionary columns. So
    `frame()`, `history()`, `load_recording()` and `query()` agree, and `pd.concat` of their
    frames keeps the category dtype where the category sets are equal, and gives `str`
    columns where they differ.

    Args:
        values: The category strings, distinct.

    Returns:
        An Index of dtype `str`.
    """
    return pd.Index(list(values), dtype=str)


def empty_frame() -> pd.DataFrame:
    """Return a frame with no rows and the canonical columns and dtypes."""
    utc = pd.DatetimeTZDtype(unit="ns", tz="UTC")
    data: dict[str, pd.Series] = {}
    for name in COLUMNS:
        if name in TIME_COLUMNS:
            data[name] = pd.Series([], dtype=utc)
        elif name == "value":
            data[name] = pd.Series([], dtype="float64")
        else:
            data[name] = pd.Series([], dtype=pd.CategoricalDtype(text_categories(())))
    return pd.DataFrame(data)


def epoch_ns(column: pd.Series | pd.Index | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Return a time column as int64 nanoseconds since the epoch (UTC).

    Args:
        column: A pandas time column (`datetime64[ns, UTC]`, or naive `datetime64[ns]` read
            as UTC) or an Arrow column of `TIME_TYPE`, without missing values.

    Returns:
        An int64 array of one value per row; a view of the column where no copy is needed.
    """
    if isinstance(column, pa.ChunkedArray):
        chunked: np.ndarray = column.cast(pa.int64()).to_numpy()
        return chunked
    if isinstance(column, pa.Array):
        array: np.ndarray = column.cast(pa.int64()).to_numpy(zero_copy_only=False)
        return array
    times: np.ndarray = column.to_numpy(dtype="datetime64[ns]")
    return times.view("int64")


def is_canonical(frame: pd.DataFrame, *, exact_columns: bool = True) -> bool:
    """Return whether `frame` has the canonical dtypes, so `to_canonical` would not change it.

    Args:
        frame: Any frame.
        exact_columns: Also require exactly the canonical columns in their order; False
            allows other columns and another order.

    Returns:
        True when the canonical columns are unique and have their dtypes.
    """
    if exact_columns and tuple(frame.columns) != COLUMNS:
        return False
    dtypes = frame.dtypes
    utc = pd.DatetimeTZDtype(unit="ns", tz="UTC")
    return bool(
        frame.columns.is_unique
        and all(name in dtypes for name in COLUMNS)
        and dtypes["timestamp"] == utc
        and dtypes["received_at"] == utc
        and dtypes["value"] == "float64"
        and all(isinstance(dtypes[c], pd.CategoricalDtype) for c in CATEGORY_COLUMNS)
    )


def to_canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """Return `frame` with the canonical column order and dtypes (a no-op when it has them).

    Args:
        frame: A frame with at least the canonical columns; others are dropped.

    Returns:
        The frame: UTC nanosecond timestamps, float64 values, categorical strings.

    Raises:
        ValueError: A column cannot be converted to its dtype (times that are not times,
            values that are not numbers); the message names the column.
    """
    out = {}
    for name in COLUMNS:
        column = frame[name] if name in frame else pd.Series(None, index=frame.index, dtype=object)
        try:
            out[name] = _convert(name, column)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(
                f"column {name!r} cannot be converted to {_TARGETS.get(name, 'category')}: {exc}"
            ) from exc
    return pd.DataFrame(out, index=frame.index)


def _convert(name: str, column: pd.Series) -> pd.Series:
    if name in TIME_COLUMNS:
        if not isinstance(column.dtype, pd.DatetimeTZDtype):
            column = pd.to_datetime(column, utc=True)
        return column.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    if name == "value":
        return column.astype("float64")
    if not isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype("category")
    found = column.cat.categories
    # Strings held as `object` (a frame built by hand, pandas 2) take the canonical dtype;
    # anything else is left for the Arrow conversion to reject with the column's name.
    if found.dtype != text_categories(()).dtype and pd.api.types.infer_dtype(found) == "string":
        return column.cat.rename_categories(text_categories(found))
    return column


def used_categories(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Return the entries of a dictionary that `codes` use, and the codes remapped to them.

    Files and frames carry only the strings their rows use: a rolling window's dictionaries
    are shared by many rows and only grow, and a small file must not hold every string the
    collector ever saw. O(rows + size) when the dictionary is no larger than the rows, and
    a sort of the codes when it is, so a few rows never touch a large dictionary.

    Args:
        codes: Integer codes into a dictionary of `size` entries; negative means missing.
        size: How many entries the dictionary has.

    Returns:
        `(used, remapped)`: the positions of the used entries, ascending, and the codes as
        positions in `used` (missing values stay -1); None when every entry is used.
    """
    if size <= codes.size:  # a count per entry is cheap: O(rows + size), no sort
        shifted = codes.astype(np.intp) + 1  # missing values (-1) count in slot 0
        used_mask = np.bincount(shifted, minlength=size + 1)[1:] > 0
        if used_mask.all():
            return None
        remap = np.concatenate(([-1], np.cumsum(used_mask) - 1))
        return np.flatnonzero(used_mask), remap[shifted]
    used, inverse = np.unique(codes, return_inverse=True)
    inverse = inverse.reshape(-1)
    if used.size and used[0] < 0:
        return used[1:], inverse - 1
    return used, inverse
