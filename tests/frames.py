"""Telemetry frames and rejects for the Parquet and sink tests, and how to compare them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tesaiot_data.messages import Reject, RejectReason
from tesaiot_data.schema import CATEGORY_COLUMNS, COLUMNS

T0 = pd.Timestamp("2025-12-09T23:59:58", tz="UTC")


UTC_NS = pd.DatetimeTZDtype(unit="ns", tz="UTC")


def make_frame(
    rows: int,
    *,
    start: pd.Timestamp = T0,
    step_ns: int = 1_000_000,
    devices: int = 5,
    metrics: int = 4,
    prefix: str = "dev",
    seed: int = 0,
) -> pd.DataFrame:
    """A canonical frame with NaN values, missing units and text values mixed in."""
    rng = np.random.default_rng(seed)
    times = start + pd.to_timedelta(np.arange(rows) * step_ns, unit="ns")
    values = rng.normal(20, 5, rows)
    values[::7] = np.nan
    missing = np.array(None, dtype=object)  # numpy's stubs take no bare None in np.where
    text = np.where(np.arange(rows) % 7 == 0, "on", missing)
    unit = np.where(np.arange(rows) % 5 == 0, missing, "C")
    return pd.DataFrame(
        {
            "timestamp": times + pd.to_timedelta(rng.integers(0, 999, rows), unit="ns"),
            "received_at": times,
            "device_id": pd.Categorical([f"{prefix}-{i % devices:03d}" for i in range(rows)]),
            "sensor_type": pd.Categorical(["env"] * rows),
            "metric": pd.Categorical([f"m{i % metrics}" for i in range(rows)]),
            "value": values,
            "unit": pd.Categorical(unit),
            "value_text": pd.Categorical(text),
        }
    )


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with categories as plain values, so frames with other category lists compare."""
    out = frame.reset_index(drop=True).copy()
    for name in CATEGORY_COLUMNS:
        out[name] = out[name].astype(object).where(out[name].notna(), None)
    return out


def assert_same_rows(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(actual.columns) == list(COLUMNS)
    assert isinstance(actual.index, pd.RangeIndex)
    assert actual.index.start == 0
    assert actual["timestamp"].dtype == UTC_NS
    assert actual["received_at"].dtype == UTC_NS
    assert actual["value"].dtype == "float64"
    for name in CATEGORY_COLUMNS:
        assert isinstance(actual[name].dtype, pd.CategoricalDtype), name
    pd.testing.assert_frame_equal(plain(actual), plain(expected))


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def raw_metadata(path: Path) -> dict[bytes, bytes]:
    """A file's key-value metadata as pyarrow reads it (read_metadata is for recordings)."""
    return dict(pq.read_metadata(path).metadata or {})


def reject(index: int, payload: bytes = b"\xff\xfe{not json") -> Reject:
    return Reject(
        topic=f"device/d{index}/telemetry",
        payload=payload,
        payload_size=len(payload) + 1000,
        reason=RejectReason.NOT_JSON if index % 2 else RejectReason.BAD_TOPIC,
        detail=f"detail {index}",
        received_ns=1_765_324_800_250_000_000 + index * 10**9,
    )


def with_unused_categories(rows: int, unused: int) -> pd.DataFrame:
    """A frame whose string columns share a dictionary of `unused` strings the rows never use,
    like the rolling window's after many messages with unique text."""
    frame = make_frame(rows)
    extra = pd.Index([f"seen-long-ago-{i:06d}" for i in range(unused)])
    for name in CATEGORY_COLUMNS:
        column = frame[name].array
        categories = extra.append(column.categories)
        codes = np.where(column.codes >= 0, column.codes.astype(np.int64) + unused, -1)
        frame[name] = pd.Categorical.from_codes(codes, categories=categories)
    return frame
