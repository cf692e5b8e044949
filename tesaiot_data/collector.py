"""The collector: live telemetry into a rolling DataFrame, Parquet snapshots and recordings."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tesaiot_data.client import ClientStats, TESAIoTMQTTClient
from tesaiot_data.errors import RecordingError
from tesaiot_data.messages import RawMessage, Reject
from tesaiot_data.parquet import write_batches
from tesaiot_data.parsing import MAX_DEPTH, MAX_ROWS_PER_MESSAGE, ParseOptions, parse_batch
from tesaiot_data.settings import Settings
from tesaiot_data.sinks import DatasetWriter, Recorder, Sink
from tesaiot_data.timestamps import TimeLike, duration_seconds, since_ns
from tesaiot_data.window import Chunk, RollingWindow

if TYPE_CHECKING:
    from tesaiot_data.dashboard import Dashboard

__all__ = ["Collector", "CollectorStats", "Recording"]

logger = logging.getLogger(__name__)

_HOUSEKEEPING_PERIOD = 0.25  # seconds between evictions, flush checks and rate samples
_RATE_WINDOW = 5.0  # seconds over which the current rate is measured
_MAX_REJECTS_KEPT = 1_000
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
        retained: Messages taken that carried the MQTT retain flag (a broker's stored last
            value, sent on subscribing); their redeliveries are rejected, not kept twice.
        failed_sinks: Recordings or auto-persist writes that failed (see the log and
            `Recording.error`); their rows stay pending in memory and are retried.
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
    retained: int
    failed_sinks: int
    rate: float
    mean_rate: float
    connected: bool
    reconnects: int
    last_message_at: datetime | None
    error: str | None


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

        Raises:
            RecordingError: The file could not be written (disk full, folder removed); the
                error says what reached disk, which `load_recording(path)` still reads.
        """
        if self._elapsed is None:
            self._elapsed = time.monotonic() - self._started
            self._collector._detach(self._feed)
        return self._recorder.stop()

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
        self._rejects: deque[Reject] = deque(maxlen=_MAX_REJECTS_KEPT)
        self._rejects_by_reason: Counter[str] = Counter()
        self._messages = 0
        self._rejected = 0
        self._fallbacks = 0
        self._truncated = 0
        self._rows_cut = 0
        self._clock_skew_rows = 0
        self._retained = 0
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
        client.connect()
        self._client = client
        self._started_at = time.time()
        self._stopped_at = None
        self._rate_samples.clear()
        if self._snapshot_dir is not None:
            dataset = DatasetWriter(
                self._snapshot_dir, flush_every=self._snapshot_every, metadata=self._metadata()
            )
            with self._lock:  # recordings made before start() keep their place
                self._feeds = (*self._feeds, _Feed(dataset))
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
        with self._lock:
            feeds, self._feeds = self._feeds, ()
        failures = [error for feed in feeds if (error := self._finish(feed)) is not None]
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

    def latest(self) -> pd.DataFrame:
        """Return the newest row of each (device_id, metric), with its age in seconds."""
        frame = self.frame()
        latest = frame.drop_duplicates(subset=["device_id", "metric"], keep="last")
        latest = latest.sort_values(
            ["device_id", "metric"], key=lambda column: column.astype(str)
        ).reset_index(drop=True)
        now = pd.Timestamp.now(tz="UTC")
        return latest.assign(age_s=(now - latest["received_at"]).dt.total_seconds())

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
            retained=self._retained,
            failed_sinks=failed_sinks,
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
        session's rejected messages to `<stem>.rejects.parquet` beside it.

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
        # Counted last: once the counts show a message, every consumer has its rows.
        self._messages += parsed.parsed_messages

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
