"""The live window's derived frames: the newest row per device and metric, the rejects.

`Collector.latest()` and the dashboard's latest-values table both come from `latest_rows()`,
so both keep a reading's unit the same way; `Collector.rejects()` is `rejects_frame()`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from tesaiot_data.messages import Reject

__all__ = ["LATEST_KEYS", "latest_rows", "rejects_frame"]

#: The columns that name one series: one row of `latest_rows()` each.
LATEST_KEYS = ("device_id", "metric")


def latest_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the newest row of each (device_id, metric) of a frame in arrival order.

    Its unit is the newest one that (device_id, metric) sent within `frame`: a reading
    sent without one (a flat payload between standard ones) keeps the unit shown, instead
    of blanking it until the next reading that carries one.

    Args:
        frame: Rows in arrival order (oldest first) with at least the columns device_id,
            metric and unit, as `Collector.frame()` returns them.

    Returns:
        One row per (device_id, metric), in the columns and dtypes of `frame`, sorted by
        device_id then metric (as strings), with a fresh RangeIndex.
    """
    keys = list(LATEST_KEYS)
    latest = frame.drop_duplicates(subset=keys, keep="last")
    if latest["unit"].isna().any():
        units = frame.loc[frame["unit"].notna(), [*keys, "unit"]]
        units = units.drop_duplicates(subset=keys, keep="last")
        merged = latest.drop(columns="unit").merge(units, on=keys, how="left")
        latest = merged[list(frame.columns)].astype({"unit": frame["unit"].dtype})
    return latest.sort_values(keys, key=lambda column: column.astype(str)).reset_index(drop=True)


def rejects_frame(rejects: Sequence[Reject]) -> pd.DataFrame:
    """Return rejected messages as a frame, one row each, in the order given.

    Args:
        rejects: The rejected messages.

    Returns:
        A RangeIndex and the columns received_at (datetime64[ns, UTC]), topic (object str),
        reason (category of `RejectReason` values), detail (object str), payload (bytes)
        and payload_size (int64, bytes).
    """
    return pd.DataFrame(
        {
            "received_at": pd.to_datetime(
                pd.array([r.received_ns for r in rejects], dtype="int64"), unit="ns", utc=True
            ),
            "topic": [r.topic for r in rejects],
            "reason": pd.Categorical([r.reason.value for r in rejects]),
            "detail": [r.detail for r in rejects],
            "payload": [r.payload for r in rejects],
            "payload_size": pd.array([r.payload_size for r in rejects], dtype="int64"),
        }
    )
