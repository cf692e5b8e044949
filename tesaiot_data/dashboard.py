"""A live Jupyter dashboard of a running `Collector`: chart, latest values, capture and status.

In a notebook::

    collector = Collector(settings, window="5min").start()
    collector.dashboard()          # the cell's value: the widget shows and updates itself

The chart is one matplotlib `Figure` drawn with the Agg backend (never pyplot, so nothing is
registered globally) into one `ipywidgets.Image`. Its axes and lines are reused from frame to
frame, so hours of refreshing neither flicker nor grow memory. A background thread refreshes
at most once per `refresh` period, and only when the collector's rows changed; it stops when
the dashboard is closed or the collector stops. `Dashboard.refresh()` draws at once, for
scripts, tests and kernels without an event loop.

A new dashboard of a collector closes the collector's previous ones, so running the cell
again does not leave the old dashboards redrawing in the background.

The time axis is the chosen window up to now, by the devices' timestamps: a device whose
clock is wrong cannot stretch it. Its points outside the window are left out and counted on
the chart ("12 points outside the time axis (device clock?)").
"""

from __future__ import annotations

import html
import io
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tesaiot_data.timestamps import duration_seconds

if TYPE_CHECKING:
    from tesaiot_data.collector import Collector, CollectorStats, Recording

__all__ = [
    "MAX_CELL_CHARS",
    "MAX_LEGEND_ENTRIES",
    "MAX_POINTS_PER_LINE",
    "MAX_TABLE_ROWS",
    "MAX_TOOLTIP_CHARS",
    "WINDOWS",
    "Dashboard",
    "downsample",
    "latest_table_html",
    "short_ids",
    "status_text",
]

logger = logging.getLogger(__name__)

#: The time windows offered by the window selector: (label, value).
WINDOWS: tuple[tuple[str, str], ...] = (
    ("1 min", "1min"),
    ("5 min", "5min"),
    ("15 min", "15min"),
    ("1 h", "1h"),
)
#: A line with more points than this is downsampled (min/max per bucket) before drawing.
MAX_POINTS_PER_LINE = 2_000
#: Devices named in the legend; the rest are summed up as "+N more".
MAX_LEGEND_ENTRIES = 10
#: Rows shown in the latest-values table; the rest are counted below it.
MAX_TABLE_ROWS = 60
#: Characters of a text shown in a table cell; longer texts end in "…".
MAX_CELL_CHARS = 60
#: Characters of a long text kept in its cell's tooltip (a base64 image must not fill a page).
MAX_TOOLTIP_CHARS = 200

_SHORT_ID = 8  # characters of a device id shown in the legend
_MIN_PERIOD = 0.1  # seconds: the fastest refresh a dashboard accepts
_FIGSIZE = (9.0, 3.6)  # inches, at _DPI: a 900 x 360 px chart
_DPI = 100
_AXIS_PAD = 0.02  # share of the window left free right of "now": room for the newest point
_NOTE_COLOR = "#b35900"
_TAB10 = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
# Ten colours, then the same ten dashed and dotted: 30 lines that all look different.
_LINE_STYLES = tuple((color, style) for style in ("-", "--", ":") for color in _TAB10)
_ELLIPSIS = "\u2026"
# Each collector's live dashboards. Weak both ways: an entry keeps neither the collector nor a
# dashboard alive (a dashboard refers to its collector, so a strong value would pin the key).
_live: weakref.WeakKeyDictionary[Collector, weakref.WeakSet[Dashboard]] = (
    weakref.WeakKeyDictionary()
)
_live_lock = threading.Lock()
_TABLE_STYLE = (
    "<style>.tesaiot-latest{border-collapse:collapse;font-size:12px;font-family:monospace}"
    ".tesaiot-latest th,.tesaiot-latest td{padding:2px 10px;text-align:left;"
    "border-bottom:1px solid #ddd}.tesaiot-latest td.num{text-align:right}</style>"
)


def _window_options(window: str | pd.Timedelta) -> tuple[list[tuple[str, str]], str]:
    """The window selector's options, with `window` added when it is not a standard one."""
    wanted = pd.Timedelta(window)
    if wanted <= pd.Timedelta(0):
        raise ValueError(f"window={window!r} must be a positive duration, for example '5min'")
    options = list(WINDOWS)
    for _label, value in options:
        if pd.Timedelta(value) == wanted:
            return options, value
    custom = str(window) if isinstance(window, str) else f"{int(wanted.total_seconds())}s"
    options.append((custom, custom))
    options.sort(key=lambda option: pd.Timedelta(option[1]))
    return options, custom


def short_ids(device_ids: Sequence[str], *, length: int = _SHORT_ID) -> dict[str, str]:
    """Return the shortest prefixes (at least `length` characters) that tell devices apart.

    Args:
        device_ids: Full device ids.
        length: The shortest prefix to use.

    Returns:
        Each id mapped to its prefix; ids no longer than the prefix are kept whole.
    """
    unique = sorted(set(device_ids))
    size = length
    while size < max((len(d) for d in unique), default=0):
        prefixes = {d[:size] for d in unique}
        if len(prefixes) == len(unique):
            break
        size += 4
    return {d: d[:size] for d in unique}


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


def _format_age(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _format_value(value: float, text: object) -> str:
    if isinstance(text, str):
        return text
    if value is None or not np.isfinite(value):
        return "-" if value is None or np.isnan(value) else str(value)
    return f"{value:.6g}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


def _cell(text: str, *, css: str = "") -> str:
    """A table cell that shows at most MAX_CELL_CHARS; a longer text gets a bounded tooltip."""
    shown = _clip(text, MAX_CELL_CHARS)
    attributes = f' class="{css}"' if css else ""
    if shown != text:
        attributes += f' title="{html.escape(_clip(text, MAX_TOOLTIP_CHARS))}"'
    return f"<td{attributes}>{html.escape(shown)}</td>"


def _format_elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def latest_table_html(latest: pd.DataFrame, *, max_rows: int = MAX_TABLE_ROWS) -> str:
    """Render `Collector.latest()` rows as an HTML table (every string escaped).

    A text longer than `MAX_CELL_CHARS` is cut short with "…", its first `MAX_TOOLTIP_CHARS`
    characters in the cell's tooltip, so a camera frame sent as text does not become a
    table of hundreds of kilobytes.

    Args:
        latest: Rows with device_id, metric, value, unit, value_text and age_s.
        max_rows: The most rows to show; the rest are counted below the table.

    Returns:
        The HTML.
    """
    if latest.empty:
        return "<i>no data yet</i>"
    shown = latest.head(max_rows)
    rows = []
    for device, metric, value, unit, text, age in zip(
        shown["device_id"].astype(str),
        shown["metric"].astype(str),
        shown["value"].to_numpy(dtype=float),
        shown["unit"].astype(object),
        shown["value_text"].astype(object),
        shown["age_s"].to_numpy(dtype=float),
        strict=True,
    ):
        unit_text = unit if isinstance(unit, str) else ""
        device_title = html.escape(_clip(device, MAX_TOOLTIP_CHARS))
        rows.append(
            f'<tr><td title="{device_title}">{html.escape(device[:_SHORT_ID])}</td>'
            f"{_cell(metric)}{_cell(_format_value(value, text), css='num')}{_cell(unit_text)}"
            f'<td class="num">{_format_age(age)}</td></tr>'
        )
    more = len(latest) - len(shown)
    footer = f"<div><i>+{more} more rows</i></div>" if more > 0 else ""
    return (
        f'{_TABLE_STYLE}<table class="tesaiot-latest"><thead><tr><th>device</th><th>metric</th>'
        f"<th>value</th><th>unit</th><th>age</th></tr></thead><tbody>{''.join(rows)}</tbody>"
        f"</table>{footer}"
    )


def status_text(stats: CollectorStats, *, running: bool) -> str:
    """Return the one-line status: connection, rate, rows, rejects and reconnects.

    A stopped collector (or a stream ended by an error) has no current rate, so none is shown.

    Args:
        stats: The collector's counters.
        running: Whether the collector runs.

    Returns:
        The text.
    """
    parts: list[str] = []
    if stats.error:
        parts.append(f"stopped: {stats.error}")
    elif not running:
        parts.append("stopped")
    else:
        parts.append("connected" if stats.connected else "reconnecting")
        parts.append(f"{stats.rate:.0f} msg/s")
    parts += [
        f"{stats.rows:,} rows in window",
        f"{stats.rejected:,} rejects",
        f"{stats.reconnects} reconnects",
    ]
    return " | ".join(parts)


class _Chart:
    """One Figure, one Axes and one Line2D per device, redrawn into PNG bytes."""

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
        metric: str | None,
        unit: str,
        data: dict[str, tuple[np.ndarray, np.ndarray]],
        xlim: tuple[float, float],
        note: str,
    ) -> bytes:
        """Update the lines with `data` (device -> (x in days, y)) and return PNG bytes.

        `xlim` is the time axis in days; `note` is written in the chart's corner.
        """
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
        self.figure.clear()
        self.lines.clear()


class Dashboard(widgets.VBox):
    """A live dashboard of a collector: chart, latest values, session capture and status.

    Show it as a cell's value. It refreshes itself from a background thread at most once per
    `refresh` period, and only when the collector's rows changed; `refresh()` draws at once.
    Widget values may be changed from code (`dashboard.metric_selector.value = "humidity"`),
    which redraws at once like a click does.

    Making a dashboard closes the collector's previous dashboards (their refresh threads end,
    a recording started from one is saved), so running a notebook cell again leaves one live
    dashboard, not one more each time. Pass `replace=False` to keep them, for two views of
    one collector side by side.

    Example:
        >>> dash = collector.dashboard(metric="temperature", window="15min")  # doctest: +SKIP
        >>> dash  # doctest: +SKIP

    Args:
        collector: The collector to show.
        metric: The metric to plot first; default the first numeric metric seen.
        devices: The devices to plot first; default all, including devices that appear later.
        window: How far back the chart goes: `"1min"`, `"5min"`, `"15min"`, `"1h"` (or
            another duration, which is added to the choices).
        refresh: The shortest time between two automatic redraws (at least 0.1 s).
        replace: Close the collector's other dashboards (the default); False keeps them live.
        **box_options: Other `ipywidgets.VBox` options, for example `layout=...`.

    Raises:
        ValueError: `window` or `refresh` is not a positive duration.

    Attributes:
        metric_selector: Dropdown of the metrics seen.
        device_selector: SelectMultiple of the devices seen.
        window_selector: Dropdown of time windows.
        pause_button: ToggleButton; when down, the chart stops following the data.
        chart: Image holding the chart's PNG.
        table: HTML table of the newest value of each device and metric.
        record_name: Text with the file the next recording goes to.
        record_button: ToggleButton that starts and stops a recording.
        record_label: Label with the recording's progress, or the saved path.
        snapshot_button: Button that writes the window to Parquet now.
        status_label: Label with connection, rate, rows, rejects and reconnects.
    """

    def __init__(
        self,
        collector: Collector,
        *,
        metric: str | None = None,
        devices: Iterable[str] | None = None,
        window: str | pd.Timedelta = "5min",
        refresh: str | float | pd.Timedelta = "1s",
        replace: bool = True,
        **box_options: Any,
    ) -> None:
        self._collector = collector
        self._period = max(_MIN_PERIOD, duration_seconds(refresh, name="refresh"))
        window_options, window_value = _window_options(window)
        chosen = None if devices is None else sorted(set(devices))
        self._follow_all_devices = chosen is None
        self._lock = threading.Lock()  # one render at a time (timer thread or caller)
        # The thread that is updating the selectors' options: their events are not clicks.
        self._syncing_thread: int | None = None
        self._stop = threading.Event()
        self._closed = False
        self._timer: threading.Thread | None = None
        self._last_signal: tuple[int, int] | None = None
        self._dirty = True
        self._recording: Recording | None = None
        self._record_lock = threading.RLock()  # start/stop from a click or the timer thread
        self._metric_options: list[str] = [metric] if metric else []
        self._device_options: list[str] = list(chosen or [])
        self._chart_state = _Chart()

        #: PNG bytes of the last rendered chart.
        self.chart_png: bytes = b""
        #: Devices that had a line in the last rendered chart, sorted.
        self.plotted_devices: list[str] = []
        #: Points of the last rendered chart's metric and devices, received within the
        #: window but dated outside the time axis (a device's clock is off); not drawn.
        self.off_axis_points = 0
        #: The file the last recording was saved to.
        self.saved_path: Path | None = None
        #: How many times the chart was rendered.
        self.frames = 0

        self.metric_selector = widgets.Dropdown(
            options=self._metric_options,
            value=metric,
            description="metric",
            layout=widgets.Layout(width="260px"),
        )
        self.window_selector = widgets.Dropdown(
            options=window_options,
            value=window_value,
            description="window",
            layout=widgets.Layout(width="180px"),
        )
        self.pause_button = widgets.ToggleButton(
            value=False,
            description="Pause",
            icon="pause",
            tooltip="freeze the chart",
            layout=widgets.Layout(width="100px"),
        )
        self.device_selector = widgets.SelectMultiple(
            options=self._device_options,
            value=tuple(chosen or ()),
            description="devices",
            rows=12,
            layout=widgets.Layout(width="300px"),
        )
        self.chart = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.table = widgets.HTML(value="<i>no data yet</i>")
        self.record_name = widgets.Text(
            value=self._default_record_name(),
            description="file",
            layout=widgets.Layout(width="420px"),
        )
        self.record_button = widgets.ToggleButton(
            value=False,
            description="Record",
            icon="circle",
            tooltip="record every row to Parquet",
            layout=widgets.Layout(width="110px"),
        )
        self.snapshot_button = widgets.Button(
            description="Snapshot now",
            icon="camera",
            tooltip="write the window to Parquet now",
            layout=widgets.Layout(width="130px"),
        )
        self.record_label = widgets.Label(value="not recording")
        self.status_label = widgets.Label(value="starting")

        self.metric_selector.observe(self._on_selection, names="value")
        self.device_selector.observe(self._on_devices, names="value")
        self.window_selector.observe(self._on_selection, names="value")
        self.pause_button.observe(self._on_pause, names="value")
        self.record_button.observe(self._on_record, names="value")
        self.snapshot_button.on_click(self._on_snapshot)

        super().__init__(
            children=[
                self.status_label,
                widgets.HBox([self.metric_selector, self.window_selector, self.pause_button]),
                widgets.HBox([self.device_selector, self.chart]),
                widgets.HTML("<b>Latest values</b>"),
                self.table,
                widgets.HBox([self.record_name, self.record_button, self.snapshot_button]),
                self.record_label,
            ],
            **box_options,
        )
        self._register(replace=replace)
        self.refresh()
        self._start_timer()

    def __repr__(self) -> str:
        try:
            state = "closed" if self._closed else ("live" if self.timer_alive else "static")
            return (
                f"<Dashboard {state}: {self.metric_selector.value} over "
                f"{self.window_selector.label}, {len(self.device_selector.value)} of "
                f"{len(self.device_selector.options)} devices>"
            )
        except AttributeError:  # not fully made yet
            return "<Dashboard>"

    # ----------------------------------------------------------------- public

    @property
    def collector(self) -> Collector:
        """The collector shown."""
        return self._collector

    @property
    def figure(self) -> Figure:
        """The chart's matplotlib Figure (for `figure.savefig(...)`); redrawn in place."""
        return self._chart_state.figure

    @property
    def timer_alive(self) -> bool:
        """Whether the background refresh thread runs."""
        return self._timer is not None and self._timer.is_alive()

    @property
    def closed(self) -> bool:
        """Whether the dashboard was closed, by `close()` or by a newer one of its collector."""
        return getattr(self, "_closed", True)

    @property
    def paused(self) -> bool:
        """Whether the chart is frozen (the collector goes on collecting)."""
        return bool(self.pause_button.value)

    @property
    def recording(self) -> Recording | None:
        """The recording started with the record button, while it runs."""
        return self._recording

    def refresh(self) -> None:
        """Redraw everything now from the collector's current data, paused or not.

        Updates the selectors' options, the chart, the latest-values table and the labels.
        Safe to call from any thread; a render in progress is waited for. Does nothing once
        the dashboard is closed.
        """
        with self._lock:
            if not self._closed:
                self._render()

    def close(self) -> None:
        """Stop the refresh thread, stop a recording started here, and close the widgets."""
        if getattr(self, "_closed", True):
            super().close()
            return
        self._closed = True
        with _live_lock:
            live = _live.get(self._collector)
            if live is not None:
                live.discard(self)
        self._stop.set()
        timer = self._timer
        if timer is not None and timer is not threading.current_thread():
            timer.join(timeout=max(5.0, 3 * self._period))
        if self._recording is not None:
            self._stop_recording()
        with self._lock:
            self._chart_state.close()
        for child in self._all_widgets():
            child.close()
        super().close()

    # --------------------------------------------------------------- the timer

    def _register(self, *, replace: bool) -> None:
        with _live_lock:
            live = _live.setdefault(self._collector, weakref.WeakSet())
            previous = [dashboard for dashboard in live if dashboard is not self]
            if replace:
                live.clear()
            live.add(self)
        if not replace:
            return
        for dashboard in previous:
            logger.info("closing %r: a new dashboard of its collector replaces it", dashboard)
            dashboard.close()

    def _start_timer(self) -> None:
        if self._closed or self.timer_alive or not self._collector.running:
            return
        self._stop.clear()
        self._timer = threading.Thread(
            target=self._run_timer, name=f"tesaiot-dashboard-{id(self):x}", daemon=True
        )
        self._timer.start()

    def _run_timer(self) -> None:
        while not self._stop.wait(self._period):
            try:
                if not self._collector.running:
                    # The collector closed the recording's file; say where it is.
                    self._stop_recording()
                    self._update_labels()
                    logger.info("collector stopped; dashboard refresh thread ends")
                    return
                if self.paused:
                    self._update_labels()
                    continue
                stats = self._collector.stats
                signal = (stats.rows_total, stats.rows_evicted)
                if signal != self._last_signal or self._dirty:
                    self.refresh()
                else:
                    self._update_labels(stats)
            except Exception:  # a failed frame must not end the live view; it is logged
                logger.exception("dashboard refresh failed")

    # ---------------------------------------------------------------- drawing

    def _render(self) -> None:
        collector = self._collector
        stats = collector.stats
        latest = collector.latest()
        self._sync_options(latest)
        metric = self.metric_selector.value
        selected = list(self.device_selector.value)
        # The axis is the chosen window up to now, whatever the devices' clocks say: one
        # reading dated 2262 must not push every other device off the chart.
        now_ns = time.time_ns()
        window_ns = int(pd.Timedelta(self.window_selector.value).value)
        axis_start = np.datetime64(now_ns - window_ns, "ns")
        axis_end = np.datetime64(now_ns + int(window_ns * _AXIS_PAD), "ns")

        data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        unit = ""
        off_axis = 0
        if metric is not None and selected:
            # The unfiltered frame is the one latest() just built (the store caches it), so
            # filtering it here is cheaper than asking the store for a filtered one.
            frame = collector.frame()
            since = pd.Timestamp(now_ns - window_ns, tz="UTC")
            keep = (
                (frame["metric"] == metric).to_numpy()
                & frame["device_id"].isin(selected).to_numpy()
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
        note = (
            f"{off_axis:,} point{'' if off_axis == 1 else 's'} outside the time axis "
            "(device clock?)"
            if off_axis
            else ""
        )
        xlim = (float(mdates.date2num(axis_start)), float(mdates.date2num(axis_end)))
        self.chart_png = self._chart_state.draw(metric, unit, data, xlim, note)
        self.plotted_devices = sorted(data)
        self.off_axis_points = off_axis
        self.frames += 1
        self.chart.value = self.chart_png

        shown = latest.loc[latest["device_id"].isin(selected)] if selected else latest.iloc[:0]
        # latest() orders by the categories' first-seen order; the table reads better sorted.
        shown = shown.sort_values(["device_id", "metric"], key=lambda column: column.astype(str))
        self.table.value = latest_table_html(shown)
        self._last_signal = (stats.rows_total, stats.rows_evicted)
        self._dirty = False
        self._update_labels(stats)

    def _sync_options(self, latest: pd.DataFrame) -> None:
        """Add newly seen metrics and devices to the selectors, keeping the selection."""
        metrics = [str(m) for m in latest["metric"].unique()]
        devices = [str(d) for d in latest["device_id"].unique()]
        new_metrics = sorted(set(metrics) - set(self._metric_options))
        new_devices = sorted(set(devices) - set(self._device_options))
        if not (new_metrics or new_devices):
            return
        self._syncing_thread = threading.get_ident()
        try:
            if new_metrics:
                current = self.metric_selector.value
                if current is None:
                    current = self._first_numeric_metric(latest)
                self._metric_options = sorted({*self._metric_options, *new_metrics})
                with self.metric_selector.hold_sync():
                    self.metric_selector.options = self._metric_options
                    self.metric_selector.value = current
            if new_devices:
                selected = list(self.device_selector.value)
                if self._follow_all_devices:
                    selected += new_devices
                self._device_options = sorted({*self._device_options, *new_devices})
                with self.device_selector.hold_sync():
                    self.device_selector.options = self._device_options
                    self.device_selector.value = tuple(sorted(set(selected)))
        finally:
            self._syncing_thread = None

    @staticmethod
    def _first_numeric_metric(latest: pd.DataFrame) -> str | None:
        # The metric column's categories are in first-seen order (the store's dictionary).
        numeric = set(latest.loc[latest["value"].notna(), "metric"].astype(str))
        for metric in latest["metric"].cat.categories:
            if metric in numeric:
                return str(metric)
        return str(latest["metric"].iloc[0]) if len(latest) else None

    def _update_labels(self, stats: CollectorStats | None = None) -> None:
        stats = stats or self._collector.stats
        self.status_label.value = status_text(stats, running=self._collector.running)
        recording = self._recording
        if recording is not None:
            self.record_label.value = (
                f"recording to {recording.path}: {recording.rows:,} rows, "
                f"{_format_elapsed(recording.elapsed)}"
            )

    # ----------------------------------------------------------------- events

    def _on_selection(self, _change: dict[str, Any]) -> None:
        if self._syncing_thread == threading.get_ident():
            return
        self._redraw_now()

    def _on_devices(self, _change: dict[str, Any]) -> None:
        if self._syncing_thread == threading.get_ident():
            return
        # Choosing every device (again) means "follow new devices too".
        self._follow_all_devices = set(self.device_selector.value) == set(self._device_options)
        self._redraw_now()

    def _on_pause(self, change: dict[str, Any]) -> None:
        paused = bool(change["new"])
        self.pause_button.description = "Resume" if paused else "Pause"
        self.pause_button.icon = "play" if paused else "pause"
        if not paused:
            self._redraw_now()

    def _redraw_now(self) -> None:
        self._dirty = True
        if self._closed:
            return
        try:
            self.refresh()
        except Exception:
            logger.exception("dashboard refresh failed")

    def _on_record(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self._start_recording()
        else:
            self._stop_recording()

    def _start_recording(self) -> None:
        with self._record_lock:
            if self._recording is not None:
                return
            self._begin_recording()

    def _begin_recording(self) -> None:
        path = Path(self.record_name.value.strip() or self._default_record_name()).expanduser()
        try:
            if not self._collector.running:
                raise RuntimeError("the collector is not running; start() it first")
            path.parent.mkdir(parents=True, exist_ok=True)  # fail now, not when stopping
            self._recording = self._collector.record(path)
        except Exception as exc:
            logger.warning("cannot start recording to %s: %s", path, exc)
            self.record_label.value = f"cannot record to {path}: {exc}"
            self.record_button.value = False
            return
        self.record_button.description = "Stop"
        self.record_button.icon = "stop"
        self.record_name.disabled = True
        self._update_labels()

    def _stop_recording(self) -> None:
        with self._record_lock:
            recording, self._recording = self._recording, None
        if recording is None:
            return
        try:
            path = recording.stop()
        except Exception as exc:
            logger.exception("stopping the recording to %s failed", recording.path)
            self.record_label.value = f"recording to {recording.path} failed: {exc}"
        else:
            self.record_label.value = (
                f"saved {path} ({recording.rows:,} rows, {_format_elapsed(recording.elapsed)})"
            )
            self.saved_path = path
        if not self._closed:
            self.record_button.description = "Record"
            self.record_button.icon = "circle"
            self.record_name.disabled = False
            if self.record_name.value.strip() == str(recording.path):
                self.record_name.value = self._default_record_name()
            if self.record_button.value:
                self.record_button.value = False

    def _on_snapshot(self, _button: widgets.Button) -> None:
        try:
            path = self._collector.snapshot()
        except Exception as exc:
            logger.exception("snapshot failed")
            self.record_label.value = f"snapshot failed: {exc}"
            return
        self.record_label.value = f"snapshot saved to {path}"

    # ---------------------------------------------------------------- helpers

    @staticmethod
    def _default_record_name() -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        return f"recordings/session-{stamp}.parquet"

    def _all_widgets(self) -> list[widgets.Widget]:
        out: list[widgets.Widget] = []
        stack = list(self.children)
        while stack:
            child = stack.pop()
            out.append(child)
            stack.extend(getattr(child, "children", ()))
        return out
