"""Render docs/dashboard.png from a real demo session: the dashboard as a notebook shows it.

A `LocalBroker`, a `DeviceFleet` and a `Collector` run for some seconds (a recording started
with the dashboard's Record button runs for the second half), then `dashboard.refresh()`
draws the chart. Two files are written:

- `docs/dashboard-chart.png`: the chart's PNG bytes exactly as the dashboard's Image widget
  holds them (`dashboard.chart_png`);
- `docs/dashboard.png`: the whole widget composed from its live state: the status line,
  the selectors with their options and selection, the chart, the latest-values table (parsed
  from the HTML widget), the capture controls and their label. There is no browser here, so
  the widgets' frames are drawn with matplotlib; every text and value in them is the real one.

Usage::

    .venv/bin/python scripts/render_dashboard_png.py [--seconds 40] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from tesaiot_data import Collector
from tesaiot_data.dashboard import Dashboard
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.demo.fleet import DeviceFleet

DOCS = Path(__file__).resolve().parent.parent / "docs"
WIDTH, HEIGHT = 1260, 800  # pixels of the composed image (at 100 dpi)
TABLE_ROWS = 9  # rows of the latest-values table shown in the image
BLUE, GREY, DARK = "#2196f3", "#9e9e9e", "#212121"


class _TableText(HTMLParser):
    """The cell texts of the latest-values HTML table, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.footer = ""
        self._cell: list[str] | None = None
        self._in_footer = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "i":
            self._in_footer = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "i":
            self._in_footer = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._in_footer:
            self.footer += data


def run_session(seconds: float) -> tuple[Dashboard, Collector, DeviceFleet, LocalBroker]:
    """Start broker, fleet, collector and dashboard; collect for `seconds`, recording half."""
    broker = LocalBroker().start()
    fleet = DeviceFleet(broker.publisher(), devices=12, rate=60, seed=7, malformed=0.01).start()
    collector = Collector(broker.settings(), window="5min").start()
    dashboard = collector.dashboard(metric="temperature", window="1min", refresh="1s")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline - seconds / 2:
        time.sleep(0.2)
    dashboard.record_name.value = "recordings/session-demo.parquet"
    dashboard.record_button.value = True
    while time.monotonic() < deadline:
        time.sleep(0.2)
    # Deselect two devices, as a user would, to show a partial selection.
    chosen = list(dashboard.device_selector.options)
    dashboard.device_selector.value = tuple(chosen[:4] + chosen[6:])
    dashboard.refresh()
    return dashboard, collector, fleet, broker


def _box(ax: object, x: float, y: float, w: float, h: float, **style: object) -> None:
    style = {"facecolor": "white", "edgecolor": GREY, "linewidth": 1.0} | style
    ax.add_patch(  # type: ignore[attr-defined]
        FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=3", **style)
    )


def _text(ax: object, x: float, y: float, text: str, **style: object) -> None:
    style = {"fontsize": 10, "va": "center", "ha": "left", "color": DARK} | style
    ax.text(x, y, text, **style)  # type: ignore[attr-defined]


def _button(ax: object, x: float, w: float, y: float, label: str, *, pressed: bool) -> None:
    _box(ax, x, y, w, 28, facecolor="#bdbdbd" if pressed else "#eeeeee", edgecolor="#bdbdbd")
    _text(ax, x + w / 2, y + 14, label, ha="center")


def compose(dashboard: Dashboard) -> bytes:
    """Draw the dashboard's widgets, with their current values, around its chart."""
    figure = Figure(figsize=(WIDTH / 100, HEIGHT / 100), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(HEIGHT, 0)
    ax.axis("off")
    y = 12
    _text(ax, 14, y + 10, dashboard.status_label.value)

    y += 30
    _text(ax, 14, y + 14, dashboard.metric_selector.description, ha="left")
    _box(ax, 80, y, 180, 28)
    _text(ax, 88, y + 14, f"{dashboard.metric_selector.value}")
    _text(ax, 248, y + 14, "v", ha="center", color=GREY)
    _text(ax, 280, y + 14, dashboard.window_selector.description)
    _box(ax, 340, y, 110, 28)
    _text(ax, 348, y + 14, f"{dashboard.window_selector.label}")
    _text(ax, 438, y + 14, "v", ha="center", color=GREY)
    _button(ax, 470, 100, y, dashboard.pause_button.description, pressed=dashboard.paused)

    y += 40
    chart = mpimg.imread(io.BytesIO(dashboard.chart_png), format="png")
    chart_h, chart_w = chart.shape[:2]
    list_w = WIDTH - chart_w - 40
    _text(ax, 14, y + 12, dashboard.device_selector.description)
    _box(ax, 80, y, list_w - 66, chart_h - 20)
    selected = set(dashboard.device_selector.value)
    for i, device in enumerate(dashboard.device_selector.options[: dashboard.device_selector.rows]):
        row_y = y + 4 + i * 22
        if device in selected:
            ax.add_patch(
                FancyBboxPatch(
                    (82, row_y),
                    list_w - 70,
                    20,
                    boxstyle="square,pad=0",
                    facecolor=BLUE,
                    edgecolor="none",
                )
            )
        _text(
            ax,
            88,
            row_y + 10,
            device[:27],
            fontsize=9,
            color="white" if device in selected else DARK,
            family="monospace",
        )
    ax.imshow(chart, extent=(list_w + 20, list_w + 20 + chart_w, y + chart_h, y))

    y += chart_h + 10
    _text(ax, 14, y + 10, "Latest values", fontweight="bold")
    parser = _TableText()
    parser.feed(dashboard.table.value)
    header, *rows = parser.rows
    columns = (14, 124, 264, 384, 484)
    y += 26
    for x, name in zip(columns, header, strict=True):
        _text(ax, x, y + 9, name, fontweight="bold", family="monospace", fontsize=9)
    ax.plot([14, 560], [y + 20, y + 20], color="#dddddd", linewidth=1)
    for row in rows[:TABLE_ROWS]:
        y += 21
        for x, cell in zip(columns, row, strict=True):
            _text(ax, x, y + 9, cell, family="monospace", fontsize=9)
    # Rows the widget lists, plus those it only counts in its "+N more rows" footer.
    total = len(rows) + (int(parser.footer.split()[0].lstrip("+")) if parser.footer else 0)
    more = total - min(len(rows), TABLE_ROWS)
    if more > 0:
        y += 21
        _text(ax, 14, y + 9, f"+{more} more rows", fontstyle="italic", fontsize=9)

    y += 34
    _text(ax, 14, y + 14, dashboard.record_name.description)
    _box(ax, 60, y, 400, 28, facecolor="#f5f5f5" if dashboard.record_name.disabled else "white")
    _text(ax, 68, y + 14, dashboard.record_name.value, fontsize=9, family="monospace")
    _button(
        ax, 470, 100, y, dashboard.record_button.description, pressed=dashboard.record_button.value
    )
    _button(ax, 580, 120, y, dashboard.snapshot_button.description, pressed=False)
    _text(ax, 14, y + 46, dashboard.record_label.value)

    buffer = io.BytesIO()
    figure.canvas.print_png(buffer)  # type: ignore[attr-defined]
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="how long to collect")
    parser.add_argument("--out", type=Path, default=DOCS / "dashboard.png", help="composed image")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    start_dir = Path.cwd()
    out = args.out.resolve()
    chart_out = out.with_name(f"{out.stem}-chart.png")
    with tempfile.TemporaryDirectory(prefix="tesaiot-render-") as tmp:
        os.chdir(tmp)  # the recording goes to the temporary folder
        try:
            dashboard, collector, fleet, broker = run_session(args.seconds)
            try:
                composed = compose(dashboard)
                out.parent.mkdir(parents=True, exist_ok=True)
                chart_out.write_bytes(dashboard.chart_png)
                out.write_bytes(composed)
            finally:
                dashboard.close()
                collector.stop()
                fleet.stop()
                broker.close()
        finally:
            os.chdir(start_dir)
    print(f"wrote {chart_out} ({chart_out.stat().st_size:,} bytes)")
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
