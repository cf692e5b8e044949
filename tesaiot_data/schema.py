"""The telemetry frame's columns and dtypes, shared by the collector and the Parquet files."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

__all__ = [
    "ARROW_SCHEMA",
    "CATEGORY_COLUMNS",
    "COLUMNS",
    "TIME_COLUMNS",
    "empty_frame",
    "to_canonical",
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

#: The one Arrow schema of every Parquet file this package writes.
ARROW_SCHEMA = pa.schema(
    [
        pa.field("timestamp", pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field("received_at", pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field("device_id", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("sensor_type", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("metric", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("unit", pa.dictionary(pa.int32(), pa.string())),
        pa.field("value_text", pa.dictionary(pa.int32(), pa.string())),
    ]
)


# What to_canonical makes of a column, for its error message.
_TARGETS = {"timestamp": "UTC times", "received_at": "UTC times", "value": "float64 numbers"}


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
            data[name] = pd.Series([], dtype="category")
    return pd.DataFrame(data)


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
        return column.astype("category")
    return column
