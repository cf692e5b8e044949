"""Text for the dashboard: the latest-values table as HTML, short ids, ages, file names.

Pure functions of their arguments, with no widget and no matplotlib: every string a device
sent is escaped, and a long one is cut short so that one camera frame sent as text cannot
make a table of hundreds of kilobytes.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "MAX_CELL_CHARS",
    "MAX_TABLE_ROWS",
    "MAX_TOOLTIP_CHARS",
    "RECORDINGS_DIR",
    "SHORT_ID",
    "clip",
    "default_recording_path",
    "format_elapsed",
    "format_seconds",
    "format_value",
    "latest_table_html",
    "short_ids",
]

#: Rows shown in the latest-values table; the rest are counted below it.
MAX_TABLE_ROWS = 60
#: Characters of a text shown in a table cell; longer texts end in "…".
MAX_CELL_CHARS = 60
#: Characters of a long text kept in its cell's tooltip (a base64 image must not fill a page).
MAX_TOOLTIP_CHARS = 200
#: Characters of a device id shown in the legend and the table.
SHORT_ID = 8
#: The folder (relative to the working directory) of the dashboard's recordings and snapshots.
RECORDINGS_DIR = Path("recordings")

_ELLIPSIS = "\u2026"
_TABLE_STYLE = (
    "<style>.tesaiot-latest{border-collapse:collapse;font-size:12px;font-family:monospace}"
    ".tesaiot-latest th,.tesaiot-latest td{padding:2px 10px;text-align:left;"
    "border-bottom:1px solid #ddd}.tesaiot-latest td.num{text-align:right}</style>"
)


def short_ids(device_ids: Sequence[str], *, length: int = SHORT_ID) -> dict[str, str]:
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


def format_seconds(seconds: float, *, signed: bool = True) -> str:
    """Return a duration for a label: `0.4 s`, `12 s`, `5 min`, `2.5 h`.

    Never `-0.0 s`: a value that rounds to zero is shown as `0.0 s`.

    Args:
        seconds: The duration, in seconds; NaN or infinite gives "-".
        signed: Keep a negative sign (a clock skew); False clamps at zero (an age, where a
            small negative value is only the difference between two clocks).

    Returns:
        The text.
    """
    if not np.isfinite(seconds):
        return "-"
    seconds = float(seconds) if signed else max(0.0, float(seconds))
    size = abs(seconds)
    if size < 10:
        number, unit = f"{seconds:.1f}", "s"
    elif size < 120:
        number, unit = f"{seconds:.0f}", "s"
    elif size < 7200:
        number, unit = f"{seconds / 60:.0f}", "min"
    else:
        number, unit = f"{seconds / 3600:.1f}", "h"
    if float(number) == 0:
        number = number.lstrip("-")
    return f"{number} {unit}"


def format_value(value: float, text: object) -> str:
    """Return a reading as shown in a table: its text, or its number to 6 significant digits.

    Args:
        value: The number (NaN for a text reading).
        text: The text, or None / NaN for a number.

    Returns:
        The text; "-" for a reading with neither.
    """
    if isinstance(text, str):
        return text
    if value is None or not np.isfinite(value):
        return "-" if value is None or np.isnan(value) else str(value)
    return f"{value:.6g}"


def clip(text: str, limit: int) -> str:
    """Return `text` cut to `limit` characters, the last one "…" when it was longer.

    Args:
        text: The text.
        limit: The most characters to keep.

    Returns:
        The text, whole or cut.
    """
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


def _cell(text: str, *, css: str = "") -> str:
    """A table cell that shows at most MAX_CELL_CHARS; a longer text gets a bounded tooltip."""
    shown = clip(text, MAX_CELL_CHARS)
    attributes = f' class="{css}"' if css else ""
    if shown != text:
        attributes += f' title="{html.escape(clip(text, MAX_TOOLTIP_CHARS))}"'
    return f"<td{attributes}>{html.escape(shown)}</td>"


def format_elapsed(seconds: float) -> str:
    """Return a duration as `m:ss`, or `h:mm:ss` from an hour on.

    Args:
        seconds: The duration.

    Returns:
        The text.
    """
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def default_recording_path(
    kind: str, now: datetime, *, folder: str | Path = RECORDINGS_DIR
) -> Path:
    """Return the file a dashboard button writes to when no name is given.

    Record and Snapshot name their files alike, from the moment of the click (call this in
    the click handler, not when the dashboard is made), in one folder relative to the
    working directory: `recordings/session-20251209T103045.parquet`,
    `recordings/snapshot-20251209T103045.parquet`.

    Args:
        kind: The file name's first word: `"session"` for Record, `"snapshot"` for Snapshot.
        now: The moment of the click; a naive datetime is taken as UTC.
        folder: The folder.

    Returns:
        `<folder>/<kind>-<UTC time as YYYYmmddTHHMMSS>.parquet`, as given (relative by
        default).

    Raises:
        ValueError: `kind` is empty or holds a path separator.
    """
    if not kind or "/" in kind or "\\" in kind:
        raise ValueError(f"kind={kind!r} must be one word, such as 'session' or 'snapshot'")
    utc = now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)
    return Path(folder) / f"{kind}-{utc:%Y%m%dT%H%M%S}.parquet"


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
        device_title = html.escape(clip(device, MAX_TOOLTIP_CHARS))
        rows.append(
            f'<tr><td title="{device_title}">{html.escape(device[:SHORT_ID])}</td>'
            f"{_cell(metric)}{_cell(format_value(value, text), css='num')}{_cell(unit_text)}"
            f'<td class="num">{format_seconds(age, signed=False)}</td></tr>'
        )
    more = len(latest) - len(shown)
    footer = f"<div><i>+{more:,} more row{'' if more == 1 else 's'}</i></div>" if more > 0 else ""
    return (
        f'{_TABLE_STYLE}<table class="tesaiot-latest"><thead><tr><th>device</th><th>metric</th>'
        f"<th>value</th><th>unit</th><th>age</th></tr></thead><tbody>{''.join(rows)}</tbody>"
        f"</table>{footer}"
    )
