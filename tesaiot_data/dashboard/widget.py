"""The dashboard widget: chart, latest values, health, alerts, capture buttons and status.

A background thread refreshes at most once per `refresh` period, and only when the
collector's rows changed; it stops when the dashboard is closed or the collector stops.
`Dashboard.refresh()` draws at once, for scripts, tests and kernels without an event loop.

The chart is interactive (`LiveChart`: uPlot in the browser, sent only the new points) where
anywidget is installed; otherwise, or with `interactive=False`, it is a matplotlib PNG
redrawn on each refresh. `save_png()` writes the matplotlib picture in both cases.

A new dashboard of a collector closes the collector's previous ones, so running the cell
again does not leave the old dashboards redrawing in the background.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tesaiot_data.collector.status import status_line
from tesaiot_data.dashboard.chart import _AXIS_PAD, Chart
from tesaiot_data.dashboard.format import (
    default_recording_path,
    format_elapsed,
    latest_table_html,
)
from tesaiot_data.dashboard.panels import alerts_table_html, health_table_html
from tesaiot_data.parse.timestamps import duration_seconds

if TYPE_CHECKING:
    from tesaiot_data.collector.collector import Collector, CollectorStats, Recording
    from tesaiot_data.dashboard.live_chart import LiveChart

__all__ = ["WINDOWS", "Dashboard"]

logger = logging.getLogger(__name__)

#: The time windows offered by the window selector: (label, value).
WINDOWS: tuple[tuple[str, str], ...] = (
    ("1 min", "1min"),
    ("5 min", "5min"),
    ("15 min", "15min"),
    ("1 h", "1h"),
)

_MIN_PERIOD = 0.1  # seconds: the fastest refresh a dashboard accepts
_LATEST_RESYNC = 30.0  # seconds between rebuilds of the latest values from the whole window
# Each collector's live dashboards. Weak both ways: an entry keeps neither the collector nor a
# dashboard alive (a dashboard refers to its collector, so a strong value would pin the key).
_live: weakref.WeakKeyDictionary[Collector, weakref.WeakSet[Dashboard]] = (
    weakref.WeakKeyDictionary()
)
_live_lock = threading.Lock()


def _live_chart_class() -> type[LiveChart] | None:
    """The interactive chart's class, or None where anywidget is not installed."""
    try:
        from tesaiot_data.dashboard.live_chart import LiveChart  # noqa: PLC0415
    except ImportError as exc:
        logger.info("no interactive chart (%s); the dashboard draws PNG images", exc)
        return None
    return LiveChart


def _utc(ns: int) -> pd.Timestamp:
    return pd.Timestamp(ns, unit="ns", tz="UTC")


def _ns(column: pd.Series) -> np.ndarray:
    """A tz-aware datetime column as int64 ns since the epoch (NaT: the smallest int64)."""
    ns: np.ndarray = column.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").view(np.int64)
    return ns


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


class Dashboard(widgets.VBox):
    """A live dashboard of a collector: chart, latest values, health, alerts, capture, status.

    Show it as a cell's value. It refreshes itself from a background thread at most once per
    `refresh` period, and only when the collector's rows changed; `refresh()` draws at once.
    The health and alerts panels (where the collector has `health()` and `alerts()`) are
    refreshed at every period, new rows or not: a device that goes silent sends none.

    The chart is interactive by default (where anywidget is installed): drag to zoom on
    time, shift+drag to pan, double-click or "Reset zoom" to follow the newest data again,
    hover for a point's exact time, device and value, click a device to hide it. A zoomed
    view stays put while new points arrive. Each refresh sends the browser only the new
    points. `save_png(path)` writes the same chart as a matplotlib picture.
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
        interactive: True: the uPlot chart (`LiveChart`); False: a matplotlib PNG redrawn on
            each refresh, for front ends that run no widget JavaScript; None (the default):
            interactive where anywidget can be imported.
        **box_options: Other `ipywidgets.VBox` options, for example `layout=...`.

    Raises:
        ValueError: `window` or `refresh` is not a positive duration.
        ImportError: `interactive=True` and anywidget is not installed.

    Attributes:
        metric_selector: Dropdown of the metrics seen.
        device_selector: SelectMultiple of the devices seen.
        window_selector: Dropdown of time windows.
        pause_button: ToggleButton; when down, the chart stops following the data.
        chart: The chart: a `LiveChart` when interactive, else an Image holding its PNG.
        table: HTML table of the newest value of each device and metric.
        health_table: HTML table of `collector.health()`, silent devices first (hidden
            where the collector has no `health()`).
        alerts_table: HTML table of `collector.alerts()`, newest first (hidden likewise).
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
        interactive: bool | None = None,
        **box_options: Any,
    ) -> None:
        self._collector = collector
        live_class = _live_chart_class() if interactive is not False else None
        if interactive and live_class is None:
            raise ImportError(
                "interactive=True needs anywidget: pip install anywidget "
                "(or pass interactive=False for the matplotlib chart)"
            )
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
        self._chart_state = Chart()
        # The live chart's last (metric, devices, window): a change sends the window anew.
        self._live_key: tuple[str | None, tuple[str, ...], int] | None = None
        self._seen_ns: int | None = None  # the newest receive time (ns) refreshed from
        self._latest: pd.DataFrame | None = None  # the latest-values rows, kept up to date
        self._latest_synced = 0.0  # time.monotonic() of the last full latest()
        self._off_axis_log: list[tuple[int, int]] = []  # (refresh ns, off-axis points in it)
        self._plotted: list[str] = []
        self._off_axis = 0
        self._alert_events: int | None = None  # collector.stats.alert_events last shown

        #: PNG bytes of the last matplotlib chart: each refresh's when not interactive,
        #: else the last `save_png()`'s.
        self.chart_png: bytes = b""
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
        # Shrinks with the notebook's width (a file browser open beside it) instead of
        # overflowing behind a scroll bar that hides the legend.
        self.chart: widgets.Image | LiveChart
        if live_class is not None:
            self.chart = live_class(layout=widgets.Layout(flex="1 1 0%", min_width="0"))
        else:
            self.chart = widgets.Image(
                format="png",
                layout=widgets.Layout(
                    flex="1 1 0%", min_width="0", height="auto", object_fit="contain"
                ),
            )
        self.table = widgets.HTML(value="<i>no data yet</i>")
        has_panels = callable(getattr(collector, "health", None))
        has_alerts = callable(getattr(collector, "alerts", None))
        self.health_table = widgets.HTML(value="<i>no devices yet</i>")
        self.alerts_table = widgets.HTML(value="<i>no alerts</i>")
        self.health_table.add_class("tesaiot-health")
        self.alerts_table.add_class("tesaiot-alerts")
        health_title = widgets.HTML("<b>Device health</b>")
        alerts_title = widgets.HTML("<b>Alerts</b>")
        if not has_panels:
            health_title.layout.display = self.health_table.layout.display = "none"
        if not has_alerts:
            alerts_title.layout.display = self.alerts_table.layout.display = "none"
        # Empty: Record names the file when clicked (see `format.default_recording_path`).
        self.record_name = widgets.Text(
            value="",
            placeholder="recordings/session-<time of the click>.parquet",
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
                widgets.HBox(
                    [self.device_selector, self.chart], layout=widgets.Layout(width="100%")
                ),
                widgets.HTML("<b>Latest values</b>"),
                self.table,
                health_title,
                self.health_table,
                alerts_title,
                self.alerts_table,
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
    def interactive(self) -> bool:
        """Whether the chart is the interactive `LiveChart` (else a matplotlib PNG)."""
        return not isinstance(self.chart, widgets.Image)

    @property
    def figure(self) -> Figure:
        """The chart's matplotlib Figure (for `figure.savefig(...)`); redrawn in place.

        Drawn at each refresh when not interactive, else by `save_png()`.
        """
        return self._chart_state.figure

    @property
    def plotted_devices(self) -> list[str]:
        """Devices that had a line in the last rendered chart, sorted."""
        return list(self._plotted)

    @property
    def off_axis_points(self) -> int:
        """Points of the last rendered chart's metric and devices dated outside its time axis.

        They were received within the window, but a device's clock is off; not drawn.
        """
        return self._off_axis

    def save_png(self, path: str | Path) -> Path:
        """Draw the chart as shown (metric, devices, window) with matplotlib; write a PNG.

        The file is written to a temporary name and renamed into place.

        Args:
            path: The PNG file; its folder is made if missing.

        Returns:
            The path written.

        Raises:
            OSError: The file could not be written; an old file at `path` is left as it was.
        """
        target = Path(path).expanduser()
        with self._lock:
            png = self._draw_png()
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{id(self):x}.tmp")
        try:
            temp.write_bytes(png)
            temp.replace(target)
        except OSError:
            temp.unlink(missing_ok=True)
            raise
        return target

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
                    self._update_panels()
                    continue
                stats = self._collector.stats
                signal = (stats.rows_total, stats.rows_evicted)
                if signal != self._last_signal or self._dirty:
                    self.refresh()
                else:
                    self._update_labels(stats)
                    self._update_panels()
            except Exception:  # a failed frame must not end the live view; it is logged
                logger.exception("dashboard refresh failed")

    # ---------------------------------------------------------------- drawing

    def _render(self) -> None:
        collector = self._collector
        stats = collector.stats
        # Only the rows received since the last refresh are read (the window hands out a
        # time range without building the rest): a refresh costs what arrived, not what is
        # held, so a dashboard of a busy collector leaves ingest its CPU.
        seen = self._seen_ns
        delta = collector.frame(since=_utc(seen + 1)) if seen is not None else collector.frame()
        if len(delta):
            self._seen_ns = max(seen or 0, int(_ns(delta["received_at"]).max()))
        latest = self._merge_latest(delta)
        self._sync_options(latest)
        metric = self.metric_selector.value
        selected = list(self.device_selector.value)
        if isinstance(self.chart, widgets.Image):
            self.chart_png = self._draw_png()
            self.chart.value = self.chart_png
        else:
            window_ns = int(pd.Timedelta(self.window_selector.value).value)
            self._update_live(self.chart, delta, metric, selected, window_ns)
        self.frames += 1

        shown = latest.loc[latest["device_id"].isin(selected)] if selected else latest.iloc[:0]
        # latest() orders by the categories' first-seen order; the table reads better sorted.
        shown = shown.sort_values(["device_id", "metric"], key=lambda column: column.astype(str))
        self.table.value = latest_table_html(shown)
        self._last_signal = (stats.rows_total, stats.rows_evicted)
        self._dirty = False
        self._update_labels(stats)
        self._update_panels()

    def _merge_latest(self, delta: pd.DataFrame) -> pd.DataFrame:
        """The newest row of each (device, metric): the last rows merged with `delta`'s.

        Rebuilt from the whole window (`Collector.latest()`) every `_LATEST_RESYNC` seconds,
        so a device whose rows all left the window leaves the table.
        """
        now = time.monotonic()
        if self._latest is None or now - self._latest_synced >= _LATEST_RESYNC:
            self._latest = self._collector.latest()
            self._latest_synced = now
            return self._latest
        if len(delta):
            newest = delta.drop_duplicates(subset=["device_id", "metric"], keep="last")
            merged = pd.concat([self._latest.drop(columns="age_s"), newest], ignore_index=True)
            merged = merged.drop_duplicates(subset=["device_id", "metric"], keep="last")
            self._latest = merged.reset_index(drop=True)
        age = (pd.Timestamp.now(tz="UTC") - self._latest["received_at"]).dt.total_seconds()
        self._latest = self._latest.assign(age_s=age)
        return self._latest

    def _draw_png(self) -> bytes:
        """The matplotlib chart of the current selection, as PNG bytes (under `_lock`)."""
        metric = self.metric_selector.value
        selected = list(self.device_selector.value)
        frame = self._collector.frame() if metric is not None and selected else None
        window_ns = int(pd.Timedelta(self.window_selector.value).value)
        png = self._chart_state.draw(frame, metric=metric, devices=selected, window_ns=window_ns)
        self._plotted = list(self._chart_state.plotted_devices)
        self._off_axis = self._chart_state.off_axis_points
        return png

    def _update_live(
        self,
        chart: LiveChart,
        delta: pd.DataFrame,
        metric: str | None,
        devices: list[str],
        window_ns: int,
    ) -> None:
        """Send the live chart the rows of `delta` it shows (or the whole window, anew).

        Args:
            chart: The live chart.
            delta: The rows received since the last refresh.
            metric: The metric shown.
            devices: The devices shown.
            window_ns: The time axis's length, in ns.
        """
        # The time axis is the window up to now by the devices' clocks, as in `Chart.draw`:
        # points dated outside it (a wrong clock) are left out and counted.
        now_ns = time.time_ns()
        key = (metric, tuple(devices), window_ns)
        anew = key != self._live_key
        if metric is None or not devices:
            if anew or chart.points:
                chart.set_data(
                    {}, metric=metric or "", unit="", now_ms=now_ns / 1e6, window_ms=window_ns / 1e6
                )
            self._live_key = key
            self._plotted, self._off_axis = [], 0
            return
        if anew:
            # The window's rows of this metric and these devices, up to the rows seen so far
            # (newer ones come with the next refresh's delta).
            frame = self._collector.frame(
                since=_utc(now_ns - window_ns), metrics=[metric], devices=devices
            )
            if self._seen_ns is not None and len(frame):
                frame = frame.loc[_ns(frame["received_at"]) <= self._seen_ns]
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
            stamps = _ns(frame["timestamp"])
        on_axis = (stamps >= now_ns - window_ns) & (stamps <= now_ns + int(window_ns * _AXIS_PAD))
        off_axis = int((keep & ~on_axis).sum())
        # Off-axis points of earlier refreshes, counted while they are in the window.
        self._off_axis_log.append((now_ns, off_axis))
        if anew:
            self._off_axis_log = [(now_ns, off_axis)]
        self._off_axis_log = [(t, n) for t, n in self._off_axis_log if t >= now_ns - window_ns]
        off_total = sum(n for _t, n in self._off_axis_log)
        send = keep & on_axis
        data = self._points_by_device(frame, send, stamps) if send.any() else {}
        note = (
            f"{off_total:,} point{'' if off_total == 1 else 's'} outside the time axis "
            "(device clock?)"
            if off_total
            else ""
        )
        if anew:
            units = frame.loc[keep, "unit"].dropna().astype(str).unique() if len(frame) else []
            chart.set_data(
                data,
                metric=metric,
                unit=", ".join(sorted(units)),
                now_ms=now_ns / 1e6,
                window_ms=window_ns / 1e6,
                note=note,
            )
            self._live_key = key
        else:
            chart.append(data, now_ms=now_ns / 1e6, note=note)
        self._plotted = chart.devices
        self._off_axis = off_total

    @staticmethod
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

    def _update_panels(self) -> None:
        """Refresh the health and alerts tables from the collector, where it has them."""
        health = getattr(self._collector, "health", None)
        if callable(health):
            try:
                self.health_table.value = health_table_html(health())
            except Exception:
                logger.exception("dashboard: collector.health() failed")
        alerts = getattr(self._collector, "alerts", None)
        if callable(alerts):
            # Events only ever add up: the table changes only when their count does.
            events = getattr(self._collector.stats, "alert_events", None)
            if events is not None and events == self._alert_events:
                return
            try:
                self.alerts_table.value = alerts_table_html(alerts())
            except Exception:
                logger.exception("dashboard: collector.alerts() failed")
            else:
                self._alert_events = events

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
        column = latest["metric"]
        seen = (
            column.cat.categories
            if isinstance(column.dtype, pd.CategoricalDtype)
            else column.astype(str).unique()
        )
        for metric in seen:
            if metric in numeric:
                return str(metric)
        return str(latest["metric"].iloc[0]) if len(latest) else None

    def _update_labels(self, stats: CollectorStats | None = None) -> None:
        stats = stats or self._collector.stats
        self.status_label.value = status_line(stats, running=self._collector.running)
        recording = self._recording
        if recording is not None:
            self.record_label.value = (
                f"recording to {recording.path}: {recording.rows:,} rows, "
                f"{format_elapsed(recording.elapsed)}"
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
        typed = self.record_name.value.strip()
        path = Path(typed or _clicked("session")).expanduser()
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
                f"saved {path} ({recording.rows:,} rows, {format_elapsed(recording.elapsed)})"
            )
            self.saved_path = path
        if not self._closed:
            self.record_button.description = "Record"
            self.record_button.icon = "circle"
            self.record_name.disabled = False
            if self.record_name.value.strip() == str(recording.path):
                self.record_name.value = ""
            if self.record_button.value:
                self.record_button.value = False

    def _on_snapshot(self, _button: widgets.Button) -> None:
        try:
            path = Path(_clicked("snapshot"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path = self._collector.snapshot(path)
        except Exception as exc:
            logger.exception("snapshot failed")
            self.record_label.value = f"snapshot failed: {exc}"
            return
        self.record_label.value = f"snapshot saved to {path}"

    # ---------------------------------------------------------------- helpers

    def _all_widgets(self) -> list[widgets.Widget]:
        out: list[widgets.Widget] = []
        stack = list(self.children)
        while stack:
            child = stack.pop()
            out.append(child)
            stack.extend(getattr(child, "children", ()))
        return out


def _clicked(kind: str) -> Path:
    # Record and Snapshot: one folder, named from the moment of the click.
    return default_recording_path(kind, datetime.now(timezone.utc))
