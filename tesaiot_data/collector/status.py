"""The collector's state as text: the one-line status, and a summary of its counters.

The command line and the dashboard show `status_line()`; `str(collector.stats)` is
`stats_summary()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tesaiot_data.collector.collector import CollectorStats

__all__ = ["plural", "stats_summary", "status_line"]


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """Return a count with its noun in the right number: `1 reject`, `0 rejects`, `2,000 rows`.

    Args:
        count: How many.
        noun: The singular.
        nouns: The plural when it is not `noun + "s"` (`"entries"`).

    Returns:
        The count with thousands separators, a space, and the noun.
    """
    return f"{count:,} {noun if count == 1 else (nouns or noun + 's')}"


def status_line(stats: CollectorStats, *, running: bool, rows_recorded: int | None = None) -> str:
    """Return the one-line status: connection, rate, rows, rejects and reconnects.

    A stopped collector (or a stream ended by an error) has no current rate, so none is shown.

    Example:
        >>> status_line(collector.stats, running=collector.running)  # doctest: +SKIP
        'connected | 50 msg/s | 1,200 rows in window | 3 rejects | 1 reconnect'

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
    parts.append(f"{plural(stats.rows, 'row')} in window")
    if rows_recorded is not None:
        parts.append(f"{rows_recorded:,} recorded")
    parts += [plural(stats.rejected, "reject"), plural(stats.reconnects, "reconnect")]
    return " | ".join(parts)


def stats_summary(stats: CollectorStats) -> str:
    """Return the counters as a few readable lines (what `str(collector.stats)` prints).

    Counters of trouble (failures, fallbacks, cut rows, late rows, ...) appear only
    when they are not zero; `repr(stats)` still shows every field.

    Example:
        >>> print(collector.stats)  # doctest: +SKIP
        received 1,204 messages: 1,192 parsed, 12 rejected (not_json: 12), 0 dropped
        rows: 3,576 in window, 3,576 since the start
        rate: 19.8 msg/s now, 20.1 msg/s on average; connected, 0 reconnects

    Args:
        stats: The collector's counters.

    Returns:
        The text, lines separated by newlines, without a final newline.
    """
    reasons = ", ".join(f"{reason}: {n:,}" for reason, n in sorted(stats.rejects_by_reason.items()))
    first = (
        f"received {plural(stats.received, 'message')}: {stats.messages:,} parsed, "
        f"{stats.rejected:,} rejected{f' ({reasons})' if reasons else ''}, "
        f"{stats.dropped:,} dropped"
    )
    if stats.failed:
        first += f", {stats.failed:,} failed"
    if stats.pending:
        first += f", {stats.pending:,} pending"
    rows = f"rows: {stats.rows:,} in window, {stats.rows_total:,} since the start"
    if stats.rows_evicted:
        rows += f", {stats.rows_evicted:,} evicted"
    trouble = [
        (stats.timestamp_fallbacks, "without a readable timestamp"),
        (stats.clock_skew_rows, "with a far-off device clock"),
        (stats.rows_cut, "cut (max_rows_per_message)"),
        (stats.late_rows, "late (after their bucket was resampled)"),
    ]
    rows += "".join(f"; {n:,} {what}" for n, what in trouble if n)
    if stats.truncated_messages:
        rows += f"; {plural(stats.truncated_messages, 'message')} truncated"
    # A collector that is not connected (stopped, or reconnecting) has no current rate.
    now = f"{stats.rate:.1f} msg/s now, " if stats.connected else ""
    state = "connected" if stats.connected else "not connected"
    rate = (
        f"rate: {now}{stats.mean_rate:.1f} msg/s on average; "
        f"{state}, {plural(stats.reconnects, 'reconnect')}"
    )
    if stats.retained:
        rate += f", {plural(stats.retained, 'retained message')}"
    lines = [first, rows, rate]
    if stats.failed_sinks:
        lines.append(f"{plural(stats.failed_sinks, 'recording')} failed to write (see the log)")
    if stats.last_message_at is not None:
        lines.append(f"last message at {stats.last_message_at.isoformat(timespec='seconds')}")
    if stats.error:
        lines.append(f"stopped by: {stats.error}")
    return "\n".join(lines)
