"""The dashboard's health and alerts panels: `Collector.health()` and `alerts()` as HTML tables.

Pure functions of a DataFrame, like `format`: every string is escaped and cut short, and a
column the collector does not (yet) give is left out, so the panels follow the collector's
frames without breaking when a column is added. The device is read from `device_id`, the
frames' name since 0.2; a frame with only `device` (its 0.1 name, still given as a deprecated
copy) is read from that.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import numpy as np
import pandas as pd

from tesaiot_data.dashboard.format import (
    MAX_CELL_CHARS,
    MAX_TABLE_ROWS,
    SHORT_ID,
    format_seconds,
)
from tesaiot_data.schema import epoch_ns

__all__ = ["MAX_ALERT_ROWS", "alerts_table_html", "health_table_html"]

#: Alerts shown, newest first; the rest are counted below the table.
MAX_ALERT_ROWS = 20

_ELLIPSIS = "\u2026"
_STYLE = (
    "<style>.tesaiot-panel{border-collapse:collapse;line-height:1.4;font-size:12px;"
    "font-family:monospace}"
    ".tesaiot-panel th,.tesaiot-panel td{padding:2px 8px;text-align:left;"
    "border-bottom:1px solid #ddd}.tesaiot-panel td.num{text-align:right}"
    ".tesaiot-panel tr.silent td,.tesaiot-panel tr.firing td{color:#b00020}"
    ".tesaiot-panel tr.silent td.flag,.tesaiot-panel tr.firing td.flag{font-weight:700}</style>"
)


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        return "-"
    if isinstance(value, pd.Timestamp):
        return str(value.strftime("%H:%M:%S.%f"))[:-3]
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        return ", ".join(str(item) for item in value)
    return str(value)


def _seconds(value: object) -> str:
    if not isinstance(value, (int, float, np.number)):
        return "-"
    return format_seconds(float(value))


def _age(value: object) -> str:
    if not isinstance(value, (int, float, np.number)):
        return "-"
    return format_seconds(float(value), signed=False)


def _number(value: object) -> str:
    if not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
        return "-"
    return f"{float(value):.4g}"


def _share(value: object) -> str:
    if not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
        return "-"
    return f"{100 * float(value):.1f} %"


def _cell(text: str, *, css: str = "", title: str | None = None) -> str:
    shown = text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + _ELLIPSIS
    attributes = f' class="{css}"' if css else ""
    if title is not None or shown != text:
        attributes += f' title="{html.escape((title or text)[:200])}"'
    return f"<td{attributes}>{html.escape(shown)}</td>"


def _device_column(frame: pd.DataFrame) -> str | None:
    """The column holding the device id: `device_id`, else the 0.1 `device`; None if neither."""
    for column in ("device_id", "device"):
        if column in frame.columns:
            return column
    return None


def _device_cell(device: object) -> str:
    full = _text(device)
    return _cell(full[:SHORT_ID], title=full)


# column -> (header, formatter, css)
_HEALTH: dict[str, tuple[str, Callable[[object], str], str]] = {
    "age_s": ("last seen", _age, "num"),
    "msgs_per_s": ("msg/s", _number, "num"),
    "usual_interval_s": ("usual interval", _age, "num"),
    "clock_skew_s": ("clock skew", _seconds, "num"),
    "reject_share": ("rejects", _share, "num"),
    "metrics": ("metrics", _text, ""),
}
_ALERTS: dict[str, tuple[str, Callable[[object], str], str]] = {
    "time": ("time (UTC)", _text, ""),
    "rule": ("rule", _text, ""),
    "metric": ("metric", _text, ""),
    "value": ("value", _number, "num"),
    "state": ("state", _text, "flag"),
}


def _table(header: list[str], rows: list[str], more: int, what: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    footer = f"<div><i>+{more} more {what}</i></div>" if more > 0 else ""
    return (
        f'{_STYLE}<table class="tesaiot-panel"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>{footer}"
    )


def _rows_of(frame: pd.DataFrame, order: np.ndarray, columns: list[str]) -> list[list[object]]:
    # Column by column (`tolist` gives Timestamps, floats, strings): no per-row Series.
    picked = [frame[column].take(order).tolist() for column in columns]
    return [list(row) for row in zip(*picked, strict=True)] if columns else []


def health_table_html(health: pd.DataFrame, *, max_rows: int = MAX_TABLE_ROWS) -> str:
    """Render `Collector.health()` as an HTML table, silent devices first.

    Args:
        health: One row per device with `device_id` (or the 0.1 `device`) and some of
            `silent` (bool), `age_s`, `msgs_per_s`, `usual_interval_s`, `clock_skew_s`
            (seconds), `reject_share` (0..1) and `metrics`; other columns are left out.
        max_rows: The most rows to show; the rest are counted below the table.

    Returns:
        The HTML; "no devices yet" for an empty frame.
    """
    device_column = None if health is None else _device_column(health)
    if health is None or health.empty or device_column is None:
        return "<i>no devices yet</i>"
    devices = health[device_column].astype(str).to_numpy()
    silent = (
        health["silent"].fillna(False).to_numpy(dtype=bool)
        if "silent" in health.columns
        else np.zeros(len(health), dtype=bool)
    )
    order = np.lexsort((devices, ~silent))[:max_rows]
    columns = [c for c in _HEALTH if c in health.columns]
    rows = []
    for position, values in zip(order, _rows_of(health, order, columns), strict=True):
        is_silent = bool(silent[position])
        cells = [_device_cell(devices[position])]
        cells.append(f'<td class="flag">{"silent" if is_silent else "ok"}</td>')
        for column, value in zip(columns, values, strict=True):
            _header, fmt, css = _HEALTH[column]
            cells.append(_cell(fmt(value), css=css))
        css_row = ' class="silent"' if is_silent else ""
        device = html.escape(str(devices[position]))
        rows.append(f'<tr{css_row} data-device="{device}">{"".join(cells)}</tr>')
    header = ["device", "state", *(_HEALTH[c][0] for c in columns)]
    return _table(header, rows, len(health) - len(order), "devices")


def alerts_table_html(alerts: pd.DataFrame, *, max_rows: int = MAX_ALERT_ROWS) -> str:
    """Render `Collector.alerts()` as an HTML table, newest first.

    Args:
        alerts: Rows with some of `time` (UTC timestamps), `rule`, `device_id` (or the 0.1
            `device`), `metric`, `value` and `state` ("firing", "cleared", ...); other
            columns are left out.
        max_rows: The most rows to show; the rest are counted below the table.

    Returns:
        The HTML; "no alerts" for an empty frame.
    """
    if alerts is None or alerts.empty:
        return "<i>no alerts</i>"
    if "time" in alerts.columns:
        order = np.argsort(-_ns_of(alerts["time"]), kind="stable")[:max_rows]
    else:
        order = np.arange(len(alerts))[::-1][:max_rows]
    device_column = _device_column(alerts)
    wanted = ("time", "rule", device_column, "metric", "value", "state")
    columns = [c for c in wanted if c is not None and c in alerts.columns]
    rows = []
    for values in _rows_of(alerts, order, columns):
        row = dict(zip(columns, values, strict=True))
        cells = []
        for column in columns:
            if column == device_column:
                cells.append(_device_cell(row[column]))
                continue
            _header, fmt, css = _ALERTS[column]
            cells.append(_cell(fmt(row[column]), css=css))
        firing = str(row.get("state", "")).lower() == "firing"
        css_row = ' class="firing"' if firing else ""
        rows.append(f"<tr{css_row}>{''.join(cells)}</tr>")
    header = ["device" if c == device_column else _ALERTS[c][0] for c in columns]
    return _table(header, rows, len(alerts) - len(order), "alerts")


def _ns_of(column: pd.Series) -> np.ndarray:
    return epoch_ns(pd.to_datetime(column, utc=True))
