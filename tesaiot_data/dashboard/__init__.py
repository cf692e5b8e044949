"""A live Jupyter dashboard of a running `Collector`: chart, latest values, capture and status.

In a notebook::

    collector = Collector(settings, window="5min").start()
    collector.dashboard()          # the cell's value: the widget shows and updates itself

The package's modules: `widget` (`Dashboard`, the ipywidgets box and its refresh thread),
`chart` (the matplotlib chart and `downsample`) and `format` (the latest-values table and
other text). The collector imports this package only when `Collector.dashboard()` is called:
ipywidgets and matplotlib stay out of scripts that never show one.
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
from tesaiot_data.dashboard.widget import WINDOWS, Dashboard

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
]
