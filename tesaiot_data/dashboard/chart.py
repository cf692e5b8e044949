"""The dashboard's chart: one metric of some devices over a time window, as PNG bytes.

One matplotlib `Figure` drawn with the Agg backend (never pyplot, so nothing is registered
globally). Its axes and lines are reused from frame to frame, so hours of refreshing neither
flicker nor grow memory. A line with more than `MAX_POINTS_PER_LINE` points is thinned by
`downsample`, which keeps each bucket's minimum and maximum.

The time axis is the chosen window up to now, by the devices' timestamps: a device whose
clock is wrong cannot stretch it. Its points outside the window are left out and counted on
the chart ("12 points outside the time axis (device clock?)").
"""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Sequence
from datetime import timezone
from typing import Any

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tesaiot_data.dashboard.format import short_ids

__all__ = [
    "AXIS_PAD",
    "MAX_LEGEND_ENTRIES",
    "MAX_POINTS_PER_LINE",
    "Chart",
    "downsample",
    "off_axis_note",
    "time_axis",
]

#: A line with more points than this is downsampled (min/max per bucket) before drawing.
MAX_POINTS_PER_LINE = 2_000
#: Devices named in the legend; the rest are summed up as "+N more".
MAX_LEGEND_ENTRIES = 10
#: Share of the window left free right of "now" on the time axis: room for the newest point.
AXIS_PAD = 0.02

_FIGSIZE = (9.0, 3.6)  # inches, at _DPI: a 900 x 360 px chart
_DPI = 100
_NOTE_COLOR = "#b35900"
_TAB10 = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
# Ten colours, then the same ten dashed and dotted: 30 lines that all look different.
_LINE_STYLES = tuple((color, style) for style in ("-", "--", ":") for color in _TAB10)


def time_axis(now_ns: int, window_ns: int) -> tuple[int, int]:
    """The time axis of both charts: the window up to now, and `AXIS_PAD` of it beyond.

    Args:
        now_ns: Now, in ns since the epoch.
        window_ns: The window's length, in ns.

    Returns:
        The axis's first and last moments, in ns since the epoch; a point dated outside
        them (a device's clock is off) is left out and counted (`off_axis_note`).
    """
    return now_ns - window_ns, now_ns + int(window_ns * AXIS_PAD)


def off_axis_note(count: int) -> str:
    """The line under a chart that counts the points left out of its time axis ("" for none)."""
    if not count:
        return ""
    return f"{count:,} point{'' if count == 1 else 's'} outside the time axis (device clock?)"


def downsample(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Thin a line to at most `max_points` points, keeping each bucket's minimum and maximum.

    Spikes survive, unlike with every-n-th-point thinning.

    Args:
        x: The x values (sorted).
        y: The y values (NaN allowed).
        max_points: The most points to return (at least 2).

    Returns:
        The thinned x and y, in x order.
    """
    n = len(x)
    if n <= max_points:
        return x, y
    buckets = max(1, max_points // 2)
    size = -(-n // buckets)  # ceil
    full = (n // size) * size
    shaped = y[:full].reshape(-1, size)
    starts = np.arange(0, full, size)
    low = starts + np.argmin(np.where(np.isnan(shaped), np.inf, shaped), axis=1)
    high = starts + np.argmax(np.where(np.isnan(shaped), -np.inf, shaped), axis=1)
    index = np.unique(np.concatenate([low, high, np.arange(full, n)]))
    return x[index], y[index]


class Chart:
    """One Figure, one Axes and one Line2D per device, redrawn into PNG bytes.

    The figure, its axes and its lines are made once and reused from frame to frame. The
    time axis is the window up to now, by the devices' timestamps; points outside it are
    left out and counted (`off_axis_points`) and written in the chart's corner.

    Attributes:
        figure: The matplotlib Figure, redrawn in place.
        plotted_devices: Devices that had a line in the last drawing, sorted.
        off_axis_points: Points of the last drawing's metric and devices, received within the
            window but dated outside the time axis (a device's clock is off); not drawn.
    """

    def __init__(self) -> None:
        self.figure = Figure(figsize=_FIGSIZE, dpi=_DPI, layout=None)
        self.canvas = FigureCanvasAgg(self.figure)
        self.figure.subplots_adjust(left=0.08, right=0.80, top=0.92, bottom=0.14)
        ax = self.axes = self.figure.add_subplot()
        locator = mdates.AutoDateLocator(tz=timezone.utc, minticks=3, maxticks=8)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=timezone.utc))
        ax.set_xlabel("time (UTC)")
        ax.grid(visible=True, alpha=0.3)
        self.placeholder = ax.text(
            0.5,
            0.5,
            "waiting for data",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="#888888",
        )
        self.note = ax.text(
            0.99,
            0.02,
            "",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            color=_NOTE_COLOR,
        )
        self.lines: dict[str, Line2D] = {}
        self._styles = itertools.cycle(_LINE_STYLES)
        self._more = Line2D([], [], linestyle="none", marker="none")
        self._legend_key: tuple[str, ...] | None = None
        self._ylabel = ""
        self._title = ""
        self.plotted_devices: list[str] = []
        self.off_axis_points = 0

    def _line(self, device: str) -> Line2D:
        line = self.lines.get(device)
        if line is None:
            color, style = next(self._styles)
            (line,) = self.axes.plot(
                [], [], color=color, linestyle=style, linewidth=1.2, label=device
            )
            self.lines[device] = line
        return line

    def draw(
        self,
        frame: pd.DataFrame | None,
        *,
        metric: str | None,
        devices: Sequence[str],
        window_ns: int,
    ) -> bytes:
        """Draw one metric of some devices over the window up to now; return PNG bytes.

        Args:
            frame: The collector's rows (`Collector.frame()`), or None when there is
                nothing to draw (no metric or no device chosen).
            metric: The metric to plot.
            devices: The devices to plot.
            window_ns: How far back the time axis goes, in nanoseconds.

        Returns:
            The chart as PNG.
        """
        # The axis is the chosen window up to now, whatever the devices' clocks say: one
        # reading dated 2262 must not push every other device off the chart.
        now_ns = time.time_ns()
        start_ns, end_ns = time_axis(now_ns, window_ns)
        axis_start = np.datetime64(start_ns, "ns")
        axis_end = np.datetime64(end_ns, "ns")
        data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        unit = ""
        off_axis = 0
        if frame is not None and metric is not None and devices:
            since = pd.Timestamp(now_ns - window_ns, tz="UTC")
            keep = (
                (frame["metric"] == metric).to_numpy()
                & frame["device_id"].isin(devices).to_numpy()
                & (frame["received_at"] >= since).to_numpy()
                & frame["value"].notna().to_numpy()
            )
            frame = frame.loc[keep]
            units = frame["unit"].dropna().astype(str).unique()
            unit = ", ".join(sorted(units))
            for device, group in sorted(
                frame.groupby("device_id", observed=True), key=lambda item: str(item[0])
            ):
                stamps = group["timestamp"].dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
                on_axis = (stamps >= axis_start) & (stamps <= axis_end)  # NaT is neither
                off_axis += len(stamps) - int(on_axis.sum())
                if not on_axis.any():
                    continue
                x = mdates.date2num(stamps[on_axis])
                y = group["value"].to_numpy(dtype=float)[on_axis]
                if len(x) > 1 and not np.all(x[1:] >= x[:-1]):
                    order = np.argsort(x, kind="stable")
                    x, y = x[order], y[order]
                data[str(device)] = downsample(x, y, MAX_POINTS_PER_LINE)
        note = off_axis_note(off_axis)
        xlim = (float(mdates.date2num(axis_start)), float(mdates.date2num(axis_end)))
        self.plotted_devices = sorted(data)
        self.off_axis_points = off_axis
        return self._paint(metric, unit, data, xlim, note)

    def _paint(
        self,
        metric: str | None,
        unit: str,
        data: dict[str, tuple[np.ndarray, np.ndarray]],
        xlim: tuple[float, float],
        note: str,
    ) -> bytes:
        # data: device -> (x in days, y); xlim: the time axis in days; note: the corner text.
        ax = self.axes
        for device, line in self.lines.items():
            if device not in data and line.get_visible():
                line.set_data([], [])
                line.set_visible(False)
        for device, (x, y) in data.items():
            line = self._line(device)
            line.set_data(x, y)
            line.set_visible(True)
        self.placeholder.set_visible(not data)
        if not data:
            waiting = "waiting for data" if metric is None else f"no {metric} values in the window"
            if self.placeholder.get_text() != waiting:
                self.placeholder.set_text(waiting)
        if self.note.get_text() != note:
            self.note.set_text(note)
        ax.set_xlim(*xlim)
        ax.relim(visible_only=True)
        ax.autoscale_view(scalex=False, scaley=True)
        label = metric if not unit else f"{metric} [{unit}]"
        if label != self._ylabel:
            ax.set_ylabel(label or "")
            self._ylabel = label or ""
        title = metric or "no metric yet"
        if title != self._title:
            ax.set_title(title, loc="left", fontsize=11)
            self._title = title
        self._update_legend(sorted(data))
        buffer = io.BytesIO()
        self.canvas.print_png(buffer, pil_kwargs={"compress_level": 1})
        return buffer.getvalue()

    def _update_legend(self, devices: list[str]) -> None:
        key = tuple(devices)
        if key == self._legend_key:
            return
        self._legend_key = key
        old = self.axes.get_legend()
        if old is not None:
            old.remove()
        if not devices:
            return
        names = short_ids(devices)
        shown = devices[:MAX_LEGEND_ENTRIES]
        handles: list[Any] = [self.lines[d] for d in shown]
        labels = [names[d] for d in shown]
        if len(devices) > len(shown):
            handles.append(self._more)
            labels.append(f"+{len(devices) - len(shown)} more")
        self.axes.legend(
            handles,
            labels,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
            frameon=False,
            title="device",
            title_fontsize=8,
            handlelength=2.2,
        )

    def close(self) -> None:
        """Clear the figure and drop the lines (the chart is not drawn again)."""
        self.figure.clear()
        self.lines.clear()
