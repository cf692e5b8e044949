"""A live Jupyter dashboard of a running `Collector`: chart, latest values, capture and status.

In a notebook::

    collector = Collector(settings, window="5min").start()
    collector.dashboard()          # the cell's value: the widget shows and updates itself

The package's modules: `widget` (`Dashboard`, the ipywidgets box and its refresh thread),
made of `controls` (the selectors and the pause button), `capture` (Record and Snapshot),
`monitor_panels` (the health and alerts tables as widgets), `rows` (what it reads from the
collector) and `live_feed` (what the interactive chart is sent); `live_chart` (`LiveChart`,
the interactive uPlot chart, an anywidget, and `decimate`), `chart` (the matplotlib chart for
`save_png` and front ends without widget JavaScript, `downsample`, and the time axis both
charts share), `panels` (the health and alerts tables as HTML), `values` (the latest-values
grid and a text metric's states as HTML) and `format` (the latest-values list, short ids,
durations and other text). `static/` holds the chart's JavaScript (uPlot 1.6.32,
MIT, vendored). The collector imports this package only when `Collector.dashboard()` is
called: ipywidgets, anywidget and matplotlib stay out of scripts that never show one.
"""

from __future__ import annotations

from tesaiot_data.dashboard.chart import MAX_LEGEND_ENTRIES, MAX_POINTS_PER_LINE, downsample
from tesaiot_data.dashboard.format import (
    MAX_CELL_CHARS,
    MAX_TABLE_ROWS,
    MAX_TOOLTIP_CHARS,
    latest_table_html,
    short_ids,
)
from tesaiot_data.dashboard.panels import alerts_table_html, health_table_html
from tesaiot_data.dashboard.values import latest_grid_html, text_states_html
from tesaiot_data.dashboard.widget import WINDOWS, Dashboard

__all__ = [
    "MAX_CELL_CHARS",
    "MAX_LEGEND_ENTRIES",
    "MAX_POINTS_PER_LINE",
    "MAX_TABLE_ROWS",
    "MAX_TOOLTIP_CHARS",
    "WINDOWS",
    "Dashboard",
    "alerts_table_html",
    "downsample",
    "health_table_html",
    "latest_grid_html",
    "latest_table_html",
    "short_ids",
    "text_states_html",
]
