"""The notebook API: `Collector` conducts the stages of live telemetry and answers reads.

It builds the ingest path (`ingest.Ingest`, called by the subscriber's worker thread with
every batch), runs the housekeeping thread (`housekeeping.Housekeeper`), attaches feeds for
recordings (`recording.Recording`) and the auto-persist dataset, and reads the window, the
monitors and the counters (`stats.CollectorStats`) for the user.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pandas as pd

from tesaiot_data.arguments import (
    TimeLike,
    duration_seconds,
    moment_ns,
    name_list,
    renamed_keyword,
)
from tesaiot_data.collector.durability import Durability, open_dataset
from tesaiot_data.collector.housekeeping import Housekeeper
from tesaiot_data.collector.ingest import Ingest
from tesaiot_data.collector.monitoring import Monitoring, warn_unknown_metrics
from tesaiot_data.collector.recording import Recording, RecordingAlerts, begin_recording
from tesaiot_data.collector.stats import CollectorStats
from tesaiot_data.files.parquet import write_batches
from tesaiot_data.files.store import Location, StorePath, location
from tesaiot_data.monitor.alerts import AlertEngine
from tesaiot_data.monitor.health import DeviceHealth
from tesaiot_data.mqtt.client import ClientStats, TESAIoTMQTTClient
from tesaiot_data.parse.rows import MAX_ROWS_PER_MESSAGE, ParseOptions
from tesaiot_data.readers.history import history_frame
from tesaiot_data.readers.live import latest_rows, rejects_frame
from tesaiot_data.settings import Settings
from tesaiot_data.sinks.feed import Feed
from tesaiot_data.window.resample import Watermark, resample_frame, rule_ns
from tesaiot_data.window.rolling import RollingWindow

if TYPE_CHECKING:
    from tesaiot_data.dashboard import Dashboard

__all__ = ["DEFAULT_FLUSH_EVERY", "Collector"]

logger = logging.getLogger(__name__)

#: How often the auto-persist dataset gets a new part when `flush_every` is not given.
DEFAULT_FLUSH_EVERY = "60s"


class Collector(Monitoring):
    """Collects live telemetry on background threads into a rolling DataFrame.

    Device health and alerts (`health()`, `alert()`, `alerts()`) come from its base
    `Monitoring`. Without a broker, feed it batches through `ingest` (see there).

    Example:
        >>> with Collector(window="15min") as collector:  # doctest: +SKIP
        ...     df = collector.frame(metrics=["temperature"])

    Args:
        settings: Connection settings; None reads them with `Settings.from_env()`.
        window: Keep rows received within this duration (`"15min"`); None keeps any age.
        max_rows: Keep at most this many rows; the oldest go first.
        dataset: Auto-persist: if set, every `flush_every` the rows that arrived since the
            last time are written as a new part of a hive-style Parquet dataset in this
            folder (`date=YYYY-MM-DD/`; read it with `history()` or `load_recording()`).
        flush_every: How often to write those parts (`"60s"`, seconds, or a Timedelta);
            None: every 60 s.
        queue_size: Messages that may wait for parsing before new ones are dropped (counted).
        max_rows_per_message: Most rows one message may give; the rest are cut, counted in
            `stats.rows_cut` and logged. Batched devices send a few thousand readings.
        numeric_strings: Read strings that are exactly JSON numbers (`"25.5"`) as numbers;
            False keeps them as text.
        naive_timezone: Zone of device timestamps that carry none (`"Asia/Bangkok"`,
            `"+07:00"`); None reads them as UTC.
        clock_skew: Rows whose device time is further than this from the receive time are
            counted in `stats.clock_skew_rows` (and logged, at most once a minute).
        timestamp_property: An MQTT 5 user property that carries the device time, for
            payloads without one (`"ts"`); see `TESAIoTMQTTClient`.
        snapshot_dir: Deprecated: the old name of `dataset` (a `DeprecationWarning`).
        snapshot_every: Deprecated: the old name of `flush_every` (a `DeprecationWarning`).
        **overrides: Settings fields to change, for example `topic=...`.

    Raises:
        ConfigError: An option has a value that cannot work (see its message; for
            example `window`, `flush_every` or `clock_skew` is not a positive duration;
            a ValueError too), or an option is given by both its old and its new name.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        window: str | pd.Timedelta | None = "15min",
        max_rows: int = 1_000_000,
        dataset: str | Path | StorePath | None = None,
        flush_every: str | float | pd.Timedelta | None = None,
        queue_size: int = 200_000,
        max_rows_per_message: int = MAX_ROWS_PER_MESSAGE,
        numeric_strings: bool = True,
        naive_timezone: str | tzinfo | None = None,
        clock_skew: str | float | pd.Timedelta = "5min",
        timestamp_property: str | None = None,
        snapshot_dir: str | Path | StorePath | None = None,
        snapshot_every: str | float | pd.Timedelta | None = None,
        **overrides: Any,
    ) -> None:
        if renamed_keyword("snapshot_dir", snapshot_dir, "dataset", dataset):
            dataset = snapshot_dir
        if renamed_keyword("snapshot_every", snapshot_every, "flush_every", flush_every):
            flush_every = snapshot_every
        self.settings = Settings.resolve(settings, **overrides)
        window_ns = None if window is None else int(duration_seconds(window, name="window") * 1e9)
        self._window = RollingWindow(window_ns=window_ns, max_rows=max_rows)
        self._flush_every = duration_seconds(
            DEFAULT_FLUSH_EVERY if flush_every is None else flush_every,
            name="flush_every" if snapshot_every is None else "snapshot_every",
        )
        self._queue_size = queue_size
        self._timestamp_property = timestamp_property
        self._dataset = location(dataset) if dataset is not None else None
        self._watermark = Watermark()  # of resample(): finds late rows
        self._health = DeviceHealth()
        self._ingest = Ingest(
            window=self._window,
            options=ParseOptions(
                max_rows_per_message=max_rows_per_message,
                numeric_strings=numeric_strings,
                naive_timezone=naive_timezone,
            ),
            clock_skew_ns=int(duration_seconds(clock_skew, name="clock_skew") * 1e9),
            watermark=self._watermark,
            health=self._health,
            alerts=AlertEngine(),
        )
        self._client: TESAIoTMQTTClient | None = None
        self._housekeeper = Housekeeper(self._ingest, client=lambda: self._client)
        self._dataset_feed: Feed | None = None  # the auto-persist dataset's, while started
        self._durability: Durability | None = None  # its durable inbox, if acks wait for it
        self._recording_alerts: dict[Feed, RecordingAlerts] = {}  # until each is written
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._last_client_stats: ClientStats | None = None  # kept by stop()
        self._last_error: BaseException | None = None  # kept by stop()
        self._failed_sinks = 0
        self._sink_rows_dropped = 0  # of sinks already closed

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
        ingest = self._ingest
        dataset: Feed | None = None
        durability: Durability | None = None
        if self._dataset is not None:
            # Attached before connecting: rows may come before connect() returns (right
            # after the SUBACK, or a persistent session's queue right after the CONNACK).
            # Recordings made before start() keep their place before it.
            dataset, durability = open_dataset(
                self._dataset,
                flush_every=self._flush_every,
                metadata=self._metadata(),
                settings=self.settings,
            )
            ingest.attach(dataset)
            self._dataset_feed = dataset
        try:
            if durability is not None:
                durability.recover(ingest)  # what a killed predecessor left, first
            client = TESAIoTMQTTClient(
                self.settings,
                on_batch=ingest,
                queue_size=self._queue_size,
                inbox=durability.inbox if durability is not None else None,
                timestamp_property=self._timestamp_property,
            )
            if durability is not None:
                durability.client(client)
            client.connect()
        except BaseException:
            if dataset is not None:
                ingest.detach(dataset)
                self._dataset_feed = None
            if durability is not None:
                durability.close(written=False)
            raise
        self._durability = self._housekeeper.durability = durability
        self._client = client
        self._started_at = time.time()
        self._stopped_at = None
        self._housekeeper.start()
        return self

    def stop(self) -> None:
        """Disconnect, parse what was received, and close recordings and the dataset. Idempotent.

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
        self._housekeeper.stop()
        self._last_client_stats = client.stats
        self._last_error = client.error
        self._stopped_at = time.time()
        self._ingest.alerts.dispatch()  # events of the last batches: logged, callbacks called
        feeds = self._ingest.detach_all()
        dataset, self._dataset_feed = self._dataset_feed, None
        errors = {feed: feed.close() for feed in feeds}
        failures = [error for error in errors.values() if error is not None]
        self._sink_rows_dropped += sum(feed.sink.rows_dropped for feed in feeds)
        durability, self._durability = self._durability, None
        if durability is not None:  # the inbox is released up to what the dataset holds
            durability.close(written=dataset is not None and errors.get(dataset) is None)
        sidecars = [self._recording_alerts.pop(feed, None) for feed in feeds]
        failures += [error for a in sidecars if a is not None and (error := a.write()) is not None]
        self._failed_sinks += len(failures)
        logger.info("collector stopped: %s rows held", self._window.rows)
        if failures:
            raise failures[0]

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

    @property
    def ingest(self) -> Ingest:
        """The ingest path: what the subscriber's worker calls with each batch of messages.

        Call it with a list of `RawMessage` to feed the collector without a broker (tests,
        benchmarks, replays of one's own): the rows reach the window, the recordings, the
        dataset, `health()`, the alerts and `stats` exactly as received ones do. Not while
        the collector runs: batches must not overlap with the worker's.
        """
        return self._ingest

    @property
    def window(self) -> RollingWindow:
        """The rolling window the rows are held in (read it with `frame()`; see `RollingWindow`)."""
        return self._window

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
            metrics: Only these metrics. A name no device has sent (while others were
                seen) is warned about once (UserWarning), with the known ones.

        Returns:
            Rows in arrival order with the columns timestamp, received_at, device_id,
            sensor_type, metric, value, unit, value_text.
        """
        if metrics is not None:
            warn_unknown_metrics(
                self._ingest.health, name_list(metrics) or (), option="metrics", stacklevel=3
            )
        return self._window.frame(
            since_ns=moment_ns(since), devices=name_list(devices), metrics=name_list(metrics)
        )

    def history(
        self,
        since: TimeLike | None = "7d",
        until: TimeLike | None = None,
        *,
        devices: Iterable[str] | str | None = None,
        metrics: Iterable[str] | str | None = None,
        dataset: str | Path | StorePath | None = None,
    ) -> pd.DataFrame:
        """Return the rows on disk and in the window as one DataFrame, each row once.

        Rows received before the window's oldest row (its watermark) come from a dataset:
        this collector's own `dataset` (its pending rows are written first), or `dataset`,
        for example the folder a `tesaiot-data record --dataset` service writes; the rest
        come from the window. With another process's dataset, a row near the watermark
        that both hold is kept once (the window's copy); see `tesaiot_data.readers.history`.

        Args:
            since: Rows received at or after this time: a duration back from now (`"7d"`),
                a time (naive means UTC), or None for every row on disk.
            until: Rows received before this time (same forms); None: up to now.
            devices: Only these device ids (pushed down to the files).
            metrics: Only these metrics (pushed down to the files).
            dataset: The dataset folder (or recording) to read; default the collector's
                own (`Collector(dataset=...)`).

        Returns:
            Rows in `received_at` order, with the columns and dtypes of `frame()`.

        Raises:
            ConfigError: The collector has no dataset of its own and no `dataset` was
                given, or `since` or `until` is not a time or duration.
            FileNotFoundError: Nothing is at `dataset`.
            RecordingError: The pending rows could not be written to the own dataset.
        """
        return history_frame(
            self._window,
            since=since,
            until=until,
            devices=devices,
            metrics=metrics,
            dataset=dataset,
            own_dataset=self._dataset,
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
        latest = latest_rows(self.frame())
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
        tz: str | tzinfo | None = None,
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
            tz: Buckets on this zone's local clock (`"Europe/Berlin"`: `"1D"` gives
                calendar days of 23, 24 or 25 hours, anchored at local midnight); the
                index is then in that zone. Default UTC.

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
        if metrics is not None:
            warn_unknown_metrics(
                self._ingest.health, name_list(metrics) or (), option="metrics", stacklevel=3
            )
        rows = self._window.frame(
            since_ns=moment_ns(since), devices=name_list(devices), metrics=name_list(metrics)
        )
        result = resample_frame(rows, rule, how=how, tz=tz)
        self._watermark.advance(result, step, now_ns=now_ns)
        return result

    def rejects(self) -> pd.DataFrame:
        """Return the most recent rejected messages (up to 1,000) with their raw payloads."""
        return rejects_frame(list(self._ingest.rejects))

    @property
    def stats(self) -> CollectorStats:
        """The collector's counters, read now."""
        client = self._client
        client_stats = client.stats if client is not None else self._last_client_stats
        ingest = self._ingest
        received = client_stats.received if client_stats else 0
        dropped = client_stats.dropped if client_stats else 0
        failed = client_stats.failed if client_stats else 0
        pending = max(0, received - dropped - failed - ingest.messages - ingest.rejected)
        end = self._stopped_at or time.time()
        elapsed = end - self._started_at if self._started_at else 0.0
        error = client.error if client is not None else self._last_error
        failed_sinks = self._failed_sinks + sum(1 for feed in ingest.feeds if feed.error)
        sink_rows_dropped = self._sink_rows_dropped + sum(
            feed.sink.rows_dropped for feed in ingest.feeds
        )
        return CollectorStats(
            **ingest.counters(),
            received=received,
            dropped=dropped,
            failed=failed,
            pending=pending,
            failed_sinks=failed_sinks,
            rate=self._housekeeper.rate() if client is not None else 0.0,
            mean_rate=received / elapsed if elapsed > 0 else 0.0,
            connected=bool(client is not None and client.connected),
            reconnects=client_stats.reconnects if client_stats else 0,
            last_message_at=client_stats.last_message_at if client_stats else None,
            error=str(error) if error is not None else None,
            sink_rows_dropped=sink_rows_dropped,
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

    def snapshot(self, path: str | Path | StorePath | None = None) -> Location:
        """Write the current window to one Parquet file now.

        The window's rows go to disk as Arrow record batches, without a DataFrame.

        Args:
            path: The file; default `snapshot-<UTC time>.parquet` in the collector's
                `dataset` folder, or here without one.

        Returns:
            The path written.

        Raises:
            OSError: The file could not be written; an old file at `path` is left as it was.
        """
        if path is None:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
            path = (self._dataset or Path.cwd()) / f"snapshot-{stamp}.parquet"
        return write_batches(self._window.batches(), path, metadata=self._metadata())

    def record(
        self, path: str | Path, *, flush_every: str | float | pd.Timedelta = 5.0
    ) -> Recording:
        """Record every row from now until the recording is stopped.

        Parts are flushed to `<path>.parts/` at least every `flush_every` seconds, so a
        crash loses at most that much; `stop()` writes the single file at `path`, and the
        session's rejected messages to `<stem>.rejects.parquet` beside it (and its alert
        events to `<stem>.alerts.parquet` when the collector has alert rules; see `alert()`).

        May be called before `start()`: the recording then begins with the first message.

        Args:
            path: The Parquet file to produce.
            flush_every: How often parts are flushed: a duration (`"5s"`, a Timedelta) or
                seconds.

        Returns:
            The recording; call `stop()` on it (or use it as a context manager).

        Raises:
            FileExistsError: Another recording (in this or another process) writes to `path`,
                or an unfinished one left `<path>.parts`.
            ConfigError: `flush_every` is not a positive duration.
        """
        return begin_recording(
            self._ingest,
            path,
            flush_every=duration_seconds(flush_every, name="flush_every"),
            metadata=self._metadata(),
            sidecars=self._recording_alerts,
            detach=self._detach_recording,
        )

    def dashboard(self, **options: Any) -> Dashboard:
        """Return a live ipywidgets dashboard of this collector; see `tesaiot_data.dashboard`.

        A new dashboard closes this collector's earlier ones (re-running a notebook cell
        leaves no refresh thread behind); pass `replace=False` to keep them open.
        """
        from tesaiot_data.dashboard import Dashboard  # noqa: PLC0415  (ipywidgets is heavy)

        return Dashboard(self, **options)

    # -------------------------------------------------------------- internals

    def _detach_recording(self, feed: Feed) -> None:
        """Take a recording's feed off the ingest path; its alert events are its own now."""
        self._ingest.detach(feed)
        self._recording_alerts.pop(feed, None)

    def _metadata(self) -> dict[str, str]:
        url = self.settings.url
        return {
            "topic": self.settings.topic,
            "broker": f"{url.scheme}://{url.host}:{url.port}",
            "client_id": self.settings.client_id,
        }
