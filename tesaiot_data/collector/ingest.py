"""The ingest path: one batch of raw messages through parse, window, monitors, feeds, counters.

`Ingest` is what the subscriber's worker thread calls with every batch; it needs no broker,
so a test or a benchmark can call it with batches of its own (`collector.ingest(batch)`).
It runs once per batch, not per message: the per-message work is in `parse_batch` and the
window's numpy arrays. The rows are counted last, so that once `messages` shows a message,
every consumer (window, feeds, monitors) has its rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from tesaiot_data.messages import ColumnBatch, RawMessage, Reject
from tesaiot_data.monitor.alerts import AlertEngine
from tesaiot_data.monitor.health import DeviceHealth
from tesaiot_data.parse.rows import MAX_DEPTH, ParseOptions, parse_batch
from tesaiot_data.sinks.feed import Feed
from tesaiot_data.window.chunk import Chunk
from tesaiot_data.window.resample import Watermark
from tesaiot_data.window.rolling import RollingWindow

__all__ = ["MAX_REJECTS_KEPT", "Ingest", "ThrottledWarnings"]

logger = logging.getLogger(__name__)

#: Rejected messages kept for `Collector.rejects()` (the newest).
MAX_REJECTS_KEPT = 1_000


class ThrottledWarnings:
    """Log a warning of each kind at most once every `every` seconds.

    Args:
        log: The logger to warn through.
        every: Seconds between two warnings of one kind.
    """

    def __init__(self, log: logging.Logger, *, every: float = 60.0) -> None:
        self._log = log
        self._every = every
        self._warned_at: dict[str, float] = {}

    def __call__(self, kind: str, message: str, *args: object, exc_info: bool = False) -> None:
        """Log `message % args` unless a warning of `kind` was logged in the last `every` s."""
        now = time.monotonic()
        last = self._warned_at.get(kind)
        if last is None or now - last >= self._every:
            self._warned_at[kind] = now
            self._log.warning(message, *args, exc_info=exc_info)


class Ingest:
    """The worker thread's entry point: call it with each batch of raw messages.

    A batch is parsed (`parse_batch`), its rows appended to the window as one chunk, the
    chunk and the batch's rejects put on every attached `Feed`, the device health and the
    threshold alerts updated, and the counters below added to. Calls must not overlap (the
    subscriber has one worker thread); the feeds may be attached and detached from any
    thread meanwhile.

    Example:
        >>> collector.ingest([RawMessage(topic, payload, time.time_ns())])  # doctest: +SKIP

    Args:
        window: Where the rows go.
        options: How payloads are parsed.
        clock_skew_ns: Rows whose device time is further than this from their receive time
            are counted in `clock_skew_rows` (and logged, at most once a minute).
        watermark: `resample()`'s watermark, which counts late rows.
        health: Device health, fed every message (rejected ones too).
        alerts: The alert engine; threshold rules are evaluated on every chunk.

    Attributes:
        window: The rolling window.
        options: The parse options.
        watermark: The resample watermark.
        health: The device health.
        alerts: The alert engine (replaceable before the first batch).
        rejects: The newest rejected messages (at most `MAX_REJECTS_KEPT`).
        rejects_by_reason: Rejected messages by reason (`RejectReason.value`).
        messages: Messages that became one or more rows.
        rejected: Messages rejected by the parser.
        timestamp_fallbacks: Rows whose timestamp was missing or unreadable.
        truncated_messages: Messages that lost rows to the row or nesting limit.
        rows_cut: Rows those messages lost.
        clock_skew_rows: Rows with a device time further than `clock_skew_ns` away.
        retained: Messages that carried the MQTT retain flag.
    """

    def __init__(
        self,
        *,
        window: RollingWindow,
        options: ParseOptions,
        clock_skew_ns: int,
        watermark: Watermark,
        health: DeviceHealth,
        alerts: AlertEngine,
    ) -> None:
        self.window = window
        self.options = options
        self.watermark = watermark
        self.health = health
        self.alerts = alerts
        self.rejects: deque[Reject] = deque(maxlen=MAX_REJECTS_KEPT)
        self.rejects_by_reason: Counter[str] = Counter()
        self.messages = 0
        self.rejected = 0
        self.timestamp_fallbacks = 0
        self.truncated_messages = 0
        self.rows_cut = 0
        self.clock_skew_rows = 0
        self.retained = 0
        self._warn = ThrottledWarnings(logger)
        self._clock_skew_ns = clock_skew_ns
        self._last_payloads: dict[str, int] = {}  # per topic, for retained redeliveries
        self._feeds: tuple[Feed, ...] = ()  # replaced whole, so a batch reads one tuple
        self._lock = threading.Lock()  # feeds attach and detach from any thread

    @property
    def feeds(self) -> tuple[Feed, ...]:
        """The feeds every batch is put on now (recordings and the auto-persist dataset)."""
        return self._feeds

    def attach(self, feed: Feed) -> None:
        """Put every later batch on `feed` too."""
        with self._lock:
            self._feeds = (*self._feeds, feed)

    def detach(self, feed: Feed) -> None:
        """Stop putting batches on `feed` (a batch being ingested may still reach it)."""
        with self._lock:
            self._feeds = tuple(f for f in self._feeds if f is not feed)

    def detach_all(self) -> tuple[Feed, ...]:
        """Detach every feed and return them, in the order they were attached."""
        with self._lock:
            feeds, self._feeds = self._feeds, ()
        return feeds

    def counters(self) -> dict[str, Any]:
        """The counts of the path, its window and its monitors, as `CollectorStats` fields."""
        window, alerts, health = self.window, self.alerts, self.health
        return {
            "messages": self.messages,
            "rejected": self.rejected,
            "rows": window.rows,
            "rows_total": window.appended,
            "rows_evicted": window.evicted,
            "rejects_by_reason": MappingProxyType(dict(self.rejects_by_reason)),
            "timestamp_fallbacks": self.timestamp_fallbacks,
            "truncated_messages": self.truncated_messages,
            "rows_cut": self.rows_cut,
            "clock_skew_rows": self.clock_skew_rows,
            "late_rows": self.watermark.late_rows,
            "retained": self.retained,
            "alert_events": alerts.events_total,
            "alert_events_dropped": alerts.events_dropped,
            "alert_callback_errors": alerts.callback_errors,
            "alert_rule_errors": alerts.rule_errors,
            "devices": health.devices,
            "devices_evicted": health.evicted,
        }

    def __call__(self, batch: Sequence[RawMessage]) -> None:
        """Ingest one batch of raw messages, in arrival order.

        Args:
            batch: The messages, as the subscriber took them from the network.
        """
        parsed = parse_batch(batch, options=self.options, last_payloads=self._last_payloads)
        chunk = self.window.append(parsed, now_ns=time.time_ns())
        for feed in self._feeds:
            feed.put(chunk, parsed.rejects)
        if parsed.rejects:
            self.rejects.extend(parsed.rejects)
            self.rejects_by_reason.update(r.reason.value for r in parsed.rejects)
            self.rejected += len(parsed.rejects)
        self.timestamp_fallbacks += parsed.timestamp_fallbacks
        self.retained += parsed.retained_messages
        if parsed.truncated_messages:
            self.truncated_messages += parsed.truncated_messages
            self.rows_cut += parsed.rows_cut
            self._warn(
                "cut",
                "%d messages so far were cut to max_rows_per_message=%d rows or %d levels of "
                "nesting (%d rows cut; see stats.rows_cut)",
                self.truncated_messages,
                self.options.max_rows_per_message,
                MAX_DEPTH,
                self.rows_cut,
            )
        if chunk is not None:
            self.watermark.count(chunk.timestamp)
            skewed = count_skewed(chunk, self._clock_skew_ns)
            if skewed:
                self.clock_skew_rows += skewed
                self._warn(
                    "skew",
                    "%d rows so far have a device time more than %s from the receive time "
                    "(a wrong device clock, or local time without a zone: see naive_timezone)",
                    self.clock_skew_rows,
                    pd.Timedelta(self._clock_skew_ns, unit="ns"),
                )
        self._observe(batch, parsed, chunk)
        # Counted last: once the counts show a message, every consumer has its rows.
        self.messages += parsed.parsed_messages

    def _observe(
        self, batch: Sequence[RawMessage], parsed: ColumnBatch, chunk: Chunk | None
    ) -> None:
        """Feed `health()` and the threshold alerts; a failure here never stops ingest."""
        try:
            retained = (
                [m.received_ns for m in batch if m.retain] if parsed.retained_messages else ()
            )
            self.health.observe(chunk, parsed.rejects, retained_ns=retained)
            self.alerts.evaluate(chunk)
        except Exception:  # a bug; the rows are stored all the same
            self._warn("health", "device health or alert evaluation failed", exc_info=True)


def count_skewed(chunk: Chunk, skew_ns: int) -> int:
    """Count a chunk's rows whose device time is more than `skew_ns` from their receive time.

    Args:
        chunk: Rows from `RollingWindow.append()`.
        skew_ns: The allowed distance, in nanoseconds.

    Returns:
        How many rows are further away, either way.
    """
    # Compared without a subtraction, which could overflow int64 for a year-2262 reading.
    stamp, received = chunk.timestamp, chunk.received
    return int(np.count_nonzero((stamp > received + skew_ns) | (stamp < received - skew_ns)))
