"""CollectorStats, the collector's counters read at one moment, and their text.

`str(collector.stats)` is `stats_summary()`; the command line and the dashboard show
`status_line()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

__all__ = ["CollectorStats", "plural", "stats_summary", "status_line"]


@dataclass(frozen=True, slots=True)
class CollectorStats:
    """The collector's counters, read at one moment.

    `received == messages + rejected + dropped + failed + pending` at every moment, also
    after `stop()` and after a recording failed. Rows are counted apart from messages: a
    message gives one or more rows, and `rows_cut` rows beyond `max_rows_per_message`.

    Args:
        received: Messages taken from the network.
        messages: Messages that became one or more rows.
        rejected: Messages rejected by the parser (see `rejects_by_reason`, `rejects()`),
            including retained messages the broker sent again on a reconnect
            (`retained_duplicate`).
        dropped: Messages dropped because the internal queue was full.
        failed: Messages lost to an unexpected error while storing them (logged; should be 0).
        pending: Messages received but not yet parsed.
        rows: Rows held in the window now.
        rows_total: Rows produced since the start.
        rows_evicted: Rows dropped by the window's age or size limit.
        rejects_by_reason: Rejected messages by reason.
        timestamp_fallbacks: Rows whose timestamp was missing or unreadable (receive time used).
        truncated_messages: Messages that gave rows but lost some to the per-message row
            limit or to nesting deeper than `parse.rows.MAX_DEPTH`.
        rows_cut: Rows not kept because their message exceeded `max_rows_per_message`.
        clock_skew_rows: Rows whose device timestamp is further than `clock_skew` from the
            receive time (a device clock that is wrong, or local time without a zone).
        late_rows: Rows that entered the window with a device time before the watermark
            of `resample()`: their bucket had already been handed out as complete (see
            `resample()`). 0 until the first `resample()`.
        retained: Messages taken that carried the MQTT retain flag (a broker's stored last
            value, sent on subscribing); their redeliveries are rejected, not kept twice.
        failed_sinks: Recordings or auto-persist writes that failed (see the log and
            `Recording.error`); their rows stay pending in memory and are retried.
        alert_events: Alert events (firing or cleared) made since the start; poll it to
            see cheaply whether `alerts()` has something new.
        alert_events_dropped: Alert events no longer kept by `alerts()` (it keeps the last
            `alerts.MAX_EVENTS`).
        alert_callback_errors: Alert callbacks that raised (each rule's first is logged).
        alert_rule_errors: Evaluations of an alert rule that raised (each rule's first is
            logged); the rule is skipped for that batch or tick, the others go on.
        devices: Devices followed by `health()` now.
        devices_evicted: Devices `health()` forgot: not seen for a day, or the least
            recently seen beyond `health.MAX_DEVICES`.
        rate: Messages per second over the last few seconds.
        mean_rate: Messages per second since the start.
        connected: Whether the client is connected now.
        reconnects: Reconnections after a lost connection.
        last_message_at: When the last message arrived (UTC), or None.
        error: The error that stopped the stream, if any (for example a revoked token).
        sink_rows_dropped: Rows a recording or the auto-persist dataset dropped from memory
            unwritten: its store kept failing and more than its `max_pending_rows` waited
            (the oldest go first; see `Sink.rows_dropped` and the log).
    """

    received: int
    messages: int
    rejected: int
    dropped: int
    failed: int
    pending: int
    rows: int
    rows_total: int
    rows_evicted: int
    rejects_by_reason: Mapping[str, int]
    timestamp_fallbacks: int
    truncated_messages: int
    rows_cut: int
    clock_skew_rows: int
    late_rows: int
    retained: int
    failed_sinks: int
    alert_events: int
    alert_events_dropped: int
    alert_callback_errors: int
    alert_rule_errors: int
    devices: int
    devices_evicted: int
    rate: float
    mean_rate: float
    connected: bool
    reconnects: int
    last_message_at: datetime | None
    error: str | None
    sink_rows_dropped: int = 0

    def __str__(self) -> str:
        """A few readable lines (`print(collector.stats)`); `repr()` shows every field."""
        return stats_summary(self)


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


def status_line(
    stats: CollectorStats,
    *,
    running: bool,
    rows_recorded: int | None = None,
    rows_dropped: int | None = None,
) -> str:
    """Return the one-line status: connection, rate, rows, rejects and reconnects.

    Rows a store dropped unwritten are shown when there are any.

    A stopped collector (or a stream ended by an error) has no current rate, so none is shown.

    Example:
        >>> status_line(collector.stats, running=collector.running)  # doctest: +SKIP
        'connected | 50 msg/s | 1,200 rows in window | 3 rejects | 1 reconnect'

    Args:
        stats: The collector's counters.
        running: Whether the collector runs.
        rows_recorded: The rows a recording holds so far, shown after the window's rows;
            None shows none.
        rows_dropped: Rows a store dropped unwritten (`Sink.rows_dropped`); None:
            `stats.sink_rows_dropped`. Shown when not 0.

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
    dropped = stats.sink_rows_dropped if rows_dropped is None else rows_dropped
    if dropped:
        parts.append(f"{plural(dropped, 'row')} dropped unwritten")
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
    if stats.sink_rows_dropped:
        lines.append(
            f"{plural(stats.sink_rows_dropped, 'row')} dropped unwritten: a store kept failing "
            "(see the log)"
        )
    if stats.last_message_at is not None:
        lines.append(f"last message at {stats.last_message_at.isoformat(timespec='seconds')}")
    if stats.error:
        lines.append(f"stopped by: {stats.error}")
    return "\n".join(lines)
