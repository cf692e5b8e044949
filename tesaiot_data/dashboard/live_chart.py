"""The dashboard's interactive chart: an anywidget drawn with uPlot in the browser.

The JavaScript ships inside the package (`static/`: uPlot 1.6.32 and `live_chart.js`, inlined
into the widget's ES module here), so it works in JupyterLab 4, Notebook 7 and VS Code with no
Jupyter extension to install and no network.

Data go to the browser as custom messages with two float64 buffers (times in ms since the
epoch, values), never as the whole window on every refresh:

- `set_data` (a new metric, device choice or window; a view that opens) sends the window,
  thinned to a minimum and a maximum per pixel-wide time bucket (`decimate`), so a spike of
  one reading stays visible however far out the view is;
- `append` sends only the points received since the last message, thinned on the same grid;
- a zoom or pan in the browser asks for its time range at the view's own resolution.

The chart keeps every point of the window in Python (float64 arrays per device, trimmed to
the window), so a zoom is answered without asking the collector again.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import anywidget
import numpy as np
import traitlets

from tesaiot_data.dashboard.format import short_ids

__all__ = ["DEFAULT_PLOT_WIDTH", "LiveChart", "decimate"]

logger = logging.getLogger(__name__)

#: Plot width in CSS pixels assumed until the browser reports the real one.
DEFAULT_PLOT_WIDTH = 900
_MIN_PLOT_WIDTH = 100
_MAX_PLOT_WIDTH = 8_000  # a 4K screen at 2x; bounds what a front end can make us send
_TAB10 = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
# Ten colours solid, then dashed, then dotted: 30 devices that all look different.
_STYLES = tuple((color, dash) for dash in ((), (6, 3), (2, 2)) for color in _TAB10)

_CHART_CSS = """
.tesaiot-live{width:100%;min-width:0;box-sizing:border-box;font:12px system-ui,sans-serif}
.tesaiot-live-bar{display:flex;gap:12px;align-items:center;margin:2px 0 4px}
.tesaiot-live-title{font-weight:600;font-size:13px;white-space:nowrap}
.tesaiot-live-hint{color:#777;font-size:11px}
.tesaiot-live-reset{font-size:11px;padding:1px 8px;cursor:pointer;visibility:hidden}
.tesaiot-live.zoomed .tesaiot-live-reset{visibility:visible}
.tesaiot-live-plot{position:relative;width:100%;overflow:hidden}
.tesaiot-live-waiting{height:120px;display:flex;align-items:center;justify-content:center;
  color:#888}
.tesaiot-live-tip{position:absolute;display:none;pointer-events:none;z-index:10;
  background:rgba(255,255,255,.95);border:1px solid #bbb;border-radius:3px;padding:3px 6px;
  font:11px monospace;white-space:nowrap;box-shadow:0 1px 3px rgba(0,0,0,.2)}
.tesaiot-live-tip-device{color:#333}
.tesaiot-live-legend{display:flex;flex-wrap:wrap;gap:2px 10px;margin-top:2px}
.tesaiot-live-chip{cursor:pointer;user-select:none;display:inline-flex;align-items:center;
  gap:4px;font-family:monospace}
.tesaiot-live-chip.off{opacity:.35}
.tesaiot-live-swatch{display:inline-block;width:18px;height:0;border-top:2px solid}
.tesaiot-live-note{color:#b35900;font-size:11px}
"""


def _static(name: str) -> str:
    return resources.files("tesaiot_data.dashboard").joinpath(f"static/{name}").read_text("utf-8")


def decimate(t: np.ndarray, y: np.ndarray, bucket: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the minimum and the maximum of each time bucket `bucket` wide.

    Buckets are aligned to multiples of `bucket` (not to the first point), so thinning the
    window at once and thinning it piece by piece as points arrive agree bucket by bucket.
    A spike of one reading is a bucket's extreme, so it survives however far out the view.

    Args:
        t: Times, sorted, float64 (any unit; ms here).
        y: Values, float64, no NaN.
        bucket: Bucket width in the unit of `t`; 0 or less keeps every point.

    Returns:
        The kept times and values, in time order: at most two points per bucket (the first
        minimum and the first maximum).
    """
    n = len(t)
    if n <= 2 or bucket <= 0:
        return t, y
    ids = np.floor(t / bucket).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    if 2 * len(starts) >= n:
        return t, y
    segment = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    keep = []
    for extreme in (np.minimum.reduceat(y, starts), np.maximum.reduceat(y, starts)):
        hits = np.flatnonzero(y == extreme[segment])
        first = np.r_[True, segment[hits][1:] != segment[hits][:-1]]
        keep.append(hits[first])
    kept = np.union1d(keep[0], keep[1])
    return t[kept], y[kept]


class LiveChart(anywidget.AnyWidget):
    """One metric of many devices over a time window, drawn and zoomed in the browser.

    The Python side holds every point of the window; the browser gets a thinned copy and
    then only the new points. See the module's docstring for the messages.

    Example:
        >>> chart = LiveChart()  # doctest: +SKIP
        >>> chart.set_data({"dev-1": (t_ms, values)}, metric="temperature", unit="celsius",
        ...                now_ms=now, window_ms=300_000)  # doctest: +SKIP
        >>> chart.append({"dev-1": (new_t_ms, new_values)}, now_ms=now + 1000)  # doctest: +SKIP

    Attributes:
        series: One dict per device in legend order: `id`, `label` (short id), `color`, `dash`.
        metric: The metric drawn.
        unit: Its unit, or "".
        note: A line under the chart (points left out, for example), or "".
        window_ms: The time axis's length when following the data, in ms.
        plot_width: The plot's width in CSS pixels, reported by the browser.
        messages_sent: Data messages sent to the browser.
        bytes_sent: Bytes of their buffers.
    """

    _esm = _static("uPlot.iife.min.js") + "\n" + _static("live_chart.js")
    _css = _static("uPlot.min.css") + "\n" + _CHART_CSS

    series = traitlets.List(traitlets.Dict()).tag(sync=True)
    metric = traitlets.Unicode("").tag(sync=True)
    unit = traitlets.Unicode("").tag(sync=True)
    note = traitlets.Unicode("").tag(sync=True)
    window_ms = traitlets.Float(300_000.0).tag(sync=True)
    plot_width = traitlets.Int(DEFAULT_PLOT_WIDTH).tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lock = threading.RLock()
        self._data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._styles: dict[str, tuple[str, tuple[int, ...]]] = {}
        self._style_cycle = itertools.cycle(_STYLES)
        self._now_ms = 0.0
        self.messages_sent = 0
        self.bytes_sent = 0
        self.on_msg(self._on_front_end_msg)

    # ----------------------------------------------------------------- public

    @property
    def devices(self) -> list[str]:
        """The devices drawn, in legend order (sorted)."""
        return [entry["id"] for entry in self.series]

    @property
    def points(self) -> int:
        """Points held in Python for the window (all devices)."""
        with self._lock:
            return sum(len(t) for t, _y in self._data.values())

    def data(self, device: str) -> tuple[np.ndarray, np.ndarray]:
        """Return one device's points held: times in ms since the epoch and values (float64).

        Raises:
            KeyError: The device is not drawn.
        """
        with self._lock:
            t, y = self._data[device]
            return t.copy(), y.copy()

    def set_data(
        self,
        data: Mapping[str, tuple[np.ndarray, np.ndarray]],
        *,
        metric: str,
        unit: str,
        now_ms: float,
        window_ms: float,
        note: str = "",
    ) -> int:
        """Replace everything drawn and send the window, thinned to the plot's width.

        Args:
            data: Device id -> (times in ms since the epoch, values): float64 arrays sorted
                by time, no NaN. These devices, sorted, make the legend.
            metric: The metric's name (the chart's title).
            unit: Its unit, or "".
            now_ms: The right end of the time axis when following, in ms since the epoch.
            window_ms: The time axis's length when following, in ms.
            note: A line under the chart, or "".

        Returns:
            Bytes of data sent to the browser.
        """
        with self._lock:
            self._data = {
                d: (np.asarray(t, float), np.asarray(y, float)) for d, (t, y) in data.items()
            }
            self._now_ms = float(now_ms)
            self._trim()
            with self.hold_sync():
                self.metric = metric
                self.unit = unit
                self.note = note
                self.window_ms = float(window_ms)
                self._set_series(sorted(self._data))
            return self._send_window()

    def append(
        self,
        data: Mapping[str, tuple[np.ndarray, np.ndarray]],
        *,
        now_ms: float,
        note: str | None = None,
    ) -> int:
        """Add points and send only them (thinned on the same grid), then move the axis on.

        A device not seen before joins the legend.

        Args:
            data: Device id -> (times in ms, values) of the new points: float64, sorted by
                time, no NaN; points older than a device's newest are merged into place.
            now_ms: The time axis's new right end when following, in ms since the epoch.
            note: A new line under the chart; None keeps the current one.

        Returns:
            Bytes of data sent to the browser.
        """
        with self._lock:
            self._now_ms = float(now_ms)
            fresh: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for device, (new_t, new_y) in data.items():
                t = np.asarray(new_t, float)
                y = np.asarray(new_y, float)
                if len(t) == 0:
                    continue
                fresh[device] = (t, y)
                held = self._data.get(device)
                if held is None:
                    self._data[device] = (t, y)
                elif len(held[0]) == 0 or t[0] >= held[0][-1]:
                    self._data[device] = (
                        np.concatenate([held[0], t]),
                        np.concatenate([held[1], y]),
                    )
                else:  # a late point from a device's clock: merge in time order
                    mt = np.concatenate([held[0], t])
                    order = np.argsort(mt, kind="stable")
                    self._data[device] = (mt[order], np.concatenate([held[1], y])[order])
            self._trim()
            with self.hold_sync():
                if note is not None:
                    self.note = note
                new_devices = set(fresh) - set(self.devices)
                if new_devices:
                    self._set_series(sorted(self._data))
            bucket = self.window_ms / self._width()
            thinned = {d: decimate(t, y, bucket) for d, (t, y) in fresh.items()}
            return self._send_points("append", thinned)

    # -------------------------------------------------------------- internals

    def _width(self) -> int:
        return min(_MAX_PLOT_WIDTH, max(_MIN_PLOT_WIDTH, int(self.plot_width)))

    def _set_series(self, devices: Sequence[str]) -> None:
        labels = short_ids(devices)
        entries = []
        for device in devices:
            style = self._styles.get(device)
            if style is None:
                style = self._styles[device] = next(self._style_cycle)
            entries.append(
                {"id": device, "label": labels[device], "color": style[0], "dash": list(style[1])}
            )
        if entries != self.series:
            self.series = entries

    def _trim(self) -> None:
        start = self._now_ms - self.window_ms
        for device, (t, y) in list(self._data.items()):
            cut = int(np.searchsorted(t, start, side="left"))
            if cut:
                self._data[device] = (t[cut:], y[cut:])

    def _send_window(self) -> int:
        bucket = self.window_ms / self._width()
        thinned = {d: decimate(t, y, bucket) for d, (t, y) in self._data.items()}
        return self._send_points("reset", thinned)

    def _send_range(self, low: float, high: float, width: int) -> int:
        bucket = (high - low) / min(_MAX_PLOT_WIDTH, max(_MIN_PLOT_WIDTH, width))
        thinned = {}
        for device, (t, y) in self._data.items():
            a = int(np.searchsorted(t, low, side="left"))
            b = int(np.searchsorted(t, high, side="right"))
            thinned[device] = decimate(t[a:b], y[a:b], bucket)
        return self._send_points("detail", thinned, extra={"range": [low, high]})

    def _send_points(
        self,
        mode: str,
        thinned: Mapping[str, tuple[np.ndarray, np.ndarray]],
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> int:
        ids = list(thinned)
        counts = [len(thinned[d][0]) for d in ids]
        t = np.concatenate([thinned[d][0] for d in ids]) if ids else np.empty(0)
        y = np.concatenate([thinned[d][1] for d in ids]) if ids else np.empty(0)
        content: dict[str, Any] = {
            "type": "data",
            "mode": mode,
            "now_ms": self._now_ms,
            "window_ms": self.window_ms,
            "ids": ids,
            "counts": counts,
            **(extra or {}),
        }
        t_bytes = np.ascontiguousarray(t, dtype="<f8").tobytes()
        y_bytes = np.ascontiguousarray(y, dtype="<f8").tobytes()
        self.send(content, buffers=[t_bytes, y_bytes])
        self.messages_sent += 1
        self.bytes_sent += len(t_bytes) + len(y_bytes)
        return len(t_bytes) + len(y_bytes)

    def _on_front_end_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        try:
            kind = content.get("type")
            width = content.get("width")
            if isinstance(width, (int, float)) and width > 0:
                self.plot_width = min(_MAX_PLOT_WIDTH, max(_MIN_PLOT_WIDTH, int(width)))
            with self._lock:
                if kind == "hello":  # a view opened (or the page reloaded): it has nothing
                    self._send_window()
                elif kind == "view":
                    low, high = float(content["min"]), float(content["max"])
                    if high > low:
                        self._send_range(low, high, self._width())
        except Exception:  # a bad message from a page must not break the kernel's comm loop
            logger.exception("live chart: cannot answer %r", content.get("type"))
