"""What the dashboard reads from its collector: the new rows, the latest values, a selection.

A refresh reads only the rows received since the last one (the window hands out a time range
without building the rest), so a refresh costs what arrived, not what is held, and a
dashboard of a busy collector leaves ingest its CPU. The latest values are kept up to date
from those rows, and rebuilt from the whole window now and then.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from tesaiot_data.readers.live import latest_rows
from tesaiot_data.schema import epoch_ns

if TYPE_CHECKING:
    from tesaiot_data.collector import Collector

__all__ = ["CollectorRows"]

_LATEST_RESYNC = 30.0  # seconds between rebuilds of the latest values from the whole window


def _utc(ns: int) -> pd.Timestamp:
    return pd.Timestamp(ns, unit="ns", tz="UTC")


class CollectorRows:
    """The rows one dashboard has read from its collector, and what it keeps of them.

    Args:
        collector: The collector shown.

    Attributes:
        seen_ns: The newest receive time read so far (ns since the epoch), None before any.
    """

    def __init__(self, collector: Collector) -> None:
        self._collector = collector
        self.seen_ns: int | None = None
        self._latest: pd.DataFrame | None = None  # the latest-values rows, kept up to date
        self._latest_synced = 0.0  # time.monotonic() of the last full latest()

    def new_rows(self) -> pd.DataFrame:
        """The rows received since the last call (all the window's at the first).

        Returns:
            The rows, as `Collector.frame()` returns them.
        """
        seen = self.seen_ns
        collector = self._collector
        delta = collector.frame(since=_utc(seen + 1)) if seen is not None else collector.frame()
        if len(delta):
            self.seen_ns = max(seen or 0, int(epoch_ns(delta["received_at"]).max()))
        return delta

    def selection(self, *, since_ns: int, metric: str, devices: Sequence[str]) -> pd.DataFrame:
        """The window's rows of one metric and some devices, up to the rows read so far.

        Newer rows come with the next `new_rows()`, so none is read twice.

        Args:
            since_ns: The first receive time to read, in ns since the epoch.
            metric: The metric.
            devices: The devices.

        Returns:
            The rows, as `Collector.frame()` returns them.
        """
        frame = self._collector.frame(since=_utc(since_ns), metrics=[metric], devices=devices)
        if self.seen_ns is not None and len(frame):
            frame = frame.loc[epoch_ns(frame["received_at"]) <= self.seen_ns]
        return frame

    def latest(self, delta: pd.DataFrame) -> pd.DataFrame:
        """The newest row of each (device, metric): the last rows merged with `delta`'s.

        Rebuilt from the whole window (`Collector.latest()`) every `_LATEST_RESYNC` seconds,
        so a device whose rows all left the window leaves the table. Both go through
        `latest_rows()`, so a reading without a unit keeps the last one shown, as in `latest()`.

        Args:
            delta: The rows of the last `new_rows()`.

        Returns:
            The rows of `Collector.latest()`, with `age_s` as of now.
        """
        now = time.monotonic()
        if self._latest is None or now - self._latest_synced >= _LATEST_RESYNC:
            self._latest = self._collector.latest()
            self._latest_synced = now
            return self._latest
        if len(delta):
            newest = delta.drop_duplicates(subset=["device_id", "metric"], keep="last")
            if newest["unit"].isna().any():  # latest_rows() looks back for their last unit
                newest = delta
            merged = pd.concat([self._latest.drop(columns="age_s"), newest], ignore_index=True)
            self._latest = latest_rows(merged)
        age = (pd.Timestamp.now(tz="UTC") - self._latest["received_at"]).dt.total_seconds()
        self._latest = self._latest.assign(age_s=age)
        return self._latest
