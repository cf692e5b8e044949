"""The dashboard widget: its layout, its public face and the thread that refreshes it.

A background thread refreshes at most once per `refresh` period, and only when the
collector's rows changed; it stops when the dashboard is closed or the collector stops.
`Dashboard.refresh()` draws at once, for scripts, tests and kernels without an event loop.

The chart is interactive (`LiveChart`: uPlot in the browser, sent only the new points) where
anywidget is installed; otherwise, or with `interactive=False`, it is a matplotlib PNG
redrawn on each refresh. `save_png()` writes the matplotlib picture in both cases.

A new dashboard of a collector closes the collector's previous ones, so running the cell
again does not leave the old dashboards redrawing in the background.

The parts it is made of live beside it: `controls` (selectors and pause), `capture` (Record
and Snapshot), `rows` (what it reads from the collector) and `live_feed` (what the
interactive chart is sent).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import pandas as pd
from matplotlib.figure import Figure

from tesaiot_data.arguments import duration_seconds
from tesaiot_data.collector.stats import status_line
from tesaiot_data.dashboard.capture import Capture
from tesaiot_data.dashboard.chart import Chart
from tesaiot_data.dashboard.controls import WINDOWS, Controls
from tesaiot_data.dashboard.live_feed import LiveFeed
from tesaiot_data.dashboard.monitor_panels import MonitorPanels
from tesaiot_data.dashboard.rows import CollectorRows
from tesaiot_data.dashboard.values import latest_grid_html, text_states_html
from tesaiot_data.files.store import StorePath

if TYPE_CHECKING:
    from tesaiot_data.collector import Collector, CollectorStats, Recording
    from tesaiot_data.dashboard.live_chart import LiveChart

__all__ = ["WINDOWS", "Dashboard"]

logger = logging.getLogger(__name__)

_MIN_PERIOD = 0.1  # seconds: the fastest refresh a dashboard accepts
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


class Dashboard(widgets.VBox):
    """A live dashboard of a collector: chart, latest values, health, alerts, capture, status.

    From the top: the status line, the metric / window / pause controls, Record and
    Snapshot, then the device list beside the chart, the latest values (a device x metric
    grid), device health and alerts. Show it as a cell's value. It refreshes itself from a
    background thread at most once per `refresh` period, and only when the collector's rows
    changed; `refresh()` draws at once.
    The health and alerts panels (where the collector has `health()` and `alerts()`) are
    refreshed at every period, new rows or not: a device that goes silent sends none.

    The chart is interactive by default (where anywidget is installed): drag to zoom on
    time, shift+drag to pan, double-click or "Reset zoom" to follow the newest data again,
    hover for a point's exact time, device and value, click a device to hide it. A zoomed
    view stays put while new points arrive. Each refresh sends the browser only the new
    points. `save_png(path)` writes the same chart as a matplotlib picture.
    A text metric (a classifier's `ai_prediction`, say) has no line to draw: in place of the
    chart it shows each device's states in the window, newest first (`text_view`).
    Where widget JavaScript does not run, a dashboard made with `interactive=False` shows the
    chart as an `image/png` (its display data offers one beside the widget view).
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
            each refresh, for front ends that run no widget JavaScript (also offered as the
            cell's `image/png`); None (the default): interactive where anywidget can be
            imported.
        layout: The dashboard box's `ipywidgets.Layout` (its width, border, ...); None
            for the default.

    Raises:
        TypeError: An option that does not exist (a misspelt name is not ignored).
        ValueError: `window` or `refresh` is not a positive duration.
        ImportError: `interactive=True` and anywidget is not installed.

    Attributes:
        metric_selector: Dropdown of the metrics seen.
        device_selector: SelectMultiple of the devices seen, by short id (full ids on
            hover); its value holds the full ids.
        window_selector: Dropdown of time windows.
        pause_button: ToggleButton; when down, the chart stops following the data.
        chart: The chart: a `LiveChart` when interactive, else an Image holding its PNG.
        text_view: HTML table of a text metric's states, shown in place of the chart when
            the metric selected has only text values.
        table: HTML grid of the newest value of each device (rows) and metric (columns).
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
        layout: widgets.Layout | None = None,
    ) -> None:
        self._collector = collector
        live_class = _live_chart_class() if interactive is not False else None
        if interactive and live_class is None:
            raise ImportError(
                "interactive=True needs anywidget: pip install anywidget "
                "(or pass interactive=False for the matplotlib chart)"
            )
        self._period = max(_MIN_PERIOD, duration_seconds(refresh, name="refresh"))
        self._lock = threading.Lock()  # one render at a time (timer thread or caller)
        self._stop = threading.Event()
        self._closed = False
        self._timer: threading.Thread | None = None
        self._last_signal: tuple[int, int] | None = None
        self._dirty = True
        self._rows = CollectorRows(collector)
        self._chart_state = Chart()
        self._feed = LiveFeed()
        self._plotted: list[str] = []
        self._off_axis = 0

        #: PNG bytes of the last matplotlib chart: each refresh's when not interactive,
        #: else the last `save_png()`'s.
        self.chart_png: bytes = b""
        #: How many times the chart was rendered.
        self.frames = 0

        self._controls = Controls(
            metric=metric,
            devices=None if devices is None else sorted(set(devices)),
            window=window,
            on_change=self._redraw_now,
        )
        self.metric_selector = self._controls.metric_selector
        self.window_selector = self._controls.window_selector
        self.pause_button = self._controls.pause_button
        self.device_selector = self._controls.device_selector
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
        self.text_view = widgets.HTML(
            value="", layout=widgets.Layout(flex="1 1 0%", min_width="0", display="none")
        )
        self.table = widgets.HTML(value="<i>no data yet</i>")
        self._panels = MonitorPanels(collector)
        self.health_table = self._panels.health_table
        self.alerts_table = self._panels.alerts_table
        self._capture = Capture(
            collector, closed=lambda: self._closed, on_started=self._update_labels
        )
        self.record_name = self._capture.record_name
        self.record_button = self._capture.record_button
        self.snapshot_button = self._capture.snapshot_button
        self.record_label = self._capture.record_label
        self.status_label = widgets.Label(value="starting")

        # Controls first: a long fleet's tables must not push Record out of sight.
        super().__init__(
            children=[
                self.status_label,
                widgets.HBox([self.metric_selector, self.window_selector, self.pause_button]),
                widgets.HBox([self.record_name, self.record_button, self.snapshot_button]),
                self.record_label,
                widgets.HBox(
                    [self.device_selector, self.chart, self.text_view],
                    layout=widgets.Layout(width="100%"),
                ),
                widgets.HTML("<b>Latest values</b>"),
                self.table,
                *self._panels.children,
            ],
            **({} if layout is None else {"layout": layout}),
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

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        # The widget view, and for a matplotlib chart its picture: a front end that runs no
        # widget JavaScript (nbconvert, a viewer) shows the image instead of the text repr.
        bundle: dict[str, Any] | None = super()._repr_mimebundle_(**kwargs)
        if bundle is not None and not self.interactive and self.chart_png:
            bundle["image/png"] = base64.b64encode(self.chart_png).decode("ascii")
        return bundle

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

    @property
    def saved_path(self) -> Path | StorePath | None:
        """The file the last recording was saved to."""
        return self._capture.saved_path

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
        return self._controls.paused

    @property
    def recording(self) -> Recording | None:
        """The recording started with the record button, while it runs."""
        return self._capture.recording

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
        if self._capture.recording is not None:
            self._capture.stop()
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
                    self._capture.stop()
                    self._update_labels()
                    logger.info("collector stopped; dashboard refresh thread ends")
                    return
                if self.paused:
                    self._update_labels()
                    self._panels.update()
                    continue
                stats = self._collector.stats
                signal = (stats.rows_total, stats.rows_evicted)
                if signal != self._last_signal or self._dirty:
                    self.refresh()
                else:
                    self._update_labels(stats)
                    self._panels.update()
            except Exception:  # a failed frame must not end the live view; it is logged
                logger.exception("dashboard refresh failed")

    def _redraw_now(self) -> None:
        self._dirty = True
        if self._closed:
            return
        try:
            self.refresh()
        except Exception:
            logger.exception("dashboard refresh failed")

    # ---------------------------------------------------------------- drawing

    def _render(self) -> None:
        stats = self._collector.stats
        delta = self._rows.new_rows()
        latest = self._rows.latest(delta)
        self._controls.sync_options(latest)
        selected = self._controls.devices
        metric = self._controls.metric
        text_metric = metric is not None and _is_text_metric(latest, metric)
        _show(self.text_view, text_metric)
        _show(self.chart, not text_metric)
        if text_metric and metric is not None:
            since_ns = time.time_ns() - self._controls.window_ns
            states = self._rows.selection(since_ns=since_ns, metric=metric, devices=selected)
            self.text_view.value = text_states_html(states)
            self._plotted, self._off_axis = [], 0
        elif isinstance(self.chart, widgets.Image):
            self.chart_png = self._draw_png()
            self.chart.value = self.chart_png
        else:
            feed = self._feed
            feed.update(
                self.chart,
                self._rows,
                delta,
                metric=self._controls.metric,
                devices=selected,
                window_ns=self._controls.window_ns,
            )
            self._plotted, self._off_axis = feed.plotted, feed.off_axis
        self.frames += 1

        shown = latest.loc[latest["device_id"].isin(selected)] if selected else latest.iloc[:0]
        self.table.value = latest_grid_html(shown)
        self._last_signal = (stats.rows_total, stats.rows_evicted)
        self._dirty = False
        self._update_labels(stats)
        self._panels.update()

    def _draw_png(self) -> bytes:
        """The matplotlib chart of the current selection, as PNG bytes (under `_lock`)."""
        metric = self._controls.metric
        selected = self._controls.devices
        frame = self._collector.frame() if metric is not None and selected else None
        png = self._chart_state.draw(
            frame, metric=metric, devices=selected, window_ns=self._controls.window_ns
        )
        self._plotted = list(self._chart_state.plotted_devices)
        self._off_axis = self._chart_state.off_axis_points
        return png

    def _update_labels(self, stats: CollectorStats | None = None) -> None:
        stats = stats or self._collector.stats
        self.status_label.value = status_line(stats, running=self._collector.running)
        self._capture.show_progress()

    def _all_widgets(self) -> list[widgets.Widget]:
        out: list[widgets.Widget] = []
        stack = list(self.children)
        while stack:
            child = stack.pop()
            out.append(child)
            stack.extend(getattr(child, "children", ()))
        return out


def _is_text_metric(latest: pd.DataFrame, metric: str) -> bool:
    """Whether the newest readings of `metric` are texts only (nothing to draw as a line)."""
    rows = latest.loc[(latest["metric"] == metric).to_numpy()]
    return bool(len(rows)) and rows["value"].isna().all() and rows["value_text"].notna().any()


def _show(widget: widgets.DOMWidget, visible: bool) -> None:
    display = None if visible else "none"
    if widget.layout.display != display:
        widget.layout.display = display
