"""What the interactive chart is sent at each refresh: the new points of what it shows.

A new metric, device choice or window sends the window's points anew; otherwise only the
rows received since the last refresh go. The time axis is the window up to now by the
devices' clocks (`chart.time_axis`), as in the matplotlib chart: points dated outside it are
left out and counted for as long as they are in the window.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tesaiot_data.dashboard.chart import off_axis_note, time_axis
from tesaiot_data.schema import epoch_ns

if TYPE_CHECKING:
    from tesaiot_data.dashboard.live_chart import LiveChart
    from tesaiot_data.dashboard.rows import CollectorRows

__all__ = ["LiveFeed"]


class LiveFeed:
    """Feeds one `LiveChart` from a dashboard's rows.

    Attributes:
        plotted: The devices with a line after the last update.
        off_axis: Points of the shown metric and devices, dated outside the time axis, that
            arrived within the window.
    """

    def __init__(self) -> None:
        # The last (metric, devices, window): a change sends the window anew.
        self._key: tuple[str | None, tuple[str, ...], int] | None = None
        self._off_axis_log: list[tuple[int, int]] = []  # (refresh ns, off-axis points in it)
        self._units: set[str] = set()  # the units of the points sent since the last anew
        self.plotted: list[str] = []
        self.off_axis = 0

    def update(
        self,
        chart: LiveChart,
        rows: CollectorRows,
        delta: pd.DataFrame,
        *,
        metric: str | None,
        devices: list[str],
        window_ns: int,
    ) -> None:
        """Send the chart the rows of `delta` it shows (or the whole window, anew).

        Args:
            chart: The live chart.
            rows: Where the window's rows are read from, when they are sent anew.
            delta: The rows received since the last refresh.
            metric: The metric shown.
            devices: The devices shown.
            window_ns: The time axis's length, in ns.
        """
        now_ns = time.time_ns()
        key = (metric, tuple(devices), window_ns)
        anew = key != self._key
        if metric is None or not devices:
            if anew or chart.points:
                chart.set_data(
                    {}, metric=metric or "", unit="", now_ms=now_ns / 1e6, window_ms=window_ns / 1e6
                )
            self._key = key
            self.plotted, self.off_axis = [], 0
            return
        if anew:
            frame = rows.selection(since_ns=now_ns - window_ns, metric=metric, devices=devices)
        else:
            frame = delta
        if frame.empty:
            keep = np.zeros(0, dtype=bool)
            stamps = np.zeros(0, dtype=np.int64)
        else:
            keep = (
                (frame["metric"] == metric).to_numpy()
                & frame["device_id"].isin(devices).to_numpy()
                & frame["value"].notna().to_numpy()
            )
            stamps = epoch_ns(frame["timestamp"])
        axis_start, axis_end = time_axis(now_ns, window_ns)
        on_axis = (stamps >= axis_start) & (stamps <= axis_end)
        off_axis = int((keep & ~on_axis).sum())
        # Off-axis points of earlier refreshes, counted while they are in the window.
        self._off_axis_log.append((now_ns, off_axis))
        if anew:
            self._off_axis_log = [(now_ns, off_axis)]
        self._off_axis_log = [(t, n) for t, n in self._off_axis_log if t >= now_ns - window_ns]
        off_total = sum(n for _t, n in self._off_axis_log)
        send = keep & on_axis
        data = _points_by_device(frame, send, stamps) if send.any() else {}
        note = off_axis_note(off_total)
        units = set(frame.loc[keep, "unit"].dropna().astype(str).unique()) if len(frame) else set()
        if anew:
            self._units = units
            chart.set_data(
                data,
                metric=metric,
                unit=", ".join(sorted(units)),
                now_ms=now_ns / 1e6,
                window_ms=window_ns / 1e6,
                note=note,
            )
            self._key = key
        else:
            if not units <= self._units:  # the unit label follows new data
                self._units |= units
                chart.unit = ", ".join(sorted(self._units))
            chart.append(data, now_ms=now_ns / 1e6, note=note)
        self.plotted = chart.devices
        self.off_axis = off_total


def _points_by_device(
    frame: pd.DataFrame, send: np.ndarray, stamps: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Device id -> (times in ms, values) of the picked rows, each sorted by time."""
    rows = frame.loc[send]
    t_ms = stamps[send] / 1e6
    values = rows["value"].to_numpy(dtype=float)
    devices = rows["device_id"].astype(str).to_numpy()
    order = np.lexsort((t_ms, devices))
    t_ms, values, devices = t_ms[order], values[order], devices[order]
    bounds = np.flatnonzero(devices[1:] != devices[:-1]) + 1
    return {
        str(d[0]): (t, y)
        for d, t, y in zip(
            np.split(devices, bounds),
            np.split(t_ms, bounds),
            np.split(values, bounds),
            strict=True,
        )
        if len(d)
    }
