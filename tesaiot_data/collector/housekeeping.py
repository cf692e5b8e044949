"""The collector's housekeeping thread: what must happen over time, not per batch.

Four times a second (`PERIOD`) it evicts the window's old rows, samples the message rate,
hands the feeds' rows to their sinks (flushing those that are due), evaluates silent alerts
and delivers alert events; every `HEALTH_EVICT_EVERY` it lets `health()` forget long-gone
devices. A failure is logged (at most once a minute per kind) and the thread goes on, so
that collection never stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from tesaiot_data.collector.durability import Durability
from tesaiot_data.collector.ingest import Ingest, ThrottledWarnings
from tesaiot_data.mqtt.client import TESAIoTMQTTClient

__all__ = ["HEALTH_EVICT_EVERY", "PERIOD", "RATE_WINDOW", "Housekeeper"]

logger = logging.getLogger(__name__)

#: Seconds between evictions, flush checks, rate samples and silent-alert checks.
PERIOD = 0.25
#: Seconds over which the current rate is measured.
RATE_WINDOW = 5.0
#: Seconds between looks for devices `health()` may forget.
HEALTH_EVICT_EVERY = 10.0


class Housekeeper:
    """The 0.25 s tick of one collector, on a daemon thread between `start()` and `stop()`.

    Args:
        ingest: The collector's ingest path: its window, feeds, health and alerts.
        client: Returns the collector's client now (None while stopped); read every tick,
            for the connection state and the received count.
    """

    def __init__(self, ingest: Ingest, *, client: Callable[[], TESAIoTMQTTClient | None]) -> None:
        self._ingest = ingest
        self._client = client
        self._warn = ThrottledWarnings(logger)
        self._rate_samples: deque[tuple[float, int]] = deque()
        self._listening_since_ns: int | None = None  # when the present connection began
        self._health_evicted_at = 0.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: The collector's durable inbox, released every tick up to what the dataset holds.
        self.durability: Durability | None = None

    def start(self) -> None:
        """Start ticking on a new thread; the rate starts afresh."""
        self._listening_since_ns = None
        self._rate_samples.clear()
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name="tesaiot-collector-housekeeping", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop ticking and wait for the thread (at most `timeout` seconds)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def rate(self) -> float:
        """Messages per second received over the last `RATE_WINDOW` seconds (0 if unknown)."""
        if len(self._rate_samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._rate_samples[0], self._rate_samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def _run(self) -> None:
        ingest = self._ingest
        while not self._stopping.wait(PERIOD):
            try:
                ingest.window.evict(time.time_ns())
                self._sample_rate()
                for feed in ingest.feeds:
                    feed.drain()
                    if feed.sink.flush_due():
                        feed.flush()  # logs a failure once and keeps the rows
                if self.durability is not None:
                    self.durability.settle()
            except Exception:  # a bug; the thread goes on so that collection never stops
                self._warn("housekeeping", "housekeeping failed", exc_info=True)
            try:
                self._watch(time.time_ns())
            except Exception:
                self._warn("alerts", "evaluating silent alerts failed", exc_info=True)

    def _watch(self, now_ns: int) -> None:
        """Evaluate silent alerts, deliver alert events, forget long-gone devices."""
        ingest = self._ingest
        client = self._client()
        if client is not None and not client.connected:
            self._listening_since_ns = None  # a lost connection silences every device
        elif self._listening_since_ns is None:
            self._listening_since_ns = now_ns
        alerts = ingest.alerts
        if self._listening_since_ns is not None and alerts.watches_silence:
            alerts.evaluate_silence(
                ingest.health.last_seen(),
                now_ns=now_ns,
                listening_since_ns=self._listening_since_ns,
            )
        alerts.dispatch()
        if time.monotonic() - self._health_evicted_at >= HEALTH_EVICT_EVERY:
            self._health_evicted_at = time.monotonic()
            ingest.health.evict(now_ns)

    def _sample_rate(self) -> None:
        client = self._client()
        if client is None:
            return
        now = time.monotonic()
        self._rate_samples.append((now, client.stats.received))
        while self._rate_samples and now - self._rate_samples[0][0] > RATE_WINDOW:
            self._rate_samples.popleft()
