"""The one-line status of a collector, as the command line and the dashboard show it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tesaiot_data.collector import CollectorStats

__all__ = ["status_line"]


def status_line(stats: CollectorStats, *, running: bool, rows_recorded: int | None = None) -> str:
    """Return the one-line status: connection, rate, rows, rejects and reconnects.

    A stopped collector (or a stream ended by an error) has no current rate, so none is shown.

    Example:
        >>> status_line(collector.stats, running=collector.running)  # doctest: +SKIP
        'connected | 50 msg/s | 1,200 rows in window | 3 rejects | 0 reconnects'

    Args:
        stats: The collector's counters.
        running: Whether the collector runs.
        rows_recorded: The rows a recording holds so far, shown after the window's rows;
            None shows none.

    Returns:
        The text, parts separated by " | ".
    """
    parts: list[str] = []
    if stats.error:
        parts.append(f"stopped: {stats.error}")
    elif not running:
        parts.append("stopped")
    else:
        parts.append("connected" if stats.connected else "reconnecting")
        parts.append(f"{stats.rate:.0f} msg/s")
    parts.append(f"{stats.rows:,} rows in window")
    if rows_recorded is not None:
        parts.append(f"{rows_recorded:,} recorded")
    parts += [f"{stats.rejected:,} rejects", f"{stats.reconnects} reconnects"]
    return " | ".join(parts)
