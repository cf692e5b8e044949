"""The subscriber: one paho-mqtt connection, its network and worker threads, and the queue between.

paho's network thread appends each message to the worker's queue (`mqtt.worker`) and the
worker thread hands batches of it to `on_batch` or to `process_telemetry()`. With a durable
inbox (`mqtt.inbox`), the network thread first writes each group to it and acknowledges the
group only after the fsync. How the connection is built, secured and its failures typed
lives in `tesaiot_data.mqtt.connection`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType, TracebackType
from typing import Any

import paho.mqtt.client as mqtt

from tesaiot_data.errors import ConnectError, ConnectTimeoutError, StreamError, TesaiotError
from tesaiot_data.messages import RawMessage
from tesaiot_data.mqtt._paho import PAHO_V2, disconnect_reason, topic_of, user_property
from tesaiot_data.mqtt.connection import (
    Backoff,
    ClientIdClash,
    client_for,
    closed_before_connack,
    connect_arguments,
    connect_error,
    suback_refusal,
    subscriber_connack,
)
from tesaiot_data.mqtt.inbox import AckAfterDisk, DurableInbox
from tesaiot_data.mqtt.stats import ClientStats, utc
from tesaiot_data.mqtt.worker import READ_AHEAD, Worker
from tesaiot_data.parse.payload import decode_payload, parse_topic
from tesaiot_data.parse.timestamps import timestamp_ns
from tesaiot_data.settings import BrokerURL, Settings

__all__ = ["BatchHandler", "ClientStats", "TESAIoTMQTTClient"]

logger = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence[RawMessage]], None]

_BUG_HINT = (
    "this is a bug in tesaiot-data: please report it with the traceback logged before it; "
    "call connect() again to resume"
)
_LOOP_TIMEOUT = 0.5  # seconds one paho loop() call may block in select()
_READ_BURST = 100  # packets read without select() after each loop() (see _network_step)
# Unacknowledged messages a durable client accepts (MQTT 5 Receive Maximum): the broker's own
# limit is lower (Mosquitto 20, EMQX 32), and a larger group shares one fsync.
_RECEIVE_MAXIMUM = 1_000


class TESAIoTMQTTClient:
    """Streams device telemetry from the TESAIoT broker (or any MQTT broker).

    Subclass it and override `process_telemetry()`, or pass `on_batch` to take messages
    in batches. Messages are handed from paho's network thread to a worker thread through
    a bounded queue, so slow processing never starves the keepalive.

    Example:
        >>> class Printer(TESAIoTMQTTClient):
        ...     def process_telemetry(self, device_id, sensor_type, data):
        ...         print(device_id, sensor_type, data)
        >>> with Printer(Settings.from_env()) as client:  # doctest: +SKIP
        ...     client.run_forever()

    Args:
        settings: Connection settings; None reads them with `Settings.from_env()`.
        on_batch: Called on the worker thread with each batch of raw messages instead of
            the per-message `process_telemetry()` path.
        queue_size: Most messages waiting for the worker; beyond it messages are dropped
            and counted, never blocking the network thread.
        reconnect_initial: First reconnect delay in seconds (doubles up to reconnect_max).
        reconnect_max: Longest reconnect delay in seconds.
        inbox: A durable inbox: QoS 1/2 messages are acknowledged to the broker only once
            written to it and fsynced (acknowledgement after the disk; paho-mqtt 2.x's
            manual acks). Meant for a persistent session, whose broker resends what was
            never acknowledged. The handler then learns how far the inbox's messages were
            handled from `handled_seq`. With paho-mqtt 1.6, which acknowledges on receipt,
            a warning says that a crash can lose the last few milliseconds of messages.
        timestamp_property: The name of an MQTT 5 user property that carries the device
            time (ISO 8601, UTC without a zone, or epoch s/ms/us/ns), for payloads without
            a timestamp: it goes into `RawMessage.device_ns`. None (the default) reads none.
        **overrides: Settings fields to change, for example `topic="device/abc/telemetry/#"`.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        on_batch: BatchHandler | None = None,
        queue_size: int = 200_000,
        reconnect_initial: float = 1.0,
        reconnect_max: float = 60.0,
        inbox: DurableInbox | None = None,
        timestamp_property: str | None = None,
        **overrides: Any,
    ) -> None:
        self.settings = settings = Settings.resolve(settings, **overrides)
        self._url: BrokerURL = settings.url
        self._on_batch = on_batch
        self._queue_size = queue_size
        self._backoff = Backoff(initial=reconnect_initial, maximum=reconnect_max)

        self._worker = Worker(self._handle_batch)
        self._queue = self._worker.queue  # the network thread appends here
        self._received = 0
        self._processed = 0
        self._failed = 0
        self._rejected = 0
        self._dropped = 0
        self._reconnects = 0
        self._connected_at: float | None = None
        self._last_message_at: int | None = None  # epoch ns
        self._ever_connected = False
        self._clash = ClientIdClash(url=self._url, client_id=settings.client_id)

        self._ready = threading.Event()  # first CONNACK+SUBACK, or a failure
        self._stopping = threading.Event()
        self._network_done = threading.Event()
        self._error: TesaiotError | None = None
        self._subscribe_mid: int | None = None
        self._needs_reconnect = False
        self._network_thread: threading.Thread | None = None
        self._worker_thread: threading.Thread | None = None
        self._mqtt = self._make_paho_client()
        self._timestamp_property = timestamp_property or None
        self._committer: AckAfterDisk | None = None
        self._handled_base: int | None = None
        if inbox is not None:
            self._committer = AckAfterDisk(
                inbox,
                deliver=self._worker.put_many,
                ack=self._mqtt.ack if PAHO_V2 else lambda _mid, _qos: None,
                can_take=lambda: len(self._queue) < self._queue_size,
            )
            self._handled_base = inbox.next_seq - 1
            if PAHO_V2:
                self._mqtt.manual_ack_set(True)
            else:
                logger.warning(
                    "paho-mqtt 1.6 acknowledges each message when it arrives: a crash can "
                    "lose the messages of the last few milliseconds (install paho-mqtt 2)"
                )

    # ----------------------------------------------------------------- set-up

    def _make_paho_client(self) -> mqtt.Client:
        client = client_for(self.settings, read_buffer=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    # ------------------------------------------------------------- public API

    @property
    def connected(self) -> bool:
        """Whether the client has a live, subscribed connection now."""
        return self._connected_at is not None

    @property
    def error(self) -> TesaiotError | None:
        """The error that stopped the client (an AuthError on reconnect, a StreamError), if any."""
        return self._error

    @property
    def handled_seq(self) -> int:
        """With a durable inbox: the inbox sequence number through which batches were handled.

        The handler (`on_batch`) returned for every message of the inbox up to this number,
        so whatever it put in its sinks is there; 0 without an inbox.
        """
        base = self._handled_base
        return 0 if base is None else base + self._worker.handled

    @property
    def stats(self) -> ClientStats:
        """The client's counters, read now."""
        committer = self._committer
        return ClientStats(
            received=self._received,
            processed=self._processed,
            failed=self._failed,
            rejected=self._rejected,
            dropped=self._dropped,
            reconnects=self._reconnects,
            connected=self.connected,
            connected_since=utc(self._connected_at) if self._connected_at else None,
            last_message_at=utc(self._last_message_at / 1e9) if self._last_message_at else None,
            redelivered=committer.redelivered if committer else 0,
            unacknowledged=committer.waiting if committer else 0,
        )

    def connect(self, *, timeout: float | None = None) -> None:
        """Connect, subscribe, and start the network and worker threads.

        Returns once the broker has accepted the token and the subscription.

        Args:
            timeout: Seconds to wait for the broker; default `settings.connect_timeout`.

        Raises:
            AuthError: The broker refused the token.
            SubscribeError: The broker refused the subscription (ACL).
            TLSError: The TLS handshake failed (usually certificate verification).
            ConnectError: The broker could not be reached or the WebSocket upgrade failed.
            ConnectTimeoutError: Nothing answered in time.
        """
        if self._network_thread is not None:
            if self._error is None:
                return  # already connected (or reconnecting)
            self._shutdown()  # stopped by an error: try afresh
        timeout = self.settings.connect_timeout if timeout is None else timeout
        s, url = self.settings, self._url
        logger.info("connecting to %s as %s (client id %s)", url, s.masked_token, s.client_id)
        self._stopping.clear()
        self._network_done.clear()
        self._ready.clear()
        self._error = None
        try:
            self._mqtt.connect(
                url.host,
                url.port,
                keepalive=s.keepalive,
                **connect_arguments(s, receive_maximum=_RECEIVE_MAXIMUM if self._committer else 0),
            )
        except Exception as exc:
            raise self._translate(exc) from None
        self._start_threads()
        if not self._ready.wait(timeout):
            self._shutdown()
            raise ConnectTimeoutError(
                f"{url} did not accept the connection within {timeout:g} s",
                hint="check MQTT_BROKER_URL (host, port, path) and your network",
            )
        if self._error is not None:
            error = self._error
            self._shutdown()
            raise error
        logger.info("connected to %s, subscribed to %s", url, s.subscription)

    def start(self) -> None:
        """Connect (if needed) and keep streaming on background threads; see `connect()`."""
        self.connect()

    def stop(self) -> None:
        """Stop streaming; an alias of `disconnect()`."""
        self.disconnect()

    def disconnect(self) -> None:
        """Disconnect and stop the threads after handling what was received. Idempotent."""
        if self._network_thread is None:
            return
        logger.info("disconnecting from %s", self._url)
        self._shutdown()

    def run_forever(self) -> None:
        """Connect if needed and block until `disconnect()`, SIGINT or SIGTERM.

        Raises:
            TesaiotError: The connection failed, a reconnect was refused (for example
                the token was revoked), or an unexpected error stopped the network thread
                (`StreamError`, logged with its traceback).
        """
        self.connect()
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, _frame: FrameType | None) -> None:
                logger.info("received %s, disconnecting", signal.Signals(signum).name)
                self._stopping.set()

            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, on_signal)
        try:
            while not self._stopping.wait(0.5):
                pass
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            self.disconnect()
        if self._error is not None:
            raise self._error

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every message received so far has been handled.

        Args:
            timeout: Seconds to wait at most.

        Returns:
            True if the worker caught up, False on timeout.
        """
        deadline = time.monotonic() + timeout
        committer = self._committer
        while committer is not None and committer.waiting:  # not yet durable, so not queued
            if time.monotonic() >= deadline or self._network_done.is_set():
                return False
            self._stopping.wait(0.005)
        return self._worker.wait_idle(max(0.0, deadline - time.monotonic()))

    def process_telemetry(self, device_id: str, sensor_type: str, data: Any) -> None:
        """Handle one telemetry message; override this. The default logs it at INFO level.

        Runs on the worker thread. An exception is logged and counted, and the stream
        goes on.

        Args:
            device_id: The device, from the topic `device/<device_id>/telemetry/...`.
            sensor_type: The rest of the topic (`temperature`, `env/air`), or `default`.
            data: The decoded payload: JSON value, else text, else the raw bytes.
        """
        logger.info("%s %s %s", device_id, sensor_type, data)

    def __enter__(self) -> TESAIoTMQTTClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<{type(self).__name__} {self._url} {self.settings.masked_token} {state}>"

    # ---------------------------------------------------------------- threads

    def _start_threads(self) -> None:
        name = self.settings.client_id
        self._worker_thread = threading.Thread(
            target=self._worker.run, args=(self._network_done,), name=f"{name}-worker", daemon=True
        )
        self._network_thread = threading.Thread(
            target=self._run_network, name=f"{name}-network", daemon=True
        )
        self._worker_thread.start()
        self._network_thread.start()

    def _shutdown(self) -> None:
        self._stopping.set()
        for thread in (self._network_thread, self._worker_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=10)
        self._network_thread = self._worker_thread = None
        self._connected_at = None

    def _run_network(self) -> None:
        client = self._mqtt
        try:
            while not self._stopping.is_set():
                try:
                    self._network_step(client)
                except Exception as exc:  # paho re-raises whatever fails in its loop
                    self._loop_failed(exc)
            # What arrived is made durable and acknowledged; then DISCONNECT from this
            # thread, which owns the socket, and let paho close it.
            with contextlib.suppress(Exception):
                if self._committer is not None:
                    self._committer.commit()
            with contextlib.suppress(Exception):
                if client.disconnect() == mqtt.MQTT_ERR_SUCCESS:
                    deadline = time.monotonic() + 2.0
                    while client.loop(timeout=0.1) == mqtt.MQTT_ERR_SUCCESS:
                        if time.monotonic() > deadline:
                            break
        finally:
            self._connected_at = None
            self._network_done.set()
            self._worker.wake()

    def _network_step(self, client: mqtt.Client) -> None:
        if self._needs_reconnect and not self._reconnect():
            return
        queue = self._queue
        if len(queue) >= READ_AHEAD:
            self._worker.catch_up()
        rc = client.loop(timeout=_LOOP_TIMEOUT)
        # paho's loop() reads one packet per select(), then checks keepalive and writes; in a
        # stream that is most of its cost per message. While messages keep coming, read on
        # without select(): loop_read() reads one packet, or returns on a socket with nothing
        # (or only part of a packet) waiting. loop() comes back every _READ_BURST packets.
        for _ in range(_READ_BURST):
            if rc != mqtt.MQTT_ERR_SUCCESS or self._stopping.is_set() or len(queue) >= READ_AHEAD:
                break
            received = self._received
            rc = client.loop_read()
            if self._received == received:
                break
        if self._committer is not None:
            self._committer.commit()  # fsync, then the acks: the broker sends the next ones
        if rc != mqtt.MQTT_ERR_SUCCESS and not self._stopping.is_set():
            if self._ever_connected:
                self._needs_reconnect = True
            else:  # closed before the first CONNACK: let connect() report it
                self._fail(closed_before_connack(self._url, rc))

    def _loop_failed(self, exc: Exception) -> None:
        """Handle an exception out of paho's loop (a malformed packet, a bug): never die of it."""
        if self._stopping.is_set():
            logger.debug("error in the network loop while stopping", exc_info=exc)
            return
        if not self._ever_connected:  # let connect() report it
            logger.error("unexpected error in the network loop of %s", self._url, exc_info=exc)
            self._fail(
                ConnectError(
                    f"{self._url} sent something the client could not handle: {exc!r}",
                    hint="check that MQTT_BROKER_URL points to an MQTT broker",
                )
            )
            return
        logger.error(
            "unexpected error in the network loop of %s; reconnecting", self._url, exc_info=exc
        )
        # paho calls no on_disconnect here; and this is no sign of a client id clash
        self._connection_lost(f"unexpected error: {exc!r}", by_broker=False)
        self._needs_reconnect = True

    def _reconnect(self) -> bool:
        if not self._backoff.reconnect(self._mqtt, url=self._url, stopping=self._stopping):
            return False
        self._needs_reconnect = False
        return True

    def _handle_batch(self, batch: Sequence[RawMessage]) -> None:
        """Hand one batch to `on_batch` or `process_telemetry()`, on the worker thread."""
        if self._on_batch is None:
            self._process_each(batch)
            return
        try:
            self._on_batch(batch)
            self._processed += len(batch)
        except Exception:
            self._failed += len(batch)
            logger.exception("batch handler failed on %d messages", len(batch))

    def _process_each(self, batch: Sequence[RawMessage]) -> None:
        debug = logger.isEnabledFor(logging.DEBUG)
        for message in batch:
            try:
                where = parse_topic(message.topic)
                data = None if where is None else decode_payload(message.payload)
            except Exception:
                self._failed += 1
                logger.exception("could not read the message on topic %r", message.topic)
                continue
            if where is None:
                self._rejected += 1
                logger.warning("ignored a message on unexpected topic %r", message.topic)
                continue
            if debug:
                logger.debug("%s %s %r", where[0], where[1], data)
            try:
                self.process_telemetry(where[0], where[1], data)
            except Exception:
                self._failed += 1
                logger.exception(
                    "process_telemetry failed for device %s, sensor %s", where[0], where[1]
                )
            else:
                self._processed += 1

    # -------------------------------------------------------- paho callbacks

    # paho re-raises an exception from a callback out of loop(), which would end the network
    # thread; so every callback catches everything and turns it into a logged, visible stop.

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Runs on the network thread: keep it to an append. The one receive time, in ns.
        now = time.time_ns()
        self._last_message_at = now
        self._received += 1
        try:
            payload: bytes = message.payload  # type: ignore[assignment]  # always bytes off the wire
            raw = RawMessage(topic_of(message), payload, now, bool(message.retain))
            if self._timestamp_property is not None:
                stamp = user_property(message, self._timestamp_property)
                if stamp is not None:
                    raw = raw._replace(device_ns=timestamp_ns(stamp))
            if self._committer is not None:  # held until durable, never dropped
                self._committer.arrive(raw, mid=message.mid, qos=message.qos, dup=message.dup)
                return
            if len(self._queue) >= self._queue_size:
                self._dropped += 1
                return
            self._worker.put(raw)
        except Exception as exc:
            self._failed += 1
            self._callback_failed("on_message", exc)

    def _on_connect(self, _client: Any, _data: Any, flags: Any, reason: Any, *rest: Any) -> None:
        try:  # rest: the CONNACK's properties, except on MQTT 3.1.1 with paho 1.6
            self._handle_connack(flags, reason, rest[0] if rest else None)
        except Exception as exc:
            self._callback_failed("on_connect", exc)

    def _on_subscribe(self, _client: Any, _data: Any, mid: int, granted: Any, *rest: Any) -> None:
        try:
            self._handle_suback(mid, granted, rest[0] if rest else None)
        except Exception as exc:
            self._callback_failed("on_subscribe", exc)

    def _on_disconnect(self, _client: Any, _userdata: Any, *args: Any) -> None:
        try:
            self._connection_lost(disconnect_reason(args))
        except Exception as exc:
            self._callback_failed("on_disconnect", exc)

    def _callback_failed(self, name: str, exc: Exception) -> None:
        logger.error("unexpected error in the %s callback", name, exc_info=exc)
        self._fail(StreamError(f"unexpected error in the {name} callback: {exc!r}", hint=_BUG_HINT))

    def _handle_connack(self, flags: Any, reason: Any, properties: Any) -> None:
        refused = subscriber_connack(self.settings, flags, reason, properties)
        if refused is not None:
            self._fail(refused)
            return
        self._backoff.reset()
        self._clash.connected()
        # With a share group, `$share/<group>/<topic>`: the messages still carry their own topic.
        result, mid = self._mqtt.subscribe(self.settings.subscription, qos=self.settings.qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            logger.warning("could not send SUBSCRIBE (%s); will retry on reconnect", result)
            return
        self._subscribe_mid = mid

    def _handle_suback(self, mid: int, granted: Any, properties: Any = None) -> None:
        if mid != self._subscribe_mid:
            return
        refused = suback_refusal(granted, settings=self.settings, properties=properties)
        if refused is not None:
            self._fail(refused)
            return
        if self._ever_connected:
            self._reconnects += 1
            logger.info(
                "reconnected to %s and resubscribed to %s", self._url, self.settings.subscription
            )
        self._ever_connected = True
        self._connected_at = time.time()
        self._ready.set()

    def _connection_lost(self, reason: object, *, by_broker: bool = True) -> None:
        if self._committer is not None:
            self._committer.connection_lost()
        was_connected = self._connected_at is not None
        self._connected_at = None
        stopping = self._stopping.is_set()
        if was_connected and not stopping:
            logger.warning("disconnected from %s: %s", self._url, reason)
        self._clash.connection_ended(by_broker=by_broker and not stopping)

    def _fail(self, error: TesaiotError) -> None:
        """Record an error no retry can fix and stop the network loop."""
        if self._ever_connected:
            logger.error("stopping: %s", error)
        self._error = error
        self._stopping.set()
        self._ready.set()

    def _translate(self, exc: BaseException) -> TesaiotError:
        return connect_error(exc, self._url)
