"""The collector: live telemetry into a rolling DataFrame, Parquet snapshots and recordings."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tesaiot_data.collector.status import stats_summary
from tesaiot_data.errors import ConfigError, RecordingError
from tesaiot_data.files.parquet import write_batches
from tesaiot_data.messages import ColumnBatch, RawMessage, Reject
from tesaiot_data.monitor.alerts import (
    AlertCapture,
    AlertEngine,
    AlertEvent,
    AlertRule,
    alerts_sidecar,
)
from tesaiot_data.monitor.alerts import write_alerts as _write_alerts
from tesaiot_data.monitor.health import DeviceHealth
from tesaiot_data.mqtt.client import ClientStats, TESAIoTMQTTClient
from tesaiot_data.parse.rows import MAX_DEPTH, MAX_ROWS_PER_MESSAGE, ParseOptions, parse_batch
from tesaiot_data.parse.timestamps import TimeLike, duration_seconds, since_ns
from tesaiot_data.readers.history import history_frame
from tesaiot_data.settings import Settings
from tesaiot_data.sinks.base import DatasetWriter, Recorder, Sink
from tesaiot_data.window.resample import Watermark, resample_frame, rule_ns
from tesaiot_data.window.rolling import Chunk, RollingWindow

if TYPE_CHECKING:
    from tesaiot_data.dashboard import Dashboard

__all__ = ["Collector", "CollectorStats", "Recording"]

logger = logging.getLogger(__name__)

_HOUSEKEEPING_PERIOD = 0.25  # seconds between evictions, flush checks and rate samples
_RATE_WINDOW = 5.0  # seconds over which the current rate is measured
_MAX_REJECTS_KEPT = 1_000
_HEALTH_EVICT_EVERY = 10.0  # seconds between looks for devices health() may forget
_WARN_EVERY = 60.0  # seconds between repeated warnings of one kind (cut rows, clock skew)


def _utc_iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat()


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
            limit or to nesting deeper than `parsing.MAX_DEPTH`.
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
        devices: Devices followed by `health()` now.
        devices_evicted: Devices `health()` forgot: not seen for a day, or the least
            recently seen beyond `health.MAX_DEVICES`.
        rate: Messages per second over the last few seconds.
        mean_rate: Messages per second since the start.
        connected: Whether the client is connected now.
        reconnects: Reconnections after a lost connection.
        last_message_at: When the last message arrived (UTC), or None.
        error: The error that stopped the stream, if any (for example a revoked token).
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
    devices: int
    devices_evicted: int
    rate: float
    mean_rate: float
    connected: bool
    reconnects: int
    last_message_at: datetime | None
    error: str | None

    def __str__(self) -> str:
        """A few readable lines (`print(collector.stats)`); `repr()` shows every field."""
        return stats_summary(self)


class _Feed:
    """Rows on their way from the ingest thread to one sink (a recording, the dataset).

    The ingest thread only appends the window's chunks here; the housekeeping thread turns
    what gathered into Arrow record batches and hands them on. Converting every batch on
    the ingest thread cost 60 % of the ingest rate (benchmarks/README.md). A write that
    fails (disk full, folder removed) is logged once, not once per flush; the sink keeps
    the rows and the next flush tries again.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.pending_rows = 0
        self.error: BaseException | None = None
        self._chunks: list[Chunk] = []
        self._rejects: list[Reject] = []
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()  # one drain at a time keeps batches in order

    @property
    def where(self) -> Path:
        return self.sink.path

    def put(self, chunk: Chunk | None, rejects: Sequence[Reject]) -> None:
        with self._lock:
            if chunk is not None:
                self._chunks.append(chunk)
                self.pending_rows += len(chunk)
            if rejects:
                self._rejects.extend(rejects)

    def drain(self) -> None:
        with self._drain_lock:
            with self._lock:
                chunks, self._chunks = self._chunks, []
                rejects, self._rejects = self._rejects, []
            if not (chunks or rejects):
                return
            batches = RollingWindow.batches_of(chunks)
            for batch in batches[:-1]:
                self.sink.add(batch)
            self.sink.add(batches[-1] if batches else None, rejects)
            with self._lock:
                self.pending_rows -= sum(len(chunk) for chunk in chunks)

    def flush(self) -> None:
        """Drain and write now; a failure is logged once and kept in `error`, never raised."""
        try:
            self.drain()
            self.sink.flush()
        except Exception as exc:  # OSError mostly; nothing here may stop the collector
            if self.error is None:
                logger.error(
                    "cannot write %s: %s; its rows are kept in memory and written when a "
                    "later flush succeeds (hint: free disk space or check the folder)",
                    self.where,
                    exc,
                )
            self.error = exc
        else:
            if self.error is not None:
                logger.warning("writing %s again after: %s", self.where, self.error)
            self.error = None


class Recording:
    """A session capture started by `Collector.record()`; stop it to get the Parquet file."""

    def __init__(self, collector: Collector, feed: _Feed, recorder: Recorder) -> None:
        self._collector = collector
        self._feed = feed
        self._recorder = recorder
        self._started = time.monotonic()
        self._elapsed: float | None = None

    @property
    def path(self) -> Path:
        """Where the recording's file is (complete once stopped)."""
        return self._recorder.path

    @property
    def rows(self) -> int:
        """Rows recorded so far."""
        return self._recorder.rows + self._feed.pending_rows

    @property
    def rejects(self) -> int:
        """Rejected messages recorded so far (kept in the sidecar file)."""
        return self._recorder.rejects

    @property
    def elapsed(self) -> float:
        """Seconds since the recording started (until it stopped)."""
        return self._elapsed if self._elapsed is not None else time.monotonic() - self._started

    @property
    def active(self) -> bool:
        """Whether the recording is still taking rows."""
        return self._elapsed is None

    @property
    def rows_on_disk(self) -> int:
        """Rows that reached disk safely so far (flushed parts, or the final file)."""
        return self._recorder.rows_on_disk

    @property
    def error(self) -> BaseException | None:
        """Why the last write failed (for example a full disk), or None while all is well."""
        return self._feed.error or self._recorder.error

    def stop(self) -> Path:
        """Stop recording and write the single Parquet file. Idempotent.

        Returns:
            The path of the recording.

        When the collector has alert rules, the alert events of the recording's time go to
        `<stem>.alerts.parquet` beside it (also when there were none; read it with
        `tesaiot_data.monitor.alerts.load_alerts`).

        Raises:
            RecordingError: The file could not be written (disk full, folder removed); the
                error says what reached disk, which `load_recording(path)` still reads.
        """
        if self._elapsed is None:
            self._elapsed = time.monotonic() - self._started
            self._collector._detach(self._feed)
        try:
            path = self._recorder.stop()
        finally:
            alerts_error = self._collector._finish_alerts(self._feed)
        if alerts_error is not None:
            raise alerts_error
        return path

    def __enter__(self) -> Recording:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "recording" if self.active else "stopped"
        return f"<Recording {self.path} {state}, {self.rows} rows, {self.elapsed:.1f} s>"


class Collector:
    """Collects live telemetry on background threads into a rolling DataFrame.

    Example:
        >>> with Collector(window="15min") as collector:  # doctest: +SKIP
        ...     df = collector.frame(metrics=["temperature"])

    Args:
        settings: Connection settings; None reads them with `Settings.from_env()`.
        window: Keep rows received within this duration (`"15min"`); None keeps any age.
        max_rows: Keep at most this many rows; the oldest go first.
        snapshot_dir: If set, every `snapshot_every` the rows that arrived since the last
            time are written as a new part of a hive-style Parquet dataset there.
        snapshot_every: How often to write those parts.
        queue_size: Messages that may wait for parsing before new ones are dropped (counted).
        max_rows_per_message: Most rows one message may give; the rest are cut, counted in
            `stats.rows_cut` and logged. Batched devices send a few thousand readings.
        numeric_strings: Read strings that are exactly JSON numbers (`"25.5"`) as numbers;
            False keeps them as text.
        naive_timezone: Zone of device timestamps that carry none (`"Asia/Bangkok"`,
            `"+07:00"`); None reads them as UTC.
        clock_skew: Rows whose device time is further than this from the receive time are
            counted in `stats.clock_skew_rows` (and logged, at most once a minute).
        **overrides: Settings fields to change, for example `topic=...`.

    Raises:
        ConfigError: An option has a value that cannot work (see its message).
        ValueError: `window`, `snapshot_every` or `clock_skew` is not a positive duration.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        window: str | pd.Timedelta | None = "15min",
        max_rows: int = 1_000_000,
        snapshot_dir: str | Path | None = None,
        snapshot_every: str | float | pd.Timedelta = "60s",
        queue_size: int = 200_000,
        max_rows_per_message: int = MAX_ROWS_PER_MESSAGE,
        numeric_strings: bool = True,
        naive_timezone: str | tzinfo | None = None,
        clock_skew: str | float | pd.Timedelta = "5min",
        **overrides: Any,
    ) -> None:
        if settings is None:
            settings = Settings.from_env(**overrides)
        elif overrides:
            settings = settings.replace(**overrides)
        self.settings = settings
        window_ns = None if window is None else int(duration_seconds(window, name="window") * 1e9)
        self._window = RollingWindow(window_ns=window_ns, max_rows=max_rows)
        self._snapshot_every = duration_seconds(snapshot_every, name="snapshot_every")
        self._queue_size = queue_size
        self._snapshot_dir = Path(snapshot_dir) if snapshot_dir is not None else None
        self._parse_options = ParseOptions(
            max_rows_per_message=max_rows_per_message,
            numeric_strings=numeric_strings,
            naive_timezone=naive_timezone,
        )
        self._clock_skew_ns = int(duration_seconds(clock_skew, name="clock_skew") * 1e9)
        self._last_payloads: dict[str, int] = {}  # per topic, for retained redeliveries

        self._client: TESAIoTMQTTClient | None = None
        self._feeds: tuple[_Feed, ...] = ()  # every recording, and the auto-persist dataset
        self._dataset_feed: _Feed | None = None  # that dataset's, while started
        self._rejects: deque[Reject] = deque(maxlen=_MAX_REJECTS_KEPT)
        self._rejects_by_reason: Counter[str] = Counter()
        self._messages = 0
        self._rejected = 0
        self._fallbacks = 0
        self._truncated = 0
        self._rows_cut = 0
        self._clock_skew_rows = 0
        self._retained = 0
        self._watermark = Watermark()  # of resample(): finds late rows
        self._health = DeviceHealth()
        self._alerts = AlertEngine()
        self._alert_captures: dict[_Feed, AlertCapture] = {}  # a recording's alert events
        self._health_evicted_at = 0.0
        self._listening_since_ns: int | None = None  # when the present connection began
        self._warned_at: dict[str, float] = {}
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._last_client_stats: ClientStats | None = None  # kept by stop()
        self._last_error: BaseException | None = None  # kept by stop()
        self._failed_sinks = 0
        self._rate_samples: deque[tuple[float, int]] = deque()
        self._stopping = threading.Event()
        self._housekeeper: threading.Thread | None = None
        self._lock = threading.Lock()  # recordings attach and detach from any thread

    # ------------------------------------------------------------- lifecycle

    def start(self) -> Collector:
        """Connect and start collecting on background threads.

        Returns:
            The collector, once connected and subscribed.

        Raises:
            AuthError: The broker refused the token.
            TLSError: The broker's certificate could not be verified.
            ConnectError: The broker could not be reached.
            ConnectTimeoutError: Nothing answered in time.
        """
        if self._client is not None:
            return self
        client = TESAIoTMQTTClient(
            self.settings, on_batch=self._ingest, queue_size=self._queue_size
        )
        self._stopping.clear()
        dataset: _Feed | None = None
        if self._snapshot_dir is not None:
            # Attached before connecting: rows may come before connect() returns (right
            # after the SUBACK, or a persistent session's queue right after the CONNACK).
            dataset = _Feed(
                DatasetWriter(
                    self._snapshot_dir, flush_every=self._snapshot_every, metadata=self._metadata()
                )
            )
            with self._lock:  # recordings made before start() keep their place
                self._feeds = (*self._feeds, dataset)
                self._dataset_feed = dataset
        try:
            client.connect()
        except BaseException:
            if dataset is not None:
                with self._lock:
                    self._feeds = tuple(f for f in self._feeds if f is not dataset)
                    self._dataset_feed = None
            raise
        self._client = client
        self._started_at = time.time()
        self._stopped_at = None
        self._listening_since_ns = None
        self._rate_samples.clear()
        self._housekeeper = threading.Thread(
            target=self._housekeep, name="tesaiot-collector-housekeeping", daemon=True
        )
        self._housekeeper.start()
        return self

    def stop(self) -> None:
        """Disconnect, parse what was received, and close recordings and snapshots. Idempotent.

        Every recording and the auto-persist dataset is finished even when one of them
        fails, and the counters stay true.

        Raises:
            RecordingError: A recording or the dataset could not be written; the first
                failure is raised once all others are finished, each one is logged with
                its path and the rows that reached disk.
        """
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()  # returns after the worker handled every received message
        self._stopping.set()
        if self._housekeeper is not None:
            self._housekeeper.join(timeout=10)
            self._housekeeper = None
        self._last_client_stats = client.stats
        self._last_error = client.error
        self._stopped_at = time.time()
        self._alerts.dispatch()  # events of the last batches: logged, callbacks called
        with self._lock:
            feeds, self._feeds = self._feeds, ()
            self._dataset_feed = None
        failures = [error for feed in feeds if (error := self._finish(feed)) is not None]
        failures += [error for feed in feeds if (error := self._finish_alerts(feed)) is not None]
        self._failed_sinks += len(failures)
        logger.info("collector stopped: %s rows held", self._window.rows)
        if failures:
            raise failures[0]

    def _finish(self, feed: _Feed) -> RecordingError | None:
        """Hand a sink its last rows and close it; the failure, if any, is returned."""
        sink = feed.sink
        try:
            feed.drain()
            sink.close()
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, RecordingError)
                else RecordingError(
                    f"could not finish {feed.where}: {exc}",
                    hint="free disk space or check the folder; load_recording() reads what "
                    "reached disk",
                    path=str(feed.where),
                    rows_on_disk=sink.rows_on_disk,
                    rows_lost=sink.rows - sink.rows_on_disk,
                )
            )
            if error is not exc:
                error.__cause__ = exc
            logger.error("%s (%d rows reached disk)", error, error.rows_on_disk)
            return error
        return None

    def _finish_alerts(self, feed: _Feed) -> RecordingError | None:
        """Write a recording's alert events to `<stem>.alerts.parquet`; return a failure."""
        capture = self._alert_captures.pop(feed, None)
        if capture is None:
            return None
        events = self._alerts.release(capture)
        if not events and not self._alerts.rules:
            return None  # no alerting: no file
        path = alerts_sidecar(feed.where)
        if capture.dropped:
            logger.warning(
                "%s keeps the first %d alert events of the recording; %d more were dropped",
                path,
                len(events),
                capture.dropped,
            )
        try:
            _write_alerts(events, path, metadata=self._metadata())
        except OSError as exc:
            error = RecordingError(
                f"could not write the alert events of {feed.where} to {path}: {exc}",
                hint="free disk space or check the folder; the recording itself is not affected",
                path=str(path),
            )
            error.__cause__ = exc
            logger.error("%s", error)
            return error
        logger.info("wrote %d alert events to %s", len(events), path)
        return None

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._client is not None else "stopped"
        return f"<Collector {self.settings.url} {state}, {self._window.rows} rows>"

    @property
    def running(self) -> bool:
        """Whether the collector is started, not stopped, and its stream not ended by an error.

        After an error that no retry can fix (a revoked token; see `stats.error`), this is
        False; call `stop()` to finish recordings and keep the counters.
        """
        client = self._client
        return client is not None and client.error is None

    @property
    def client(self) -> TESAIoTMQTTClient | None:
        """The streaming client while running."""
        return self._client

    # ----------------------------------------------------------------- reads

    def frame(
        self,
        *,
        since: TimeLike | None = None,
        devices: Iterable[str] | str | None = None,
        metrics: Iterable[str] | str | None = None,
    ) -> pd.DataFrame:
        """Return the rows in the window as a new DataFrame the caller owns.

        Args:
            since: Only rows received since this time: a duration back from now (`"5min"`)
                or a point in time (naive means UTC).
            devices: Only these device ids.
            metrics: Only these metrics.

        Returns:
            Rows in arrival order with the columns timestamp, received_at, device_id,
            sensor_type, metric, value, unit, value_text.
        """
        if isinstance(devices, str):
            devices = [devices]
        if isinstance(metrics, str):
            metrics = [metrics]
        return self._window.frame(since_ns=since_ns(since), devices=devices, metrics=metrics)

    def history(
        self,
        since: TimeLike | None = "7d",
        until: TimeLike | None = None,
        *,
        devices: Iterable[str] | str | None = None,
        metrics: Iterable[str] | str | None = None,
        dataset: str | Path | None = None,
    ) -> pd.DataFrame:
        """Return the rows on disk and in the window as one DataFrame, each row once.

        Rows received before the window's oldest row (its watermark) come from a dataset:
        this collector's `snapshot_dir` (its pending rows are written first), or `dataset`,
        for example the folder a `tesaiot-data record --dataset` service writes; the rest
        come from the window. With another process's dataset, a row near the watermark
        that both hold is kept once (the window's copy); see `tesaiot_data.readers.history`.

        Args:
            since: Rows received at or after this time: a duration back from now (`"7d"`),
                a time (naive means UTC), or None for every row on disk.
            until: Rows received before this time (same forms); None: up to now.
            devices: Only these device ids (pushed down to the files).
            metrics: Only these metrics (pushed down to the files).
            dataset: The dataset folder (or recording) to read; default `snapshot_dir`.

        Returns:
            Rows in `received_at` order, with the columns and dtypes of `frame()`.

        Raises:
            ConfigError: The collector has no `snapshot_dir` and no `dataset` was given, or
                `since` or `until` is not a time or duration.
            FileNotFoundError: Nothing is at `dataset`.
            RecordingError: The pending rows could not be written to `snapshot_dir`.
        """
        return history_frame(
            self._window,
            since=since,
            until=until,
            devices=devices,
            metrics=metrics,
            dataset=dataset,
            own_dataset=self._snapshot_dir,
            own_feed=self._dataset_feed,
        )

    def latest(self) -> pd.DataFrame:
        """Return the newest row of each (device_id, metric), with its age in seconds.

        Its unit is the newest one that (device_id, metric) sent within the window: a
        reading sent without one (a flat payload between standard ones) keeps the unit
        shown, instead of blanking it until the next reading that carries one.

        Returns:
            One row per (device_id, metric), sorted by both, in the columns of `frame()`
            and `age_s` (float64 seconds since `received_at`).
        """
        frame = self.frame()
        keys = ["device_id", "metric"]
        latest = frame.drop_duplicates(subset=keys, keep="last")
        if latest["unit"].isna().any():
            units = frame.loc[frame["unit"].notna(), [*keys, "unit"]]
            units = units.drop_duplicates(subset=keys, keep="last")
            merged = latest.drop(columns="unit").merge(units, on=keys, how="left")
            latest = merged[list(frame.columns)].astype({"unit": frame["unit"].dtype})
        latest = latest.sort_values(
            ["device_id", "metric"], key=lambda column: column.astype(str)
        ).reset_index(drop=True)
        now = pd.Timestamp.now(tz="UTC")
        return latest.assign(age_s=(now - latest["received_at"]).dt.total_seconds())

    def resample(
        self,
        rule: str | pd.Timedelta,
        *,
        how: str | Sequence[str] = "mean",
        metrics: Iterable[str] | str | None = None,
        devices: Iterable[str] | str | None = None,
        since: TimeLike | None = None,
    ) -> pd.DataFrame:
        """Return the window's numeric values aggregated per time bucket, device and metric.

        Buckets are by device time (`timestamp`), `[start, start + rule)`, anchored at the
        Unix epoch so that they stay put from one call to the next; only buckets holding a
        row are returned (`.asfreq(rule)` adds the empty ones). Text values are left out.
        The result equals a pandas groupby of `frame()` by device_id, metric and
        `pd.Grouper(key="timestamp", freq=rule, origin="epoch")`, unstacked.

        Late rows: each call that returns rows moves a watermark to the earlier of the end
        of its newest bucket and the call's clock floored to the rule (the buckets before
        it had ended when they were handed out). A row that enters the window later with a
        device time before the watermark is counted in `stats.late_rows`: a bucket handed
        out as complete has changed. One watermark serves every rule and filter, and never
        moves back; see `tesaiot_data.window.resample.Watermark`.

        Example:
            >>> collector.resample("10s", metrics="temperature")  # doctest: +SKIP
            >>> collector.resample("1min", how=["mean", "max"], since="15min")  # doctest: +SKIP

        Args:
            rule: Bucket length, a fixed-length pandas offset alias (`"10s"`, `"1min"`).
            how: An aggregation (`mean`, `min`, `max`, `sum`, `count`, `first`, `last`,
                `median`, `std`), or a list of them.
            metrics: Only these metrics.
            devices: Only these device ids.
            since: Only rows received since this time, as in `frame()`.

        Returns:
            A wide frame: index the buckets' starts (`datetime64[ns, UTC]`, named
            `timestamp`, ascending); columns a MultiIndex (device_id, metric) of strings,
            sorted, with a third level `how` when `how` is a list. float64 values, NaN
            where a series has no row in a bucket (`count`: int64, 0).

        Raises:
            ConfigError: `rule` is not a fixed-length offset alias, `how` names an
                aggregation not listed, or the result would be too large (see
                `resample.MAX_CELLS`).
        """
        step = rule_ns(rule)
        now_ns = time.time_ns()
        result = resample_frame(
            self.frame(since=since, devices=devices, metrics=metrics), rule, how=how
        )
        self._watermark.advance(result, step, now_ns=now_ns)
        return result

    def rejects(self) -> pd.DataFrame:
        """Return the most recent rejected messages (up to 1,000) with their raw payloads."""
        rejects = list(self._rejects)
        return pd.DataFrame(
            {
                "received_at": pd.to_datetime(
                    pd.array([r.received_ns for r in rejects], dtype="int64"), unit="ns", utc=True
                ),
                "topic": [r.topic for r in rejects],
                "reason": pd.Categorical([r.reason.value for r in rejects]),
                "detail": [r.detail for r in rejects],
                "payload": [r.payload for r in rejects],
                "payload_size": pd.array([r.payload_size for r in rejects], dtype="int64"),
            }
        )

    def health(self, *, silent_after: str | float | pd.Timedelta | None = None) -> pd.DataFrame:
        """Return one row per device: when it was last heard of, how often, and how well.

        Every message counts, rejected ones too (a device that sends garbage is alive);
        retained messages the broker replays on subscribing do not. Memory is bounded by
        the number of devices (see `tesaiot_data.monitor.health`): devices not seen for a day, or
        the least recently seen beyond `health.MAX_DEVICES`, are forgotten
        (`stats.devices_evicted`).

        Args:
            silent_after: Call every device silent after this long without a message
                (`"30s"`); None judges each device by its own pace: silent after 5 of its
                usual intervals, at least 5 s (60 s for a device seen only once).

        Returns:
            Silent devices first, then by device id; a RangeIndex and the columns
            device (str), last_seen (datetime64[ns, UTC], receive time of its last
            message), age_s (float64 s since then), msgs_per_s (float64, over the last
            minute, or since it was first seen if later), usual_interval_s (float64,
            median gap between its last 32 messages; NaN after one message), silent
            (bool), clock_skew_s (float64, median of device time minus receive time over
            its last 32 messages with a timestamp: positive means the device clock is
            ahead, network delay included; NaN without timestamps), messages (int64,
            since first seen), rejected (int64), reject_share (float64, rejected /
            messages) and metrics (str, the metrics it sent, sorted, comma-separated).

        Raises:
            ConfigError: `silent_after` is not a positive duration (a ValueError too).
        """
        limit = None
        if silent_after is not None:
            try:
                limit = duration_seconds(silent_after, name="silent_after")
            except ValueError as exc:
                raise ConfigError(str(exc), hint="for example silent_after='30s'") from exc
        return self._health.frame(now_ns=time.time_ns(), silent_after=limit)

    def alert(
        self,
        name: str,
        *,
        metric: str | None = None,
        above: float | None = None,
        below: float | None = None,
        for_: str | float | pd.Timedelta = "0s",
        devices: Iterable[str] | str | None = None,
        silent: str | float | pd.Timedelta | None = None,
        callback: Callable[[AlertEvent], object] | None = None,
        replace: bool = False,
    ) -> None:
        """Add an alert rule: a threshold on a metric, or a device gone silent.

        An alert fires once when its condition starts and clears once when it ends, per
        (rule, device); each event is kept (see `alerts()`), logged (WARNING when firing,
        INFO when cleared) and passed to `callback` on the housekeeping thread, within
        about 0.25 s. A callback that raises is logged once per rule and counted in
        `stats.alert_callback_errors`; the alert goes on. Recordings keep the events of
        their time in `<stem>.alerts.parquet`.

        Threshold rules are evaluated on every batch as it arrives: the condition holds
        for a numeric row of `metric` whose value is greater than `above` or less than
        `below` (with both: outside the band). With `for_`, the alert fires at the first
        row whose device's rows of that metric have all been in breach since a row at least
        `for_` earlier, by receive time (device clocks can be wrong); one row back in range
        clears it. Silent rules are evaluated four times a second while connected: the
        alert fires when a device sent nothing for `silent` (devices named in `devices`
        count even if never seen) and clears on its next message.

        Example:
            >>> collector.alert("hot", metric="temperature", above=30, for_="1m")  # doctest: +SKIP
            >>> collector.alert("gone", silent="30s")  # doctest: +SKIP

        Args:
            name: The rule's name, unique among this collector's rules.
            metric: The metric a threshold rule watches (required with above/below).
            above: Fire while a value is greater than this.
            below: Fire while a value is less than this.
            for_: How long the breach must last before firing (`"30s"`); default at once.
            devices: Only these device ids; default every device.
            silent: Fire when a device sent nothing for this long (`"30s"`), instead of a
                threshold.
            callback: Called with each `AlertEvent` (time_ns, rule, device, metric, value,
                state) of this rule.
            replace: Replace an existing rule of the same name (its alerts start afresh,
                with no cleared events for those firing).

        Raises:
            ConfigError: No condition, both a threshold and `silent`, a threshold without
                `metric`, `below >= above`, a bad duration, or a duplicate name.
        """
        rule = AlertRule.make(
            name,
            metric=metric,
            above=above,
            below=below,
            for_=for_,
            devices=devices,
            silent=silent,
            callback=callback,
        )
        self._alerts.add(rule, now_ns=time.time_ns(), replace=replace)

    def remove_alert(self, name: str) -> bool:
        """Remove an alert rule; its firing alerts end without a cleared event.

        Returns:
            Whether there was a rule of that name.
        """
        return self._alerts.remove(name)

    def alerts(self, *, since: TimeLike | None = None, active: bool = False) -> pd.DataFrame:
        """Return the alert events, oldest first (the last `alerts.MAX_EVENTS`).

        Cheap to poll: `stats.alert_events` grows with every new event.

        Args:
            since: Only events at or after this time: a duration back from now (`"5min"`)
                or a point in time (naive means UTC).
            active: Only the alerts firing now, one row each (its firing event).

        Returns:
            A RangeIndex and the columns time (datetime64[ns, UTC]), rule (category),
            device (str), metric (str; missing for silent rules), value (float64: the
            row's value, or for silent rules the seconds of silence) and state (category:
            "firing" or "cleared").

        Raises:
            ValueError: `since` is neither a duration nor a time.
        """
        return self._alerts.frame(since_ns=since_ns(since), active=active)

    @property
    def stats(self) -> CollectorStats:
        """The collector's counters, read now."""
        client = self._client
        client_stats = client.stats if client is not None else self._last_client_stats
        received = client_stats.received if client_stats else 0
        dropped = client_stats.dropped if client_stats else 0
        failed = client_stats.failed if client_stats else 0
        pending = max(0, received - dropped - failed - self._messages - self._rejected)
        end = self._stopped_at or time.time()
        elapsed = end - self._started_at if self._started_at else 0.0
        error = client.error if client is not None else self._last_error
        failed_sinks = self._failed_sinks + sum(1 for feed in self._feeds if feed.error)
        return CollectorStats(
            received=received,
            messages=self._messages,
            rejected=self._rejected,
            dropped=dropped,
            failed=failed,
            pending=pending,
            rows=self._window.rows,
            rows_total=self._window.appended,
            rows_evicted=self._window.evicted,
            rejects_by_reason=MappingProxyType(dict(self._rejects_by_reason)),
            timestamp_fallbacks=self._fallbacks,
            truncated_messages=self._truncated,
            rows_cut=self._rows_cut,
            clock_skew_rows=self._clock_skew_rows,
            late_rows=self._watermark.late_rows,
            retained=self._retained,
            failed_sinks=failed_sinks,
            alert_events=self._alerts.events_total,
            alert_events_dropped=self._alerts.events_dropped,
            alert_callback_errors=self._alerts.callback_errors,
            devices=self._health.devices,
            devices_evicted=self._health.evicted,
            rate=self._current_rate() if client is not None else 0.0,
            mean_rate=received / elapsed if elapsed > 0 else 0.0,
            connected=bool(client is not None and client.connected),
            reconnects=client_stats.reconnects if client_stats else 0,
            last_message_at=client_stats.last_message_at if client_stats else None,
            error=str(error) if error is not None else None,
        )

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the window's row arrays."""
        return self._window.nbytes()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every message received so far is in the frame (or rejected).

        Args:
            timeout: Seconds to wait at most.

        Returns:
            True if caught up, False on timeout (or when not running).
        """
        client = self._client
        return client.wait_idle(timeout) if client is not None else False

    # ---------------------------------------------------------------- writes

    def snapshot(self, path: str | Path | None = None) -> Path:
        """Write the current window to one Parquet file now.

        The window's rows go to disk as Arrow record batches, without a DataFrame.

        Args:
            path: The file; default `snapshot-<UTC time>.parquet` in `snapshot_dir` or here.

        Returns:
            The path written.

        Raises:
            OSError: The file could not be written; an old file at `path` is left as it was.
        """
        if path is None:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
            path = (self._snapshot_dir or Path.cwd()) / f"snapshot-{stamp}.parquet"
        return write_batches(self._window.batches(), path, metadata=self._metadata())

    def record(self, path: str | Path, *, flush_every: float = 5.0) -> Recording:
        """Record every row from now until the recording is stopped.

        Parts are flushed to `<path>.parts/` at least every `flush_every` seconds, so a
        crash loses at most that much; `stop()` writes the single file at `path`, and the
        session's rejected messages to `<stem>.rejects.parquet` beside it (and its alert
        events to `<stem>.alerts.parquet` when the collector has alert rules; see `alert()`).

        May be called before `start()`: the recording then begins with the first message.

        Args:
            path: The Parquet file to produce.
            flush_every: Seconds between flushes of parts.

        Returns:
            The recording; call `stop()` on it (or use it as a context manager).

        Raises:
            FileExistsError: Another recording (in this or another process) writes to `path`,
                or an unfinished one left `<path>.parts`.
        """
        recorder = Recorder(path, flush_every=flush_every, metadata=self._metadata())
        feed = _Feed(recorder)
        self._alert_captures[feed] = self._alerts.capture()
        with self._lock:
            self._feeds = (*self._feeds, feed)
        logger.info("recording to %s", recorder.path)
        return Recording(self, feed, recorder)

    def dashboard(self, **options: Any) -> Dashboard:
        """Return a live ipywidgets dashboard of this collector; see `tesaiot_data.dashboard`.

        A new dashboard closes this collector's earlier ones (re-running a notebook cell
        leaves no refresh thread behind); pass `replace=False` to keep them open.
        """
        from tesaiot_data.dashboard import Dashboard  # noqa: PLC0415  (ipywidgets is heavy)

        return Dashboard(self, **options)

    # -------------------------------------------------------------- internals

    def _detach(self, feed: _Feed) -> None:
        """Take a recording's feed off the ingest path and hand on what it still holds."""
        with self._lock:
            self._feeds = tuple(f for f in self._feeds if f is not feed)
        feed.drain()

    def _metadata(self) -> dict[str, str]:
        url = self.settings.url
        return {
            "topic": self.settings.topic,
            "broker": f"{url.scheme}://{url.host}:{url.port}",
            "client_id": self.settings.client_id,
        }

    def _ingest(self, batch: Sequence[RawMessage]) -> None:
        """Runs on the client's worker thread with every batch of raw messages."""
        parsed = parse_batch(batch, options=self._parse_options, last_payloads=self._last_payloads)
        chunk = self._window.append(parsed, now_ns=time.time_ns())
        for feed in self._feeds:
            feed.put(chunk, parsed.rejects)
        if parsed.rejects:
            self._rejects.extend(parsed.rejects)
            self._rejects_by_reason.update(r.reason.value for r in parsed.rejects)
            self._rejected += len(parsed.rejects)
        self._fallbacks += parsed.timestamp_fallbacks
        self._retained += parsed.retained_messages
        if parsed.truncated_messages:
            self._truncated += parsed.truncated_messages
            self._rows_cut += parsed.rows_cut
            self._warn(
                "cut",
                "%d messages so far were cut to max_rows_per_message=%d rows or %d levels of "
                "nesting (%d rows cut; see stats.rows_cut)",
                self._truncated,
                self._parse_options.max_rows_per_message,
                MAX_DEPTH,
                self._rows_cut,
            )
        if chunk is not None:
            self._watermark.count(chunk.timestamp)
            skewed = _count_skewed(chunk, self._clock_skew_ns)
            if skewed:
                self._clock_skew_rows += skewed
                self._warn(
                    "skew",
                    "%d rows so far have a device time more than %s from the receive time "
                    "(a wrong device clock, or local time without a zone: see naive_timezone)",
                    self._clock_skew_rows,
                    pd.Timedelta(self._clock_skew_ns, unit="ns"),
                )
        self._observe(batch, parsed, chunk)
        # Counted last: once the counts show a message, every consumer has its rows.
        self._messages += parsed.parsed_messages

    def _observe(
        self, batch: Sequence[RawMessage], parsed: ColumnBatch, chunk: Chunk | None
    ) -> None:
        """Feed `health()` and the threshold alerts; a failure here never stops ingest."""
        try:
            retained = (
                [m.received_ns for m in batch if m.retain] if parsed.retained_messages else ()
            )
            self._health.observe(chunk, parsed.rejects, retained_ns=retained)
            self._alerts.evaluate(chunk)
        except Exception:  # a bug; the rows are stored all the same
            self._warn("health", "device health or alert evaluation failed", exc_info=True)

    def _warn(self, kind: str, message: str, *args: object, exc_info: bool = False) -> None:
        """Log a warning of this kind at most once every `_WARN_EVERY` seconds."""
        now = time.monotonic()
        last = self._warned_at.get(kind)
        if last is None or now - last >= _WARN_EVERY:
            self._warned_at[kind] = now
            logger.warning(message, *args, exc_info=exc_info)

    def _housekeep(self) -> None:
        while not self._stopping.wait(_HOUSEKEEPING_PERIOD):
            try:
                self._window.evict(time.time_ns())
                self._sample_rate()
                for feed in self._feeds:
                    feed.drain()
                    if feed.sink.flush_due():
                        feed.flush()  # logs a failure once and keeps the rows
            except Exception:  # a bug; the thread goes on so that collection never stops
                self._warn("housekeeping", "housekeeping failed", exc_info=True)
            try:
                self._watch(time.time_ns())
            except Exception:
                self._warn("alerts", "evaluating silent alerts failed", exc_info=True)

    def _watch(self, now_ns: int) -> None:
        """Evaluate silent alerts, deliver alert events, forget long-gone devices."""
        client = self._client
        if client is not None and not client.connected:
            self._listening_since_ns = None  # a lost connection silences every device
        elif self._listening_since_ns is None:
            self._listening_since_ns = now_ns
        if self._listening_since_ns is not None and self._alerts.watches_silence:
            self._alerts.evaluate_silence(
                self._health.last_seen(),
                now_ns=now_ns,
                listening_since_ns=self._listening_since_ns,
            )
        self._alerts.dispatch()
        if time.monotonic() - self._health_evicted_at >= _HEALTH_EVICT_EVERY:
            self._health_evicted_at = time.monotonic()
            self._health.evict(now_ns)

    def _sample_rate(self) -> None:
        client = self._client
        if client is None:
            return
        now = time.monotonic()
        self._rate_samples.append((now, client.stats.received))
        while self._rate_samples and now - self._rate_samples[0][0] > _RATE_WINDOW:
            self._rate_samples.popleft()

    def _current_rate(self) -> float:
        if len(self._rate_samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._rate_samples[0], self._rate_samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def _count_skewed(chunk: Chunk, skew_ns: int) -> int:
    # Compared without a subtraction, which could overflow int64 for a year-2262 reading.
    stamp, received = chunk.timestamp, chunk.received
    return int(np.count_nonzero((stamp > received + skew_ns) | (stamp < received - skew_ns)))
