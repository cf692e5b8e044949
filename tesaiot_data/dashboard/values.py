"""The dashboard's values as HTML: the latest-values grid and a text metric's states.

Pure functions of a DataFrame, like `format` and `panels`: every string a device sent is
escaped and cut short. The grid is one row per device and one column per metric, so a fleet
of five devices with six metrics is five rows, not thirty. A text metric (a classifier's
`ai_prediction`) has no line to draw; its states are a table of changes instead.
"""

from __future__ import annotations

import html
from collections import Counter

import numpy as np
import pandas as pd

from tesaiot_data.dashboard.format import (
    MAX_TABLE_ROWS,
    MAX_TOOLTIP_CHARS,
    clip,
    format_seconds,
    format_value,
    short_ids,
)

__all__ = [
    "MAX_GRID_CELL_CHARS",
    "MAX_GRID_METRICS",
    "MAX_STATE_ROWS",
    "latest_grid_html",
    "text_states_html",
]

#: Metric columns of the latest-values grid; the rest are counted beside it.
MAX_GRID_METRICS = 16
#: Characters of a text shown in a grid cell (the full text, cut at MAX_TOOLTIP_CHARS, on hover).
MAX_GRID_CELL_CHARS = 24
#: Rows of a text metric's state table, newest first.
MAX_STATE_ROWS = 30

_STYLE = (
    "<style>.tesaiot-grid{border-collapse:collapse;line-height:1.4;font-size:12px;"
    "font-family:monospace}"
    ".tesaiot-grid th,.tesaiot-grid td{padding:2px 8px;border-bottom:1px solid #ddd;"
    "white-space:nowrap}.tesaiot-grid th{text-align:left;vertical-align:bottom}"
    ".tesaiot-grid td.num{text-align:right}.tesaiot-grid th small{font-weight:400;"
    "color:#666}</style>"
)


def _attribute(text: str) -> str:
    return html.escape(clip(text, MAX_TOOLTIP_CHARS))


def latest_grid_html(
    latest: pd.DataFrame,
    *,
    max_devices: int = MAX_TABLE_ROWS,
    max_metrics: int = MAX_GRID_METRICS,
) -> str:
    """Render `Collector.latest()` as a device x metric grid of the newest values.

    A column's header holds its metric and its most common unit; a cell whose unit differs
    shows its own. Devices are shown by short id, the
    full id on hover; each cell's tooltip has the device, the metric, the value and its age.
    The last column is the age of the device's newest reading.

    Args:
        latest: Rows with device_id, metric, value (float64), unit, value_text and age_s
            (seconds), one per device and metric.
        max_devices: The most device rows; the rest are counted below the grid.
        max_metrics: The most metric columns; the rest are counted below the grid.

    Returns:
        The HTML; "no data yet" for an empty frame.
    """
    if latest.empty:
        return "<i>no data yet</i>"
    devices_all = latest["device_id"].astype(str).to_numpy()
    metrics_all = latest["metric"].astype(str).to_numpy()
    devices = sorted(set(devices_all))
    metrics = sorted(set(metrics_all))
    shown_devices, shown_metrics = devices[:max_devices], metrics[:max_metrics]
    names = short_ids(devices)
    units = latest["unit"].astype(object).to_numpy()
    cells: dict[tuple[str, str], tuple[float, object, object, float]] = {}
    for device, metric, value, unit, text, age in zip(
        devices_all,
        metrics_all,
        latest["value"].to_numpy(dtype=float),
        units,
        latest["value_text"].astype(object).to_numpy(),
        latest["age_s"].to_numpy(dtype=float),
        strict=True,
    ):
        cells[(device, metric)] = (value, unit, text, age)
    column_unit: dict[str, str | None] = {}
    for metric in shown_metrics:
        found = Counter(
            unit
            for d in devices
            if (d, metric) in cells and isinstance(unit := cells[(d, metric)][1], str)
        )
        # The most common unit heads the column (ties: the first by name); others show theirs.
        ranked = sorted(found.items(), key=lambda item: (-item[1], item[0]))
        column_unit[metric] = ranked[0][0] if ranked else None
    header = "".join(
        f"<th>{html.escape(clip(metric, MAX_GRID_CELL_CHARS))}"
        + (
            f"<br><small>{html.escape(clip(unit, MAX_GRID_CELL_CHARS))}</small>"
            if (unit := column_unit[metric])
            else ""
        )
        + "</th>"
        for metric in shown_metrics
    )
    rows = []
    for device in shown_devices:
        row = [f'<td title="{_attribute(device)}">{html.escape(names[device])}</td>']
        newest = np.inf
        for metric in shown_metrics:
            if (device, metric) not in cells:
                row.append("<td></td>")
                continue
            value, unit, text, age = cells[(device, metric)]
            newest = min(newest, age) if np.isfinite(age) else newest
            shown = format_value(value, text)
            if isinstance(unit, str) and unit != column_unit[metric]:
                shown = f"{shown} {unit}"
            tip = f"{device} {metric}: {shown} ({format_seconds(age, signed=False)} ago)"
            css = "" if isinstance(text, str) else ' class="num"'
            row.append(
                f'<td{css} title="{_attribute(tip)}">'
                f"{html.escape(clip(shown, MAX_GRID_CELL_CHARS))}</td>"
            )
        row.append(f'<td class="num">{format_seconds(newest, signed=False)}</td>')
        rows.append(f"<tr>{''.join(row)}</tr>")
    more = []
    if len(devices) > len(shown_devices):
        more.append(f"+{len(devices) - len(shown_devices):,} more devices")
    if len(metrics) > len(shown_metrics):
        more.append(f"+{len(metrics) - len(shown_metrics):,} more metrics")
    footer = f"<div><i>{', '.join(more)}</i></div>" if more else ""
    return (
        f'{_STYLE}<table class="tesaiot-grid"><thead><tr><th>device</th>{header}'
        f"<th>age</th></tr></thead><tbody>{''.join(rows)}</tbody></table>{footer}"
    )


def text_states_html(frame: pd.DataFrame, *, max_rows: int = MAX_STATE_ROWS) -> str:
    """Render a text metric's readings as its states: each change per device, newest first.

    Readings in a row of one device with the same text are one state, with their count.

    Args:
        frame: Rows of one metric, as `Collector.frame()` returns them (`timestamp`,
            `device_id`, `value_text`; rows without a text are left out), in receive order.
        max_rows: The most states to show; the rest are counted below the table.

    Returns:
        The HTML; "no text values in the window" when there is none.
    """
    texts = frame.loc[frame["value_text"].notna()] if len(frame) else frame
    if texts.empty:
        return "<i>no text values in the window</i>"
    device = texts["device_id"].astype(str).to_numpy()
    text = texts["value_text"].astype(str).to_numpy()
    stamps = pd.DatetimeIndex(texts["timestamp"])
    order = np.argsort(device, kind="stable")  # each device's readings, in receive order
    device, text, stamps = device[order], text[order], stamps[order]
    starts = np.flatnonzero(np.r_[True, (device[1:] != device[:-1]) | (text[1:] != text[:-1])])
    counts = np.diff(np.r_[starts, len(device)])
    newest_first = np.argsort(-stamps[starts].asi8, kind="stable")
    names = short_ids(list(set(device)))
    rows = []
    for index in newest_first[:max_rows]:
        start = starts[index]
        full, state = device[start], text[start]
        since = stamps[start].strftime("%H:%M:%S.%f")[:-3]
        rows.append(
            f'<tr><td>{since}</td><td title="{_attribute(full)}">{html.escape(names[full])}</td>'
            f'<td title="{_attribute(state)}">{html.escape(clip(state, MAX_GRID_CELL_CHARS))}'
            f'</td><td class="num">{counts[index]:,}</td></tr>'
        )
    more = len(starts) - len(rows)
    footer = f"<div><i>+{more:,} earlier states</i></div>" if more > 0 else ""
    return (
        f'{_STYLE}<table class="tesaiot-grid"><thead><tr><th>since (UTC)</th><th>device</th>'
        f"<th>value</th><th>readings</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{footer}"
    )
