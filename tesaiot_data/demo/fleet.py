"""Simulated devices that publish TESAIoT-style telemetry, for the demo, notebooks and tests.

The stream is reproducible: the device ids and every value, shape and malformed message come
from `random.Random(seed)`; only the timestamps follow the clock (the wall clock by default).
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from tesaiot_data.demo.broker import PublisherConfig
from tesaiot_data.errors import ConfigError, ConnectError, ConnectTimeoutError
from tesaiot_data.mqtt.connection import PahoClient, configured_client, connack_refusal
from tesaiot_data.mqtt.publisher import publish_message
from tesaiot_data.settings import BrokerURL

__all__ = ["SENSORS", "DeviceFleet"]

logger = logging.getLogger(__name__)

#: The sensors of a device, each on `device/<id>/telemetry/<sensor>`.
SENSORS = ("temperature", "humidity", "pressure", "motion", "battery")
_UNITS = {
    "temperature": "celsius",
    "humidity": "percent",
    "pressure": "hPa",
    "motion": "count",
    "battery": "volt",
}
_DIGITS = {"temperature": 2, "humidity": 1, "pressure": 2, "motion": 0, "battery": 3}
# Shares of the payload shapes when mixed_shapes is on (cumulative upper bounds); the rest,
# 5 %, is the nested DPS368 shape.
_STANDARD, _STANDARD_EPOCH, _FLAT = 0.85, 0.88, 0.95
_EPOCH_SHARE = 1 / 3  # of flat and nested payloads, which carry epoch-millisecond timestamps
_AI_SHARE = 0.25  # of flat payloads, which carry an "ai_prediction" string
_ANOMALY_SHARE = 0.1  # of those
_MOTION_SHARE = 0.05
_BATTERY_FULL = 4.2
_BATTERY_EMPTY = 3.3
_DAY = 86_400.0
_CONNECT_TIMEOUT = 10.0
_DRAIN_TIMEOUT = 10.0


class _Device:
    __slots__ = ("base_humidity", "base_pressure", "base_temperature", "battery", "id", "next")

    def __init__(self, device_id: str, rng: random.Random) -> None:
        self.id = device_id
        self.base_temperature = rng.uniform(22.0, 28.0)
        self.base_humidity = rng.uniform(45.0, 65.0)
        self.base_pressure = 1013.25 + rng.uniform(-6.0, 6.0)
        self.battery = _BATTERY_FULL - rng.uniform(0.0, 0.05)
        self.next = rng.randrange(len(SENSORS))


class DeviceFleet:
    """Simulated devices that publish telemetry over plain MQTT, paced or on demand.

    Example:
        >>> with DeviceFleet(broker.publisher(), devices=3, rate=20) as fleet:  # doctest: +SKIP
        ...     ...

    Args:
        publisher: Where and as whom to publish, from `LocalBroker.publisher()`.
        devices: How many devices.
        rate: Messages per second for the whole fleet, once `start()`ed.
        seed: Seeds the device ids and the values, shapes and malformed messages.
        malformed: The share of messages that are broken: not JSON, invalid UTF-8, empty or
            `{}`.
        mixed_shapes: Mix in the other payload shapes seen on the platform (about 15 %): flat
            multi-sensor payloads on `.../telemetry/env`, nested DPS368 payloads on
            `.../telemetry`, epoch-millisecond timestamps and `ai_prediction` strings.
            Otherwise every payload is `{"value": ..., "unit": ..., "timestamp": ...}`.
        qos: The QoS of every message. With 1 or 2, messages published while the broker is
            away are kept and sent when it is back.
        client_id: The MQTT client id; a random one by default.
        clock: Returns the time stamped on each message, in seconds since the epoch
            (`time.time` by default); a fixed clock makes the payloads reproducible.
        silent_after: Devices that go silent: device id (or index in `device_ids`) ->
            seconds after the fleet's start (or its first message) from which that device
            sends nothing more. Its turns are skipped, so the other devices keep their pace
            and the fleet sends fewer messages than `rate`.

    Raises:
        ConfigError: An option is out of range.
    """

    def __init__(
        self,
        publisher: PublisherConfig,
        *,
        devices: int = 5,
        rate: float = 10.0,
        seed: int = 0,
        malformed: float = 0.0,
        mixed_shapes: bool = True,
        qos: int = 0,
        client_id: str | None = None,
        clock: Callable[[], float] = time.time,
        silent_after: Mapping[str | int, float] | None = None,
    ) -> None:
        if devices < 1:
            raise ConfigError(f"devices={devices!r} must be at least 1")
        if not rate > 0:
            raise ConfigError(f"rate={rate!r} must be a positive number of messages per second")
        if not 0.0 <= malformed <= 1.0:
            raise ConfigError(f"malformed={malformed!r} must be a share between 0 and 1")
        if qos not in (0, 1, 2):
            raise ConfigError(f"qos={qos!r} must be 0, 1 or 2")
        self._publisher = publisher
        self.rate = float(rate)
        self.malformed = float(malformed)
        self.mixed_shapes = mixed_shapes
        self.qos = qos
        self.client_id = client_id or f"tesaiot-fleet-{secrets.token_hex(4)}"
        self._clock = clock
        self._rng = random.Random(seed)
        self.device_ids: list[str] = [
            str(uuid.UUID(int=self._rng.getrandbits(128), version=4)) for _ in range(devices)
        ]
        self._devices = [_Device(device_id, self._rng) for device_id in self.device_ids]
        self._silent_after = self._silences(silent_after or {})
        self._epoch: float | None = None  # monotonic time of the start or first message
        self._turn = 0
        self._iso_second = -1
        self._iso_prefix = ""

        #: Messages handed to paho: sent, or (QoS > 0) kept to send after a reconnect.
        self.published = 0
        #: How many of `published` were malformed on purpose.
        self.malformed_published = 0
        #: QoS 0 messages paho dropped because the broker was away.
        self.dropped = 0
        self._completed = 0  # written to the socket (QoS 0) or acknowledged (QoS > 0)
        self._done = threading.Condition()
        self._lock = threading.Lock()  # one message stream, whichever thread publishes
        self._client: PahoClient | None = None
        self._connack = threading.Event()
        self._refused: ConnectError | None = None
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()

    def _silences(self, silent_after: Mapping[str | int, float]) -> dict[int, float]:
        silences: dict[int, float] = {}
        for key, seconds in silent_after.items():
            if isinstance(key, int) and not isinstance(key, bool):
                if not 0 <= key < len(self.device_ids):
                    raise ConfigError(
                        f"silent_after: device index {key} is not below devices="
                        f"{len(self.device_ids)}"
                    )
                index = key
            elif key in self.device_ids:
                index = self.device_ids.index(str(key))
            else:
                raise ConfigError(
                    f"silent_after: {key!r} is not one of this fleet's devices",
                    hint="use an index (0 for the first device) or an id from fleet.device_ids",
                )
            if isinstance(seconds, bool) or not (
                isinstance(seconds, int | float) and 0 <= seconds < math.inf
            ):
                raise ConfigError(f"silent_after[{key!r}]={seconds!r} must be seconds >= 0")
            silences[index] = float(seconds)
        return silences

    def _silenced(self, index: int) -> bool:
        after = self._silent_after.get(index)
        if after is None:
            return False
        if self._epoch is None:
            self._epoch = time.monotonic()
        return time.monotonic() - self._epoch >= after

    def __repr__(self) -> str:
        state = "running" if self.running else "idle"
        return (
            f"DeviceFleet(devices={len(self.device_ids)}, rate={self.rate:g}, qos={self.qos}, "
            f"published={self.published}, {state})"
        )

    def __enter__(self) -> DeviceFleet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the paced publishing thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> DeviceFleet:
        """Connect, then publish `rate` messages per second from a background thread.

        Returns:
            The fleet itself. Does nothing more if it already runs.

        Raises:
            ConnectError: The broker cannot be reached.
            AuthError: The broker refused the publisher account.
            ConnectTimeoutError: The broker did not answer in time.
        """
        if self.running:
            return self
        self._connect()
        if self._epoch is None:
            self._epoch = time.monotonic()
        self._halt.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"tesaiot-fleet-{self.client_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop publishing and disconnect. Idempotent.

        Waits (up to 10 s) until the broker has acknowledged every QoS 1/2 message, including
        those kept while it was away.
        """
        thread, self._thread = self._thread, None
        if thread is not None:
            self._halt.set()
            thread.join()
        client, self._client = self._client, None
        if client is None:
            return
        if self.qos > 0 and not self._wait_completed(self.published, _DRAIN_TIMEOUT):
            logger.warning(
                "fleet %s stopped with %d of %d QoS %d messages unacknowledged",
                self.client_id,
                self.published - self._completed,
                self.published,
                self.qos,
            )
        client.disconnect()
        client.loop_stop()

    def publish(self, count: int, *, timeout: float = 10.0) -> int:
        """Publish `count` messages now, as fast as possible; connect first if needed.

        Returns once every message is written to the socket (QoS 0) or acknowledged by the
        broker (QoS 1/2).

        Args:
            count: How many messages (turns, one device after the other).
            timeout: Seconds to wait for the messages to go out.

        Returns:
            How many were published: `count`, less the turns of devices gone silent (see
            `silent_after`).

        Raises:
            ConfigError: `count` is negative.
            ConnectError: Not connected, so QoS 0 messages were dropped.
            ConnectTimeoutError: Not all messages went out within `timeout`.
        """
        if count < 0:
            raise ConfigError(f"count={count!r} must not be negative")
        self._connect()
        dropped_before = self.dropped
        with self._lock:
            published_before = self.published
            self._emit(count)
            target = self.published
        if self.dropped > dropped_before:
            raise ConnectError(
                f"{self.dropped - dropped_before} QoS 0 messages were dropped: not connected",
                hint="use qos=1 to keep messages while the broker is away",
            )
        if not self._wait_completed(target, timeout):
            raise ConnectTimeoutError(
                f"only {self._completed} of {target} messages went out within {timeout:g} s"
            )
        return target - published_before

    def _wait_completed(self, target: int, timeout: float) -> bool:
        # Messages complete in the order they were published, so a count is enough.
        with self._done:
            return self._done.wait_for(lambda: self._completed >= target, timeout)

    def _connect(self) -> None:
        if self._client is not None:
            return
        config = self._publisher
        # No queue limit: every QoS > 0 message is kept while the broker is away.
        client = configured_client(
            BrokerURL("mqtt", config.host, config.port),
            client_id=self.client_id,
            username=config.username,
            password=config.password,
            connect_timeout=_CONNECT_TIMEOUT,
        )
        # Reconnect within a fraction of a second of a broker restart; paho types the
        # delays as int but sleeps for floats.
        client.reconnect_delay_set(min_delay=0.1, max_delay=2)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._connack.clear()
        self._refused = None
        try:
            client.connect(config.host, config.port, keepalive=30)
        except OSError as exc:
            raise ConnectError(
                f"the fleet cannot reach the broker at {config.host}:{config.port}: {exc}",
                hint="start the LocalBroker first",
            ) from exc
        client.loop_start()
        if not self._connack.wait(_CONNECT_TIMEOUT) or self._refused is not None:
            client.disconnect()
            client.loop_stop()
            if self._refused is None:
                raise ConnectTimeoutError(
                    f"the broker at {config.host}:{config.port} did not answer the fleet's "
                    f"CONNECT within {_CONNECT_TIMEOUT:g} s"
                )
            raise self._refused
        with self._done:
            # Whatever an earlier connection left unacknowledged went with its client.
            self._completed = self.published
        self._client = client
        logger.info("fleet %s connected to %s:%d", self.client_id, config.host, config.port)

    def _on_connect(
        self, _client: PahoClient, _userdata: Any, _flags: Any, reason: Any, *_: Any
    ) -> None:
        refused = connack_refusal(
            reason,
            broker="the broker",
            who=f"the fleet's account {self._publisher.username!r}",
            hint="use the PublisherConfig from LocalBroker.publisher()",
        )
        if refused is not None:
            self._refused = refused
        elif self._connack.is_set():
            logger.info("fleet %s reconnected", self.client_id)
        self._connack.set()

    def _on_disconnect(self, _client: PahoClient, _userdata: Any, *args: Any) -> None:
        if self._client is not None:
            logger.info("fleet %s lost its connection; reconnecting", self.client_id)

    def _on_publish(self, *_args: Any) -> None:
        with self._done:
            self._completed += 1
            self._done.notify_all()

    def _run(self) -> None:
        started = time.monotonic()
        sent = 0
        burst = max(1, int(self.rate))  # catch up at most one second's worth at once
        while not self._halt.is_set():
            due = int((time.monotonic() - started) * self.rate) + 1 - sent
            if due > burst:
                # Stalled for long (a suspended laptop): skip ahead rather than flood.
                logger.debug("fleet %s skips %d late messages", self.client_id, due - burst)
                sent += due - burst
                due = burst
            if due > 0:
                try:
                    with self._lock:
                        self._emit(due)
                except Exception:
                    logger.exception("fleet %s stopped publishing", self.client_id)
                    return
                sent += due
            self._halt.wait(max(0.0, started + sent / self.rate - time.monotonic()))

    def _emit(self, count: int) -> None:
        client = self._client
        assert client is not None
        qos = self.qos
        for _ in range(count):
            message = self._next_message(self._clock())
            if message is None:
                continue
            topic, payload, broken = message
            if not publish_message(client, topic, payload, qos):
                self.dropped += 1  # QoS 0 while the broker is away
                continue
            self.published += 1
            if broken:
                self.malformed_published += 1

    def take(self, count: int) -> list[tuple[str, bytes]]:
        """Take the next `count` messages of the stream without sending them.

        For senders other than paho (`tesaiot_data.demo.flood`): the messages count as
        published, the malformed ones as `malformed_published`. All are stamped with the
        clock's time of this call.

        Args:
            count: How many messages.

        Returns:
            (topic, payload) pairs, in stream order; fewer than `count` when devices went
            silent (see `silent_after`).
        """
        now = self._clock()
        out: list[tuple[str, bytes]] = []
        with self._lock:
            for _ in range(count):
                message = self._next_message(now)
                if message is None:
                    continue
                topic, payload, broken = message
                out.append((topic, payload))
                if broken:
                    self.malformed_published += 1
            self.published += len(out)
        return out

    def _iso(self, epoch_ms: int) -> str:
        second, milli = divmod(epoch_ms, 1000)
        if second != self._iso_second:
            self._iso_second = second
            self._iso_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f'"{self._iso_prefix}.{milli:03d}Z"'

    def _next_message(self, now: float) -> tuple[str, bytes, bool] | None:
        """Return the next (topic, payload, malformed) of the stream, stamped `now`.

        None when it is the turn of a device that went silent.
        """
        rng = self._rng
        turn = self._turn
        device = self._devices[turn]
        self._turn = (turn + 1) % len(self._devices)
        if self._silent_after and self._silenced(turn):
            return None
        prefix = f"device/{device.id}/telemetry"
        if self.malformed and rng.random() < self.malformed:
            sensor = SENSORS[device.next]
            device.next = (device.next + 1) % len(SENSORS)
            return f"{prefix}/{sensor}", self._malformed_payload(rng, sensor), True

        # Rounded, not truncated: 1765276245.123 is 1765276245.12299990654 as a float.
        epoch_ms = round(now * 1000)
        shape = rng.random() if self.mixed_shapes else 0.0
        if shape < _STANDARD_EPOCH:
            stamp = self._iso(epoch_ms) if shape < _STANDARD else str(epoch_ms)
            sensor = SENSORS[device.next]
            device.next = (device.next + 1) % len(SENSORS)
            value = self._reading(device, sensor, now, rng)
            payload = (
                f'{{"value": {value:.{_DIGITS[sensor]}f}, "unit": "{_UNITS[sensor]}", '
                f'"timestamp": {stamp}}}'
            )
            return f"{prefix}/{sensor}", payload.encode(), False

        stamp = str(epoch_ms) if rng.random() < _EPOCH_SHARE else self._iso(epoch_ms)
        temperature = self._reading(device, "temperature", now, rng)
        if shape < _FLAT:
            humidity = self._reading(device, "humidity", now, rng)
            battery = self._reading(device, "battery", now, rng)
            extra = ""
            if rng.random() < _AI_SHARE:
                label = "anomaly" if rng.random() < _ANOMALY_SHARE else "normal"
                extra = f', "ai_prediction": "{label}"'
            payload = (
                f'{{"timestamp": {stamp}, "temperature": {temperature:.2f}, '
                f'"humidity": {humidity:.1f}, "battery": {battery:.3f}{extra}}}'
            )
            return f"{prefix}/env", payload.encode(), False
        pressure = self._reading(device, "pressure", now, rng)
        payload = (
            f'{{"timestamp": {stamp}, "device_id": "{device.id}", "sensor_type": "DPS368", '
            f'"data": {{"pressure": {pressure:.2f}, "temperature": {temperature:.2f}}}}}'
        )
        return prefix, payload.encode(), False

    @staticmethod
    def _reading(device: _Device, sensor: str, now: float, rng: random.Random) -> float:
        if sensor == "temperature":
            # A daily cycle peaking at 15:00 UTC, plus sensor noise.
            day = math.sin(2 * math.pi * ((now % _DAY) / _DAY - 0.375))
            return device.base_temperature + 4.0 * day + rng.gauss(0.0, 0.3)
        if sensor == "humidity":
            # Drier in the warm afternoon.
            day = math.sin(2 * math.pi * ((now % _DAY) / _DAY - 0.375))
            return min(100.0, max(0.0, device.base_humidity - 8.0 * day + rng.gauss(0.0, 1.5)))
        if sensor == "pressure":
            return device.base_pressure + rng.gauss(0.0, 0.3)
        if sensor == "motion":
            return 1.0 if rng.random() < _MOTION_SHARE else 0.0
        device.battery = max(_BATTERY_EMPTY, device.battery - rng.uniform(0.0, 0.001))
        return device.battery + rng.gauss(0.0, 0.002)

    @staticmethod
    def _malformed_payload(rng: random.Random, sensor: str) -> bytes:
        kind = rng.randrange(4)
        if kind == 0:
            return f"{sensor}={rng.uniform(0, 100):.1f} (not JSON)".encode()
        if kind == 1:
            return b'{"value": \xff\xfe' + bytes([rng.randrange(0x80, 0x100)]) + b"}"
        if kind == 2:
            return b""
        return b"{}"
