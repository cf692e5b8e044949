"""Test helpers: poll instead of sleeping, collect MQTT messages.

Everything here works with paho-mqtt 1.6 and 2.x, because the client tests also run under 1.6.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tesaiot_data.demo.broker import LocalBroker, PublisherConfig
from tesaiot_data.files.store import Location
from tesaiot_data.mqtt._paho import new_client, reason_code

T = TypeVar("T")

SUBACK_FAILURE = 0x80


def local(path: Location) -> Path:
    """The local `Path` a local path gives: narrows a `Location` for tests on local disk.

    Raises:
        AssertionError: `path` is a `StorePath` (an object-store location), not a local `Path`.
    """
    assert isinstance(path, Path), path
    return path


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float = 10.0,
    period: float = 0.02,
    message: str = "the condition did not become true",
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    Raises:
        AssertionError: `timeout` seconds passed first; carries `message`.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout:g} s)")
        time.sleep(period)


def new_paho_client(client_id: str, *, clean_session: bool = True, transport: str = "tcp") -> Any:
    """A paho MQTT 3.1.1 client on either paho major version (see `tesaiot_data.mqtt._paho`)."""
    return new_client(client_id, clean_session=clean_session, transport=transport)


def publish_acknowledged(
    publisher: PublisherConfig, messages: Sequence[tuple[str, Any]], *, retain: bool = False
) -> None:
    """Publish JSON (or bytes) payloads at QoS 1, in order, each acknowledged by the broker."""
    client = new_paho_client(f"test-publish-{os.getpid()}-{time.monotonic_ns()}")
    client.username_pw_set(publisher.username, publisher.password)
    client.connect(publisher.host, publisher.port, keepalive=30)
    client.loop_start()
    try:
        for topic, body in messages:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def reason_value(code: Any) -> int:
    """The number of a paho 2.x ReasonCode or a paho 1.6 int."""
    return reason_code(code)


class Subscriber:
    """A subscriber that keeps every message it receives, for assertions.

    Reconnects on its own within a fraction of a second (for broker restarts) and subscribes
    again on every connect, unless `topic` is None (to test a persistent session). `topic`
    may be a list, subscribed in one SUBSCRIBE; `granted` then has one code per filter.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        topic: str | list[str] | None = "device/#",
        qos: int = 1,
        client_id: str | None = None,
        clean_session: bool = True,
        websockets: bool = False,
        ca_certs: Path | None = None,
    ) -> None:
        self.topic = topic
        self.qos = qos
        self.client_id = client_id or f"collector-{time.monotonic_ns()}"
        self.messages: list[tuple[str, bytes]] = []
        self.granted: list[int] = []  # SUBACK return codes of the latest subscription
        self.connects: list[int] = []  # CONNACK codes, one per connect
        self._subscribed = threading.Event()
        self._host, self._port = host, port
        client = new_paho_client(
            self.client_id,
            clean_session=clean_session,
            transport="websockets" if websockets else "tcp",
        )
        if websockets:
            client.ws_set_options(path="/mqtt")
        if ca_certs is not None:
            client.tls_set(ca_certs=str(ca_certs))
        client.username_pw_set(username, password)
        client.reconnect_delay_set(min_delay=0.1, max_delay=1)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.client = client

    @classmethod
    def as_publisher(cls, config: PublisherConfig, **options: Any) -> Subscriber:
        """A subscriber that logs in with the publisher account over plain MQTT."""
        return cls(
            host=config.host,
            port=config.port,
            username=config.username,
            password=config.password,
            **options,
        )

    @classmethod
    def as_token(cls, broker: LocalBroker, **options: Any) -> Subscriber:
        """A subscriber that logs in with the broker's token over WSS, as users do."""
        options.setdefault("topic", "device/+/telemetry/#")
        return cls(
            host=broker.host,
            port=broker.wss_port,
            username=broker.token,
            password=broker.token,
            websockets=True,
            ca_certs=broker.ca_file,
            **options,
        )

    def start(self, *, timeout: float = 10.0) -> Subscriber:
        """Connect and, when subscribing, wait for the SUBACK (else for the CONNACK)."""
        self.client.connect(self._host, self._port, keepalive=30)
        self.client.loop_start()
        if self.topic is None:
            wait_for(lambda: self.connects, timeout=timeout, message="no CONNACK")
        else:
            wait_for(self._subscribed.is_set, timeout=timeout, message="no SUBACK")
        return self

    def stop(self) -> None:
        """Disconnect (a persistent session stays on the broker)."""
        self.client.disconnect()
        self.client.loop_stop()

    @property
    def payloads(self) -> list[bytes]:
        """The payloads received so far, in order."""
        return [payload for _, payload in self.messages]

    def _on_connect(self, _client: Any, _userdata: Any, *args: Any) -> None:
        self.connects.append(reason_value(args[1]))
        if self.topic is None or reason_value(args[1]) != 0:
            return
        topics = [self.topic] if isinstance(self.topic, str) else self.topic
        self.client.subscribe([(topic, self.qos) for topic in topics])

    def _on_subscribe(self, _client: Any, _userdata: Any, _mid: int, codes: Any, *_: Any) -> None:
        self.granted = [reason_value(code) for code in codes]
        self._subscribed.set()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        self.messages.append((message.topic, message.payload))
