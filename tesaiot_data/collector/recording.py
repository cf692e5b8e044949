"""The user's handle on one capture (`Recording`), and the alert events written at its stop.

One capture has three names, one per role: `Collector.record()` returns a `Recording` (this
module), which the user reads and stops; a `Recorder` (`tesaiot_data.sinks.recorder`) writes its
rows; a `Feed` (`tesaiot_data.sinks.feed`) carries them from the ingest thread to that
recorder. When the collector has alert rules, `RecordingAlerts` writes the events of the
recording's time to `<stem>.alerts.parquet` beside it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

from tesaiot_data.collector.ingest import Ingest
from tesaiot_data.errors import RecordingError, disk_error
from tesaiot_data.files.store import Location, StorePath
from tesaiot_data.monitor.alerts import AlertCapture, AlertEngine
from tesaiot_data.monitor.sidecar import alerts_sidecar, write_alerts
from tesaiot_data.sinks.feed import Feed
from tesaiot_data.sinks.recorder import Recorder

__all__ = ["Recording", "RecordingAlerts", "begin_recording"]

logger = logging.getLogger(__name__)


class RecordingAlerts:
    """The alert events of one recording, captured from its start, written once at its stop.

    Args:
        engine: The collector's alert engine.
        capture: The capture `engine.capture()` started with the recording.
        recording: The recording's Parquet file; the events go beside it.
        metadata: String key-value pairs stored in the alerts file.
    """

    def __init__(
        self,
        engine: AlertEngine,
        capture: AlertCapture,
        *,
        recording: Location,
        metadata: Mapping[str, str],
    ) -> None:
        self._engine = engine
        self._capture = capture
        self._recording = recording
        self._metadata = metadata
        self._done = False
        self._lock = threading.Lock()  # the recording and the collector may both stop it

    def write(self) -> RecordingError | None:
        """End the capture and write `<stem>.alerts.parquet`; only the first call writes.

        No file is written when there were no events and the collector has no alert rules.

        Returns:
            None once written (or when there was nothing to write); otherwise a
            `RecordingError` (already logged). The recording itself is not affected.
        """
        with self._lock:
            if self._done:
                return None
            self._done = True
        events = self._engine.release(self._capture)
        if not events and not self._engine.rules:
            return None  # no alerting: no file
        path = alerts_sidecar(self._recording)
        if self._capture.dropped:
            logger.warning(
                "%s keeps the first %d alert events of the recording; %d more were dropped",
                path,
                len(events),
                self._capture.dropped,
            )
        try:
            write_alerts(events, path, metadata=self._metadata)
        except OSError as exc:
            error = disk_error(
                f"could not write the alert events of {self._recording} to {path}: {exc}",
                path=path,
                then="the recording itself is not affected",
            )
            error.__cause__ = exc
            logger.error("%s", error)
            return error
        logger.info("wrote %d alert events to %s", len(events), path)
        return None


class Recording:
    """A session capture started by `Collector.record()`; stop it to get the Parquet file.

    Args:
        feed: The hand-off from the collector's ingest path to `recorder`.
        recorder: The sink that writes the recording.
        detach: Takes `feed` off the collector's ingest path (called once, at `stop()`).
        alerts: The recording's alert events, written at `stop()`.
    """

    def __init__(
        self,
        feed: Feed,
        recorder: Recorder,
        *,
        detach: Callable[[Feed], None],
        alerts: RecordingAlerts,
    ) -> None:
        self._feed = feed
        self._recorder = recorder
        self._detach = detach
        self._alerts = alerts
        self._started = time.monotonic()
        self._elapsed: float | None = None

    @property
    def path(self) -> Location:
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

    def stop(self) -> Location:
        """Stop recording and write the single Parquet file. Idempotent.

        Returns:
            The path of the recording.

        When the collector has alert rules, the alert events of the recording's time go to
        `<stem>.alerts.parquet` beside it (also when there were none; read it with
        `tesaiot_data.monitor.sidecar.load_alerts`).

        Raises:
            RecordingError: The file could not be written (disk full, folder removed); the
                error says what reached disk, which `load_recording(path)` still reads.
        """
        if self._elapsed is None:
            self._elapsed = time.monotonic() - self._started
            self._detach(self._feed)
            self._feed.drain()  # what the ingest path put here before the detach
        try:
            path = self._recorder.stop()
        finally:
            alerts_error = self._alerts.write()
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


def begin_recording(
    ingest: Ingest,
    path: str | Path | StorePath,
    *,
    flush_every: float,
    metadata: Mapping[str, str],
    sidecars: dict[Feed, RecordingAlerts],
    detach: Callable[[Feed], None],
) -> Recording:
    """Start a recording of every later batch of `ingest` (`Collector.record`).

    Args:
        ingest: The collector's ingest path; the recording's feed is attached to it.
        path: The Parquet file to produce.
        flush_every: Seconds between flushes of parts.
        metadata: The `tesaiot.*` keys of its files.
        sidecars: The collector's alert captures by feed; this recording's is added.
        detach: Takes the feed off the ingest path when the recording stops.

    Returns:
        The recording.

    Raises:
        FileExistsError: Another recording writes to `path`, or an unfinished one left
            `<path>.parts`.
    """
    recorder = Recorder(path, flush_every=flush_every, metadata=metadata)
    feed = Feed(recorder)
    alerts = ingest.alerts
    sidecar = RecordingAlerts(alerts, alerts.capture(), recording=recorder.path, metadata=metadata)
    sidecars[feed] = sidecar
    ingest.attach(feed)
    logger.info("recording to %s", recorder.path)
    return Recording(feed, recorder, detach=detach, alerts=sidecar)
