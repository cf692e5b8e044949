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
`Infinity` that the parser accepts. A sensor type that cannot be a topic level (it holds
`+`, `#` or an empty level; only a payload's `sensor_type` can give one) is sent on
`device/<id>/telemetry` with the payload's `sensor_type`.

Two kinds of row do not come back the same, and are counted rather than sent wrongly:
a metric named like a key the parser never reads as a metric (`timestamp`, `ts`, `time`,
`device_id`, `sensor_type`, `unit`, `value`) that differs from its sensor type, and a device
id that cannot be a topic level. A text that is exactly a JSON number (`"25.5"`, recorded
with `numeric_strings=False`) comes back as a number to a collector with the default options.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import secrets
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import paho.mqtt.client as mqtt

from tesaiot_data.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    ConnectTimeoutError,
    TesaiotError,
    TokenError,
)
from tesaiot_data.files.parquet import load_recording
from tesaiot_data.mqtt._paho import AUTH_REFUSED, new_client, reason_code, reason_text
from tesaiot_data.mqtt._paho import set_connect_timeout as _set_connect_timeout
from tesaiot_data.mqtt.client import connect_error, ssl_context
from tesaiot_data.parse.rows import _RESERVED
from tesaiot_data.settings import BrokerURL, Settings

__all__ = ["ReplayMessage", "ReplayResult", "Replayer", "messages_of", "replay"]

logger = logging.getLogger(__name__)

_NS = 1_000_000_000
_ROWS_PER_MESSAGE = 1_000  # well under the collector's default max_rows_per_message
_CHUNK_ROWS = 50_000  # rows turned into Python objects at a time
_BACKLOG = 5_000  # messages handed to paho but not yet written (QoS 0) or acknowledged
_INFLIGHT = 100  # QoS 1/2 messages awaiting their acknowledgement at once
_LOOP_EVERY = 20  # messages published between two turns of the network loop
_LOOP_TIMEOUT = 0.1  # seconds one turn of the network loop may wait
_RECONNECT_DELAY = 1.0
_DRAIN_TIMEOUT = 30.0
_PROGRESS_EVERY = 0.2
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Keys the parser never reads as a metric, and `value`, which it reads as the enclosing
# object's own metric: such metrics can only come back as a sensor type's top-level value.
_NOT_A_KEY = _RESERVED | {"value"}
#: Stands in for the platform token when publishing with a username and password; never sent.
NO_TOKEN = "tesa_mqtt_none_" + "0" * 32
_TOKEN_HINT = "check the token (MQTT_API_TOKEN) or the username and password that publish"


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay published.

    Args:
        messages: Messages published: written to the socket (QoS 0) or acknowledged by the
            broker (QoS 1 and 2).
        rows: Recorded rows those messages carry.
        seconds: Wall time from the first publish to the last acknowledgement, in seconds.
        span: The recording's span by receive time (last `received_at` minus first), in
            seconds; with `loop`, per pass.
        speed: The speed-up over the recorded pace; None when published as fast as possible.
        skipped_rows: Rows no message can reproduce (see the module's notes), not sent.
        dropped: QoS 0 messages lost because the connection was down.
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

    @property
    def rate(self) -> float:
        """Messages per second over `seconds` (0.0 when nothing was timed)."""
        return self.messages / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ReplayMessage:
    """One message of a replay.

    Args:
        topic: `device/<id>/telemetry/<sensor_type>` (or `device/<id>/telemetry`).
        payload: UTF-8 JSON.
        received_ns: When the rows it carries were received, epoch nanoseconds UTC.
        rows: How many recorded rows it carries.
    """

    topic: str
    payload: bytes
    received_ns: int
    rows: int


# --- rows -> messages ---------------------------------------------------------------------


class _Plan:
    """A recording's columns in replay order (by receive time), with its messages' bounds."""

    def __init__(self, frame: Any) -> None:
        order = np.argsort(_ns(frame["received_at"]), kind="stable")
        self.rows = len(order)
        self.timestamp = _ns(frame["timestamp"])[order]
        self.received = _ns(frame["received_at"])[order]
        names: dict[str, list[str | None]] = {}
        codes: dict[str, np.ndarray] = {}
        for column in ("device_id", "sensor_type", "metric", "unit", "value_text"):
            categorical = frame[column].astype("category").array
            names[column] = [str(name) for name in categorical.categories]
            codes[column] = np.asarray(categorical.codes)[order]
        self.names = names
        self.codes = codes
        self.value = np.asarray(frame["value"], dtype=np.float64)[order]
        if self.rows:
            same = (
                (codes["device_id"][1:] == codes["device_id"][:-1])
                & (codes["sensor_type"][1:] == codes["sensor_type"][:-1])
                & (self.timestamp[1:] == self.timestamp[:-1])
                & (self.received[1:] == self.received[:-1])
            )
            self.starts = np.flatnonzero(np.concatenate(([True], ~same)))
        else:
            self.starts = np.zeros(0, dtype=np.int64)
        self.span_ns = int(self.received[-1] - self.received[0]) if self.rows else 0

    def messages(
        self, *, shift_ns: int = 0, skipped: list[int] | None = None
    ) -> Iterator[ReplayMessage]:
        """Yield the messages in order; rows no message can reproduce go to `skipped[0]`."""
        encoder = _Encoder(self.names)
        bounds = np.append(self.starts, self.rows)
        group = 0
        groups = len(self.starts)
        while group < groups:
            # A chunk of whole messages, turned into Python objects at once.
            last = int(np.searchsorted(bounds, bounds[group] + _CHUNK_ROWS, side="right")) - 1
            last = max(last, group + 1)
            low, high = int(bounds[group]), int(bounds[last])
            columns = (
                self.codes["metric"][low:high].tolist(),
                self.value[low:high].tolist(),
                self.codes["unit"][low:high].tolist(),
                self.codes["value_text"][low:high].tolist(),
            )
            for index in range(group, last):
                start, end = int(bounds[index]), int(bounds[index + 1])
                yield from encoder.encode(
                    int(self.codes["device_id"][start]),
                    int(self.codes["sensor_type"][start]),
                    timestamp_ns=int(self.timestamp[start]) + shift_ns,
                    received_ns=int(self.received[start]),
                    columns=columns,
                    rows=range(start - low, end - low),
                    skipped=skipped,
                )
            group = last


def _ns(column: Any) -> np.ndarray:
    values = column.array
    asi8 = getattr(values, "asi8", None)
    if asi8 is not None:
        return np.asarray(asi8, dtype=np.int64)
    return np.asarray(column.astype("datetime64[ns, UTC]").array.asi8, dtype=np.int64)


def _topic_level_ok(text: str) -> bool:
    return "" not in text.split("/") and not any(char in text for char in "+#\x00")


class _Encoder:
    """Turns the rows of one recorded message into the payloads that give them back."""

    def __init__(self, names: dict[str, list[str | None]]) -> None:
        self.devices = names["device_id"]
        self.sensors = names["sensor_type"]
        self.metrics = names["metric"]
        self.units = names["unit"]
        self.texts = names["value_text"]
        self._topics: dict[tuple[int, int], tuple[str, str | None] | None] = {}
        self._second = -1
        self._prefix = ""

    def _topic(self, device: int, sensor: int) -> tuple[str, str | None] | None:
        """(topic, sensor_type for the payload or None); None when the device cannot be sent."""
        key = (device, sensor)
        try:
            return self._topics[key]
        except KeyError:
            pass
        device_id, sensor_type = self.devices[device], self.sensors[sensor]
        found: tuple[str, str | None] | None
        if device_id is None or "/" in device_id or not _topic_level_ok(device_id):
            found = None
        elif sensor_type is not None and _topic_level_ok(sensor_type):
            found = (f"device/{device_id}/telemetry/{sensor_type}", None)
        else:
            found = (f"device/{device_id}/telemetry", sensor_type)
        self._topics[key] = found
        return found

    def iso(self, ns: int) -> str:
        """Epoch nanoseconds as `YYYY-MM-DDTHH:MM:SS.fffffffffZ`, exactly."""
        second, nanos = divmod(ns, _NS)
        if second != self._second:
            self._second = second
            moment = _EPOCH + timedelta(seconds=second)
            self._prefix = moment.replace(tzinfo=None).isoformat(timespec="seconds")
        return f"{self._prefix}.{nanos:09d}Z"

    def encode(
        self,
        device: int,
        sensor: int,
        *,
        timestamp_ns: int,
        received_ns: int,
        columns: tuple[list[int], list[float], list[int], list[int]],
        rows: range,
        skipped: list[int] | None,
    ) -> Iterator[ReplayMessage]:
        where = self._topic(device, sensor)
        if where is None:
            if skipped is not None:
                skipped[0] += len(rows)
            return
        sensor_type = self.sensors[sensor] or ""
        place = (*where, sensor_type)
        metric_codes, values, unit_codes, text_codes = columns
        stamp = self.iso(timestamp_ns)
        batch: list[tuple[str, float | str, str | None]] = []
        seen: set[str] = set()
        for row in rows:
            metric = self.metrics[metric_codes[row]] or ""
            if metric != sensor_type and metric in _NOT_A_KEY:
                if skipped is not None:
                    skipped[0] += 1
                continue
            if metric in seen or len(batch) >= _ROWS_PER_MESSAGE:
                # A JSON object holds a key once: the rest goes in the next message.
                yield self._message(place, stamp, received_ns, batch)
                batch, seen = [], set()
            seen.add(metric)
            text_code = text_codes[row]
            unit_code = unit_codes[row]
            value: float | str = (self.texts[text_code] or "") if text_code >= 0 else values[row]
            batch.append((metric, value, self.units[unit_code] if unit_code >= 0 else None))
        if batch:
            yield self._message(place, stamp, received_ns, batch)

    @staticmethod
    def _message(
        place: tuple[str, str | None, str],
        stamp: str,
        received_ns: int,
        batch: list[tuple[str, float | str, str | None]],
    ) -> ReplayMessage:
        topic, payload_sensor, sensor_type = place
        obj: dict[str, Any]
        units = {unit for _, _, unit in batch}
        if len(batch) == 1 and batch[0][0] == sensor_type:
            _, value, unit = batch[0]
            obj = {"value": value} if unit is None else {"value": value, "unit": unit}
            obj["timestamp"] = stamp
        elif len(units) == 1 and not any(metric in _NOT_A_KEY for metric, _, _ in batch):
            (unit,) = units
            obj = {"timestamp": stamp} if unit is None else {"timestamp": stamp, "unit": unit}
            for metric, value, _ in batch:
                obj[metric] = value
        else:
            obj = {"timestamp": stamp}
            data: dict[str, Any] = {}
            for metric, value, unit in batch:
                if metric == sensor_type:
                    obj["value"] = value
                    if unit is not None:
                        obj["unit"] = unit
                else:
                    data[metric] = (
                        {"value": value} if unit is None else {"value": value, "unit": unit}
                    )
            obj["data"] = data
        if payload_sensor is not None:
            obj["sensor_type"] = payload_sensor
        return ReplayMessage(topic, _dumps(obj, batch), received_ns, len(batch))


def _dumps(obj: dict[str, Any], batch: list[tuple[str, float | str, str | None]]) -> bytes:
    if all(isinstance(value, str) or math.isfinite(value) for _, value, _ in batch):
        return orjson.dumps(obj)
    # orjson writes NaN and infinities as null; the parser reads json's NaN and Infinity.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def messages_of(frame: Any, *, shift_ns: int = 0) -> Iterator[ReplayMessage]:
    """The messages that give back a frame's rows, in the order a replay sends them.

    Args:
        frame: Rows in the canonical columns, as `load_recording()` returns them.
        shift_ns: Added to every timestamp, in nanoseconds.

    Returns:
        An iterator of messages, ordered by receive time (stable).
    """
    return _Plan(frame).messages(shift_ns=shift_ns)


# --- the publisher ------------------------------------------------------------------------


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
        shift_to_now: Move every timestamp by one offset so that the first row's (in receive
            order) is the time the replay (or, with `loop`, each pass) starts.
        qos: The QoS of every message, 0, 1 or 2.
        progress: Show a progress line on standard error: None when it is a terminal.
        loop: Start again from the first row after the last, until `stop()`.

    Raises:
        ConfigError: `speed` is not a positive number, or `qos` is not 0, 1 or 2.
    """

    def __init__(
        self,
        source: str | Path,
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
        self.source = Path(source)
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

        self._plan: _Plan | None = None
        self._client: mqtt.Client | None = None
        self._url: BrokerURL | None = None
        self._connack = False
        self._refused: Any = None
        self._reconnect_at: float | None = None  # while the connection is down
        self._masked_token = ""
        self._completed = 0
        self._published = 0
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._result: ReplayResult | None = None
        self._error: BaseException | None = None

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
            AuthError: The broker refused the credentials.
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
            AuthError: The broker refused the credentials.
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
            self._plan = _Plan(frame)
            del frame
            logger.info(
                "replaying %s: %d rows over %.1f s",
                self.source,
                self._plan.rows,
                self._plan.span_ns / _NS,
            )
        if self._plan.rows and self._client is None:
            self._connect()

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
        progress = _Progress(plan.rows, self._progress)
        skipped = [0]
        rows = dropped = passes = pass_rows = 0
        started = time.monotonic()
        try:
            while True:
                passes += 1
                first_received = int(plan.received[0])
                shift = time.time_ns() - int(plan.timestamp[0]) if self.shift_to_now else 0
                pass_started = time.monotonic()
                pass_rows = 0
                counting = skipped if passes == 1 else None
                for message in plan.messages(shift_ns=shift, skipped=counting):
                    if not self.max_speed:
                        due = (message.received_ns - first_received) / _NS / self.speed
                        delay = pass_started + due - time.monotonic()
                        if delay > 0 and self._pause(delay):
                            break
                    if self._halt.is_set():
                        break
                    if not self._publish(message):
                        dropped += 1
                        continue
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
                    if rest > 0 and self._pause(rest):
                        break
            self._drain()
        finally:
            progress.update(rows if passes == 1 else pass_rows, final=True)
        seconds = time.monotonic() - started
        self._result = ReplayResult(
            messages=self._published,
            rows=rows,
            seconds=seconds,
            span=plan.span_ns / _NS,
            speed=None if self.max_speed else self.speed,
            skipped_rows=skipped[0],
            dropped=dropped,
            passes=passes,
            stopped=self._halt.is_set(),
        )
        if skipped[0]:
            logger.warning(
                "%d rows of %s could not be sent as they were recorded (a metric named like "
                "a reserved key, or a device id that is no topic level)",
                skipped[0],
                self.source,
            )
        return self._result

    def _publish(self, message: ReplayMessage) -> bool:
        """Hand one message to paho; False when QoS 0 and the connection is down."""
        client = self._client
        assert client is not None
        while self._published - self._completed >= _BACKLOG and not self._halt.is_set():
            self._network(_LOOP_TIMEOUT)  # bounded memory: paho holds what is not yet out
        info = client.publish(message.topic, message.payload, self.qos)
        if info.rc in (mqtt.MQTT_ERR_NO_CONN, mqtt.MQTT_ERR_CONN_LOST):
            if self.qos == 0:
                return False
            info.rc = mqtt.MQTT_ERR_SUCCESS  # kept by paho, sent after the reconnect
        elif info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectError(
                f"paho refused a message: {mqtt.error_string(info.rc)}",
                hint="check that this account may publish (the platform's tokens only read)",
            )
        self._published += 1
        if self._published % _LOOP_EVERY == 0:
            self._network(0.0)  # acknowledgements, keepalive
        return True

    def _pause(self, seconds: float) -> bool:
        """Turn the network loop for `seconds`; True when `stop()` was called meanwhile."""
        deadline = time.monotonic() + seconds
        while not self._halt.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._network(min(left, _LOOP_TIMEOUT))
        return True

    def _network(self, timeout: float) -> None:
        """One turn of paho's loop in this thread: read, write, keepalive, reconnect.

        The publishing thread drives the loop itself: with paho's own loop thread, every
        publish from another thread wakes it through a socket pair, which costs more than
        the publish.
        """
        client = self._client
        assert client is not None
        if self._reconnect_at is not None:
            wait = self._reconnect_at - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, timeout))
                return
            try:
                client.reconnect()
            except Exception as exc:  # retried; the cause is logged
                assert self._url is not None
                logger.warning(
                    "replay: reconnect to %s failed: %s", self._url, connect_error(exc, self._url)
                )
                self._reconnect_at = time.monotonic() + _RECONNECT_DELAY
                return
            self._reconnect_at = None
        rc = client.loop(timeout=timeout)
        if self._refused is not None:
            raise self._refusal(self._refused)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            logger.warning("replay lost its connection to %s (%s); reconnecting", self._url, rc)
            self._reconnect_at = time.monotonic() + _RECONNECT_DELAY

    def _drain(self) -> None:
        """Wait until every message is written (QoS 0) or acknowledged (QoS 1/2)."""
        deadline = time.monotonic() + _DRAIN_TIMEOUT
        while self._completed < self._published and time.monotonic() < deadline:
            self._network(_LOOP_TIMEOUT)
        missing = self._published - self._completed
        if not missing:
            return
        if self.qos == 0:
            logger.warning("%d QoS 0 messages were not written to %s", missing, self._url)
            return
        raise ConnectError(
            f"{missing} of {self._published} QoS {self.qos} messages were not "
            f"acknowledged by {self._url} within {_DRAIN_TIMEOUT:g} s",
            hint="check the connection to the broker, and that this account may publish: a "
            "broker closes the connection of one that may not (the platform's tokens only read)",
        )

    def _connection(self) -> tuple[Settings, BrokerURL]:
        settings = self._settings
        if settings is None:
            url: dict[str, Any] = (
                {} if self._broker_url is None else {"broker_url": self._broker_url}
            )
            try:
                settings = Settings.from_env(**url)
            except TokenError:
                if self._username is None or self._password is None:
                    raise
                # Publishing as an account: no platform token is needed, and none is sent.
                settings = Settings.from_env(token=NO_TOKEN, **url)
        elif self._broker_url is not None:
            settings = settings.replace(broker_url=self._broker_url)
        return settings, settings.url

    def _connect(self) -> None:
        settings, url = self._connection()
        self._url = url
        self._masked_token = settings.masked_token
        client = new_client(self.client_id, clean_session=True, transport=url.transport)
        client.username_pw_set(
            self._username or settings.username or settings.token,
            self._password if self._password is not None else settings.token,
        )
        if url.transport == "websockets":
            client.ws_set_options(path=url.path)
        if url.tls:
            client.tls_set_context(ssl_context(settings, url))
            if settings.insecure:
                client.tls_insecure_set(True)
        _set_connect_timeout(client, settings.connect_timeout)
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(_INFLIGHT)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        self._connack = False
        self._refused = None
        logger.info("replay connecting to %s as client %s", url, self.client_id)
        try:
            client.connect(url.host, url.port, keepalive=settings.keepalive)
            deadline = time.monotonic() + settings.connect_timeout
            rc = mqtt.MQTT_ERR_SUCCESS
            while not self._connack and rc == mqtt.MQTT_ERR_SUCCESS:
                if time.monotonic() >= deadline:
                    raise ConnectTimeoutError(
                        f"{url} did not accept the connection within "
                        f"{settings.connect_timeout:g} s",
                        hint="check MQTT_BROKER_URL (host, port, path) and your network",
                    )
                rc = client.loop(timeout=_LOOP_TIMEOUT)
            if self._refused is not None:
                raise self._refusal(self._refused)
            if not self._connack:
                raise ConnectError(f"{url} closed the connection before accepting it ({rc})")
        except Exception as exc:
            with contextlib.suppress(Exception):
                client.disconnect()
            raise connect_error(exc, url) from None
        self._client = client
        self._reconnect_at = None

    def _refusal(self, reason: Any) -> TesaiotError:
        code, text = reason_code(reason), reason_text(reason)
        if code in AUTH_REFUSED:
            who = self._username or self._masked_token
            return AuthError(f"{self._url} refused the account {who}: {text}", hint=_TOKEN_HINT)
        return ConnectError(f"{self._url} refused the connection: {text}")

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()  # written at once: no loop thread runs

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, *_: Any) -> None:
        if reason_code(reason) != 0:
            self._refused = reason
        elif self._connack:
            logger.info("replay reconnected to %s", self._url)
        self._connack = True

    def _on_publish(self, *_args: Any) -> None:
        self._completed += 1  # called in the publishing thread, from paho's loop


def replay(
    source: str | Path,
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
        shift_to_now: Move every timestamp by one offset so that the first row's (in receive
            order) is now.
        qos: The QoS of every message; with 1 or 2 it returns once the broker acknowledged
            every message.
        progress: A progress line on standard error: None shows it when that is a terminal.
        username: Publish as this account instead of the token.
        password: Its password (default: the token).
        client_id: The MQTT client id; default `tesaiot-replay-<random>`.

    Returns:
        What was published: messages, rows, seconds, the recorded span, skipped rows.

    Raises:
        FileNotFoundError: Nothing is at `source`.
        NotARecordingError: `source` is not a recording (a rejects sidecar, a CSV).
        ConfigError: `speed` or `qos` is out of range, or a setting is bad.
        TokenError: `settings` is None, the environment has no valid token, and no
            `username` and `password` were given.
        AuthError: The broker refused the credentials.
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
