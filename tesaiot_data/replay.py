"""Replay a recording to a broker: its rows back as telemetry messages, at the recorded pace.

Each message goes to `device/<device_id>/telemetry/<sensor_type>` with a payload the parser
turns back into exactly the recorded rows (device, sensor type, metric, value, unit, text and
the device timestamp to the nanosecond), so a collector that records the replay writes the
same rows again. The rows of one recorded message (same device, sensor type, timestamp and
receive time) travel together:

- one row whose metric is the sensor type: the standard shape
  `{"value": 25.5, "unit": "celsius", "timestamp": "2025-12-09T10:30:45.123456789Z"}`;
- several metrics with one unit (or none): the flat shape
  `{"timestamp": ..., "unit": ..., "temperature": 25.1, "humidity": 60}`;
- anything else (units that differ, a metric named `data`): the nested shape
  `{"timestamp": ..., "data": {"temperature": {"value": 25.1, "unit": "celsius"}, ...}}`,
  with the sensor type's own row as the top-level `value`.

Timestamps are ISO 8601 with nine fraction digits, which the parser reads exactly; text
values are sent as JSON strings, NaN and infinities as the JSON extensions `NaN` and
`Infinity` that the parser accepts. A sensor type that cannot be in a topic (it holds `+`,
`#` or an empty level, a control character or a Unicode non-character, or makes the topic
longer than 65,535 bytes of UTF-8; only a payload's `sensor_type` can give one) is sent on
`device/<id>/telemetry` with the payload's `sensor_type`.

Two kinds of row cannot come back, and are counted by reason (`ReplayResult.skipped_by_reason`,
the keys of `parse.encode.SKIP_REASONS`) rather than sent wrongly: a metric named like a key
the parser never reads as a metric (`timestamp`, `ts`, `time`, `device_id`, `sensor_type`,
`unit`, `value`) that differs from its sensor type, and a device id that cannot be a topic
level: none, one holding `+`, `#` or `/`, a control character (NUL included) or a Unicode
non-character (U+FFFF, U+FDD0..U+FDEF, U+xFFFE), or one whose topic would be longer than
65,535 bytes. Sent, such a topic makes Mosquitto close the connection (losing the QoS 0
messages behind it, stalling QoS 1) or paho raise.

A text that is exactly a JSON number (`"25.5"`, recorded with `numeric_strings=False`) comes
back as a number to a collector with the default options.
"""

from __future__ import annotations

import logging
import math
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tesaiot_data.errors import ConfigError, TokenError
from tesaiot_data.files.store import StorePath, location
from tesaiot_data.mqtt.publisher import NO_TOKEN, Publisher
from tesaiot_data.parse.encode import SKIP_REASONS, MessagePlan, ReplayMessage, messages_of
from tesaiot_data.readers.disk import load_recording
from tesaiot_data.settings import Settings

__all__ = ["NO_TOKEN", "ReplayMessage", "ReplayResult", "Replayer", "messages_of", "replay"]

logger = logging.getLogger(__name__)

_NS = 1_000_000_000
_DRAIN_TIMEOUT = 30.0
_PROGRESS_EVERY = 0.2


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay delivered: counted once written or acknowledged, not when attempted.

    Args:
        messages: Messages delivered: written to the socket (QoS 0) or acknowledged by the
            broker (QoS 1 and 2).
        rows: Recorded rows those messages carry (with QoS 0 messages lost in a dropped
            connection, counted in publishing order: the lost ones are not known one by one).
        seconds: Wall time from the first publish to the last acknowledgement, in seconds.
        span: The recording's span by receive time (last `received_at` minus first), in
            seconds; with `loop`, per pass.
        speed: The speed-up over the recorded pace; None when published as fast as possible.
        skipped_rows: Rows no message can reproduce (see the module's notes), not sent.
        skipped_by_reason: `skipped_rows` by reason, the keys of
            `parse.encode.SKIP_REASONS` (`"control_character"`, `"topic_too_long"`, ...).
        dropped: QoS 0 messages lost: not taken because the connection was down, or taken
            but never written because it went down.
        passes: Times the recording was played through, the last one perhaps in part.
        stopped: Whether `Replayer.stop()` ended it before the end.
    """

    messages: int
    rows: int
    seconds: float
    span: float
    speed: float | None
    skipped_rows: int = 0
    dropped: int = 0
    passes: int = 1
    stopped: bool = False
    skipped_by_reason: Mapping[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Messages per second over `seconds` (0.0 when nothing was timed)."""
        return self.messages / self.seconds if self.seconds > 0 else 0.0


class _Progress:
    """A one-line progress display on standard error, redrawn at most every 0.2 s."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        stream = sys.stderr
        self.enabled = stream.isatty() if enabled is None else enabled
        self.total = total
        self._drawn = 0.0
        self._started = time.monotonic()

    def update(self, rows: int, *, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self._drawn < _PROGRESS_EVERY:
            return
        self._drawn = now
        share = 100.0 * rows / self.total if self.total else 100.0
        line = (
            f"\rreplay: {rows:,}/{self.total:,} rows ({share:.0f} %), {now - self._started:.1f} s"
        )
        sys.stderr.write(line + ("\x1b[K\n" if final else "\x1b[K"))
        sys.stderr.flush()


class Replayer:
    """Publishes a recording to a broker, at its recorded pace or faster; blocking or not.

    `replay()` is the one-call form. Use this class to replay in the background
    (`start()`, later `stop()` or `wait()`), as `demo.start(replay=...)` does.

    Example:
        >>> replayer = Replayer("session.parquet", speed=10, loop=True).start()  # doctest: +SKIP
        >>> replayer.stop()                                                      # doctest: +SKIP

    Args:
        source: A recording: a Parquet file, a `.parts` folder or a dataset folder.
        settings: Where to publish and how to authenticate; None reads `Settings.from_env()`.
            The token is both username and password unless `username`/`password` are given.
        broker_url: Overrides `settings.broker_url`.
        username: Publish as this account instead of the token.
        password: Its password (default: the token).
        client_id: The MQTT client id; default `tesaiot-replay-<random>`, never the
            settings' own, so that a collector with those settings keeps its connection.
        speed: How many times faster than recorded (by `received_at`); 1.0 is real time.
        max_speed: Publish as fast as the connection takes, ignoring the recorded pace.
        devices: Only these device ids.
        metrics: Only these metrics.
        shift_to_now: Place the replay at the present: the first row's device time (in
            receive order) becomes the time the replay (or, with `loop`, each pass) starts,
            and each later row's device time follows the replay's clock, as its receive time
            does (see `replay()`), so that a collector's clock-skew check stays quiet at any
            speed. At speed 1 every row moves by one offset.
        qos: The QoS of every message, 0, 1 or 2.
        progress: Show a progress line on standard error: None when it is a terminal.
        loop: Start again from the first row after the last, until `stop()`.

    Raises:
        ConfigError: `speed` is not a positive number, or `qos` is not 0, 1 or 2.
    """

    def __init__(
        self,
        source: str | Path | StorePath,
        *,
        settings: Settings | None = None,
        broker_url: str | None = None,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        speed: float = 1.0,
        max_speed: bool = False,
        devices: Iterable[str] | None = None,
        metrics: Iterable[str] | None = None,
        shift_to_now: bool = False,
        qos: int = 0,
        progress: bool | None = None,
        loop: bool = False,
    ) -> None:
        if isinstance(speed, bool) or not isinstance(speed, int | float) or not speed > 0:
            raise ConfigError(
                f"speed={speed!r} must be a positive number", hint="use 1 for the recorded pace"
            )
        if not math.isfinite(speed):
            raise ConfigError(f"speed={speed!r} is not finite", hint="use max_speed=True instead")
        if qos not in (0, 1, 2):
            raise ConfigError(f"qos={qos!r} must be 0, 1 or 2")
        self.source = location(source)
        self._settings = settings
        self._broker_url = broker_url
        self._username = username
        self._password = password
        self.client_id = client_id or f"tesaiot-replay-{secrets.token_hex(4)}"
        self.speed = float(speed)
        self.max_speed = max_speed
        self._devices = devices
        self._metrics = metrics
        self.shift_to_now = shift_to_now
        self.qos = qos
        self._progress = progress
        self.loop = loop

        self._plan: MessagePlan | None = None
        self._publisher: Publisher | None = None
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._result: ReplayResult | None = None
        self._error: BaseException | None = None
        # (shift, monotonic start, rows) of a first message the publish check delivered
        self._sent_first: tuple[int, float, int] | None = None

    def __repr__(self) -> str:
        pace = "max speed" if self.max_speed else f"speed={self.speed:g}"
        state = "running" if self.running else "idle"
        return f"Replayer({str(self.source)!r}, {pace}, qos={self.qos}, {state})"

    @property
    def running(self) -> bool:
        """Whether the background replay thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def result(self) -> ReplayResult | None:
        """What was published, once the replay has ended; None before."""
        return self._result

    @property
    def error(self) -> BaseException | None:
        """The error that ended a background replay, if any."""
        return self._error

    def run(self) -> ReplayResult:
        """Load, connect and publish in this thread; return when done.

        Returns:
            What was published.

        Raises:
            FileNotFoundError: Nothing is at `source`.
            NotARecordingError: `source` is not a recording.
            TokenError: No settings were given, the environment has no valid token, and no
                `username` and `password` were given.
            AuthError: The broker refused the credentials, or refused the first message
                (a read-only token; checked before anything else is published).
            TLSError: The broker's certificate could not be verified.
            ConnectError: The broker cannot be reached, or QoS 1/2 messages were not all
                acknowledged within 30 s of the last publish.
            ConnectTimeoutError: The broker did not answer in time.
        """
        self._prepare()
        return self._publish_all()

    def start(self) -> Replayer:
        """Load and connect in this thread, then publish on a background (daemon) thread.

        Returns:
            The replayer itself.

        Raises:
            FileNotFoundError: Nothing is at `source`.
            NotARecordingError: `source` is not a recording.
            TokenError: No settings were given, the environment has no valid token, and no
                `username` and `password` were given.
            AuthError: The broker refused the credentials, or refused the first message
                (a read-only token; checked before anything else is published).
            TLSError: The broker's certificate could not be verified.
            ConnectError: The broker cannot be reached.
            ConnectTimeoutError: The broker did not answer in time.
        """
        if self.running:
            return self
        self._prepare()
        self._halt.clear()
        self._thread = threading.Thread(
            target=self._run_background, name=f"tesaiot-replay-{self.client_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> ReplayResult | None:
        """Stop publishing, wait for QoS 1/2 acknowledgements (up to 30 s), disconnect.

        Idempotent.

        Returns:
            What was published, or None when nothing was started.
        """
        self._halt.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._disconnect()
        return self._result

    def wait(self, timeout: float | None = None) -> ReplayResult | None:
        """Wait for a background replay to end.

        Args:
            timeout: Seconds to wait at most; None waits as long as it takes.

        Returns:
            What was published, or None when it still runs after `timeout`.

        Raises:
            TesaiotError: The error that ended the replay.
        """
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return None
        if self._error is not None:
            raise self._error
        return self._result

    # ----------------------------------------------------------------- internals

    def _prepare(self) -> None:
        if self._plan is None:
            frame = load_recording(self.source, devices=self._devices, metrics=self._metrics)
            if self.shift_to_now and not self.max_speed and self.speed != 1.0 and len(frame):
                frame = _on_replay_clock(frame, self.speed)
            self._plan = MessagePlan(frame)
            del frame
            logger.info(
                "replaying %s: %d rows over %.1f s",
                self.source,
                self._plan.rows,
                self._plan.span_ns / _NS,
            )
        if self._plan.rows and self._publisher is None:
            self._connect()
            self._check_may_publish()

    def _shift_ns(self, plan: MessagePlan) -> int:
        return time.time_ns() - int(plan.timestamp[0]) if self.shift_to_now else 0

    def _check_may_publish(self) -> None:
        # The first message goes as the check: a read-only account fails here, before any
        # message, and an allowed one has it delivered (the pass goes on from the second).
        plan, publisher = self._plan, self._publisher
        assert plan is not None
        assert publisher is not None
        shift = self._shift_ns(plan)
        started = time.monotonic()
        first = next(iter(plan.messages(shift_ns=shift)), None)
        try:
            if first is not None and publisher.check_may_publish(first.topic, first.payload):
                self._sent_first = (shift, started, first.rows)
        except BaseException:
            self._disconnect()
            raise

    def _run_background(self) -> None:
        try:
            self._publish_all()
        except BaseException as exc:  # kept for wait(); a daemon thread has nobody to tell
            self._error = exc
            logger.exception("the replay of %s stopped", self.source)
        finally:
            self._disconnect()

    def _publish_all(self) -> ReplayResult:
        plan = self._plan
        assert plan is not None
        if not plan.rows:
            logger.warning("%s holds no rows to replay", self.source)
            self._result = ReplayResult(0, 0, 0.0, 0.0, None if self.max_speed else self.speed)
            return self._result
        publisher = self._publisher
        assert publisher is not None
        publish, pause = publisher.publish, publisher.pause
        progress = _Progress(plan.rows, self._progress)
        skipped: dict[str, int] = {}
        rows = dropped = passes = pass_rows = 0
        delivered = [0, 0]  # messages and rows written (QoS 0) or acknowledged (QoS 1, 2)
        unconfirmed: deque[int] = deque()  # rows of each message not yet written or acked
        base = publisher.published - publisher.completed

        def settle() -> None:
            # Messages complete in the order they were published (paho writes and the
            # broker acknowledges in order): the oldest unconfirmed are the ones done.
            while len(unconfirmed) > publisher.published - publisher.completed - base:
                delivered[0] += 1
                delivered[1] += unconfirmed.popleft()

        # From the first publish: the publish check's, when it delivered the first message.
        started = time.monotonic() if self._sent_first is None else self._sent_first[1]
        try:
            while True:
                passes += 1
                first_received = int(plan.received[0])
                sent_first, self._sent_first = self._sent_first, None
                shift, pass_started, pass_rows = sent_first or (
                    self._shift_ns(plan),
                    time.monotonic(),
                    0,
                )
                counting = skipped if passes == 1 else None
                messages = plan.messages(shift_ns=shift, skipped=counting)
                if sent_first is not None:
                    # The publish check delivered the first message: go on from the second.
                    next(messages)
                    delivered[0] += 1
                    delivered[1] += pass_rows
                    rows += pass_rows
                for message in messages:
                    if not self.max_speed:
                        due = (message.received_ns - first_received) / _NS / self.speed
                        delay = pass_started + due - time.monotonic()
                        if delay > 0 and pause(delay):
                            break
                    if self._halt.is_set():
                        break
                    if not publish(message.topic, message.payload):
                        dropped += 1
                        continue
                    unconfirmed.append(message.rows)
                    settle()
                    rows += message.rows
                    pass_rows += message.rows
                    progress.update(pass_rows)
                if not self.loop or self._halt.is_set():
                    break
                if not self.max_speed:
                    # The next pass follows after one mean gap between messages, so that a
                    # recording of one instant does not become a flood.
                    gap = plan.span_ns / _NS / max(1, len(plan.starts) - 1) or 1.0
                    period = (plan.span_ns / _NS + gap) / self.speed
                    rest = pass_started + period - time.monotonic()
                    if rest > 0 and pause(rest):
                        break
            publisher.drain(_DRAIN_TIMEOUT)
            settle()
        finally:
            progress.update(rows if passes == 1 else pass_rows, final=True)
        seconds = time.monotonic() - started
        self._result = ReplayResult(
            messages=delivered[0],
            rows=delivered[1],
            seconds=seconds,
            span=plan.span_ns / _NS,
            speed=None if self.max_speed else self.speed,
            skipped_rows=sum(skipped.values()),
            dropped=dropped + len(unconfirmed),
            passes=passes,
            stopped=self._halt.is_set(),
            skipped_by_reason=MappingProxyType(dict(sorted(skipped.items()))),
        )
        for reason, count in sorted(skipped.items()):
            logger.warning(
                "%d rows of %s were not sent (%s): %s",
                count,
                self.source,
                reason,
                SKIP_REASONS.get(reason, reason),
            )
        return self._result

    def _connection(self) -> Settings:
        url: dict[str, Any] = {} if self._broker_url is None else {"broker_url": self._broker_url}
        try:
            return Settings.resolve(self._settings, **url)
        except TokenError:
            if self._settings is not None or self._username is None or self._password is None:
                raise
            # Publishing as an account: no platform token is needed, and none is sent.
            return Settings.from_env(token=NO_TOKEN, **url)

    def _connect(self) -> None:
        publisher = Publisher(
            self._connection(),
            client_id=self.client_id,
            username=self._username,
            password=self._password,
            qos=self.qos,
            halt=self._halt,
        )
        publisher.connect()
        self._publisher = publisher

    def _disconnect(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.disconnect()


def _on_replay_clock(frame: Any, speed: float) -> Any:
    """The rows with device times paced like the replay: `t + (r - r0) * (1 / speed - 1)`.

    Args:
        frame: Rows in the canonical columns (`load_recording`'s frame).
        speed: The replay's speed-up.

    Returns:
        A new frame whose `timestamp` moved with its row's receive time: the first received
        row's is unchanged, a row received `d` after it moves by `d / speed - d`.
    """
    since_first = frame["received_at"] - frame["received_at"].min()
    return frame.assign(timestamp=frame["timestamp"] + (since_first / speed - since_first))


def replay(
    source: str | Path | StorePath,
    *,
    settings: Settings | None = None,
    broker_url: str | None = None,
    speed: float = 1.0,
    max_speed: bool = False,
    devices: Iterable[str] | None = None,
    metrics: Iterable[str] | None = None,
    shift_to_now: bool = False,
    qos: int = 0,
    progress: bool | None = None,
    username: str | None = None,
    password: str | None = None,
    client_id: str | None = None,
) -> ReplayResult:
    """Publish a recording back to a broker, as the devices sent it, and wait until done.

    Each recorded message becomes one message on `device/<id>/telemetry/<sensor_type>`
    whose payload gives back its rows exactly (see the module's notes), so recording the
    replay gives the same rows. Messages keep their recorded spacing (by `received_at`)
    divided by `speed`. The broker must let the account publish there: under MQTT 3.1.1 a
    broker drops messages its ACL denies without telling the publisher (the platform's
    read-only tokens, or the demo broker's token, cannot publish; its publisher account can).

    Example:
        >>> replay("s.parquet", broker_url="mqtt://localhost:1883", speed=10)  # doctest: +SKIP
        ReplayResult(messages=1204, rows=1530, seconds=3.1, ...)

    Args:
        source: A recording: a Parquet file, a `.parts` folder or a dataset folder.
        settings: Where to publish and how to authenticate (URL, token, CA file,
            `insecure`); None reads `Settings.from_env()`.
        broker_url: Overrides the settings' broker URL.
        speed: How many times faster than recorded; 1.0 is real time.
        max_speed: Publish as fast as the connection takes.
        devices: Only these device ids.
        metrics: Only these metrics.
        shift_to_now: Place the replay at the present: device time `t` (receive time `r`)
            becomes `now + (t - t0) + (r - r0) * (1 / speed - 1)`, the first row's (`t0`,
            `r0`) now, and each row keeps its recorded distance from its receive time, so a
            collector's `clock_skew` check (`stats.clock_skew_rows`) stays quiet at any
            speed; a device clock that was off stays as off. At speed 1 (and with
            `max_speed`, which has no pace) every row moves by one offset, spacing kept.
        qos: The QoS of every message; with 1 or 2 it returns once the broker acknowledged
            every message.
        progress: A progress line on standard error: None shows it when that is a terminal.
        username: Publish as this account instead of the token.
        password: Its password (default: the token).
        client_id: The MQTT client id; default `tesaiot-replay-<random>`.

    Returns:
        What was delivered (written, or acknowledged with QoS 1 and 2): messages, rows,
        seconds, the recorded span, the rows skipped by reason and the messages dropped.

    Raises:
        FileNotFoundError: Nothing is at `source`.
        NotARecordingError: `source` is not a recording (a rejects sidecar, a CSV).
        ConfigError: `speed` or `qos` is out of range, or a setting is bad.
        TokenError: `settings` is None, the environment has no valid token, and no
            `username` and `password` were given.
        AuthError: The broker refused the credentials, or refused the first message (a
            read-only token): checked before anything else is published.
        TLSError: The broker's certificate could not be verified.
        ConnectError: The broker cannot be reached, or QoS 1/2 messages were not all
            acknowledged within 30 s of the last publish.
        ConnectTimeoutError: The broker did not answer in time.
    """
    replayer = Replayer(
        source,
        settings=settings,
        broker_url=broker_url,
        username=username,
        password=password,
        client_id=client_id,
        speed=speed,
        max_speed=max_speed,
        devices=devices,
        metrics=metrics,
        shift_to_now=shift_to_now,
        qos=qos,
        progress=progress,
    )
    try:
        return replayer.run()
    finally:
        replayer.stop()
