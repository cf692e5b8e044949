"""TESAIoTMQTTClient against a real Mosquitto: WSS, TLS, token auth, ACL, reconnects.

These tests run twice in CI: under paho-mqtt 2.x and again under 1.6.1
(`TESAIOT_EXPECT_PAHO=1` checks that the second run really uses 1.6).
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import random
import socket
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt
import pytest

from tesaiot_data import (
    AuthError,
    Collector,
    ConnectError,
    ConnectTimeoutError,
    Settings,
    SubscribeError,
    TesaiotError,
    TESAIoTMQTTClient,
    TLSError,
    load_rejects,
)
from tesaiot_data.demo.broker import LocalBroker, free_port
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.demo.flood import fleet_packets, flood
from tesaiot_data.errors import StreamError
from tesaiot_data.messages import RawMessage
from tesaiot_data.mqtt._paho import PAHO_V2, ReadBuffer
from tesaiot_data.mqtt.worker import READ_AHEAD as _READ_AHEAD
from tests.fake_broker import FakeBroker, FakeConnection, publish, publish_with_a_lying_topic_length
from tests.helpers import new_paho_client, wait_for

pytestmark = pytest.mark.broker

PROTOCOLS = ["3.1.1", "5"]  # what the client speaks; every test of both is parametrised


class Recorder(TESAIoTMQTTClient):
    """Keeps what process_telemetry() is given."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        super().__init__(settings, **options)
        self.seen: list[tuple[str, str, Any]] = []

    def process_telemetry(self, device_id: str, sensor_type: str, data: Any) -> None:
        self.seen.append((device_id, sensor_type, data))


class Publisher:
    """A plain paho publisher on the broker's TCP listener (works on paho 1.6 and 2.x)."""

    def __init__(self, broker: LocalBroker) -> None:
        config = broker.publisher()
        self.client = new_paho_client(f"pub-{os.getpid()}-{id(self)}")
        self.client.username_pw_set(config.username, config.password)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=1)
        self.client.max_queued_messages_set(0)
        self.client.connect(config.host, config.port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes | str, *, qos: int = 1, wait: bool = True) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        if wait:
            info.wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher_factory() -> Iterator[Callable[[LocalBroker], Publisher]]:
    made: list[Publisher] = []

    def make(broker: LocalBroker) -> Publisher:
        made.append(Publisher(broker))
        return made[-1]

    yield make
    for publisher in made:
        publisher.close()


@pytest.fixture
def publisher(
    broker: LocalBroker, publisher_factory: Callable[[LocalBroker], Publisher]
) -> Publisher:
    return publisher_factory(broker)


@pytest.fixture
def clients() -> Iterator[list[TESAIoTMQTTClient]]:
    """Clients a test made; each is disconnected at teardown."""
    made: list[TESAIoTMQTTClient] = []
    yield made
    for client in made:
        client.disconnect()


@pytest.fixture
def fake_broker() -> Iterator[FakeBroker]:
    """A scripted MQTT broker on a loopback port, for packets Mosquitto would never send."""
    with FakeBroker() as running:
        yield running


def fake_settings(fake: FakeBroker) -> Settings:
    return Settings(token="tesa_mqtt_demo_" + "F" * 32, broker_url=fake.url, connect_timeout=5)


def connected_to_fake(
    fake: FakeBroker, clients: list[TESAIoTMQTTClient]
) -> tuple[TESAIoTMQTTClient, list[RawMessage], FakeConnection]:
    """A client connected to `fake`, the list its batches go to, and its connection there."""
    received: list[RawMessage] = []
    client = TESAIoTMQTTClient(fake_settings(fake), on_batch=received.extend)
    clients.append(client)
    client.connect()
    return client, received, fake.next_connection()


def client_threads(client: TESAIoTMQTTClient) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(client.settings.client_id)]


def network_thread_alive(client: TESAIoTMQTTClient) -> bool:
    name = f"{client.settings.client_id}-network"
    return any(t.name == name and t.is_alive() for t in threading.enumerate())


def test_runs_on_the_expected_paho_version() -> None:
    major = int(paho.mqtt.__version__.split(".")[0])
    assert major == (1 if os.environ.get("TESAIOT_EXPECT_PAHO") == "1" else 2)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_connects_over_wss_verifying_the_broker_ca_and_parses_topics(
    settings: Settings, publisher: Publisher, clients: list[TESAIoTMQTTClient], protocol: str
) -> None:
    settings = settings.replace(protocol=protocol)
    assert settings.url.scheme == "wss"
    assert settings.ca_certs is not None
    client = Recorder(settings)
    clients.append(client)
    client.connect()
    assert client.connected
    publisher.send("device/dev-1/telemetry/temperature", b'{"value": 25.5, "unit": "celsius"}')
    publisher.send("device/dev-2/telemetry", b'{"data": {"pressure": 1013.2}}')
    publisher.send("device/dev-3/telemetry/env/air", b"21.5")
    publisher.send("device/dev-4/telemetry/status", b"online")
    publisher.send("device/dev-5/telemetry/raw", b"\xff\xfe")
    wait_for(lambda: len(client.seen) == 5, message=f"got {client.seen}")
    assert client.seen == [
        ("dev-1", "temperature", {"value": 25.5, "unit": "celsius"}),
        ("dev-2", "default", {"data": {"pressure": 1013.2}}),
        ("dev-3", "env/air", 21.5),
        ("dev-4", "status", "online"),
        ("dev-5", "raw", b"\xff\xfe"),
    ]
    stats = client.stats
    assert (stats.received, stats.processed, stats.failed, stats.dropped) == (5, 5, 0, 0)
    assert stats.connected_since is not None
    assert stats.last_message_at is not None


@pytest.mark.parametrize("scheme", ["ws", "mqtt"])
def test_plain_websocket_and_tcp_urls_work_too(
    broker: LocalBroker, publisher: Publisher, clients: list[TESAIoTMQTTClient], scheme: str
) -> None:
    port = broker.ws_port if scheme == "ws" else broker.tcp_port
    settings = broker.settings(broker_url=f"{scheme}://127.0.0.1:{port}", ca_certs=None)
    client = Recorder(settings)
    clients.append(client)
    client.connect()
    publisher.send("device/plain/telemetry/temperature", b"1")
    wait_for(lambda: client.seen, message="no message over " + scheme)
    assert client.seen == [("plain", "temperature", 1)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_token_raises_auth_error_once_and_leaves_nothing_running(
    broker: LocalBroker, protocol: str
) -> None:
    wrong = "tesa_mqtt_demo_" + "W" * 32
    client = Recorder(broker.settings(token=wrong, protocol=protocol))
    with pytest.raises(AuthError) as info:
        client.connect(timeout=5)
    message = str(info.value)
    assert "Not authorized" in message or "not authorised" in message.lower()
    assert "MQTT_API_TOKEN" in message
    assert wrong not in message
    assert client_threads(client) == []
    assert client.stats.reconnects == 0
    assert not client.connected


def test_untrusted_certificate_raises_tls_error_with_a_hint(broker: LocalBroker) -> None:
    client = Recorder(broker.settings(ca_certs=None))  # the system store does not know our CA
    with pytest.raises(TLSError) as info:
        client.connect(timeout=5)
    assert "ca_certs" in str(info.value)
    assert "CA_CERT_PATH" in str(info.value)
    assert client_threads(client) == []


def test_insecure_connects_without_verification_and_says_so(
    broker: LocalBroker,
    publisher: Publisher,
    clients: list[TESAIoTMQTTClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="tesaiot_data"):
        client = Recorder(broker.settings(ca_certs=None, insecure=True))
    clients.append(client)
    assert "verification is OFF" in caplog.text
    client.connect()
    publisher.send("device/x/telemetry/t", b"2")
    wait_for(lambda: client.seen, message="no message with insecure=True")


def test_refused_port_raises_connect_error(broker: LocalBroker) -> None:
    client = Recorder(broker.settings(broker_url=f"wss://127.0.0.1:{free_port()}/mqtt"))
    with pytest.raises(ConnectError, match="refused the connection") as info:
        client.connect(timeout=5)
    assert not isinstance(info.value, AuthError)


def test_a_silent_server_raises_connect_timeout() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # accepts TCP in the backlog but never answers the TLS handshake
        port = server.getsockname()[1]
        settings = Settings(
            token="tesa_mqtt_demo_" + "T" * 32,
            broker_url=f"wss://127.0.0.1:{port}/mqtt",
            connect_timeout=1.0,
            keepalive=5,  # paho 1.6 times the TLS handshake out after keepalive, not the timeout
        )
        with pytest.raises(ConnectTimeoutError) as info:
            Recorder(settings).connect()
    assert isinstance(info.value, TimeoutError)


def test_wrong_websocket_path_is_named_in_the_error() -> None:
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = Settings(
            token="tesa_mqtt_demo_" + "P" * 32,
            broker_url=f"ws://127.0.0.1:{server.server_address[1]}/wrong",
            connect_timeout=3,
        )
        with pytest.raises(ConnectError, match="path") as info:
            Recorder(settings).connect()
        assert "/mqtt" in str(info.value)
    finally:
        server.shutdown()
        server.server_close()


def test_wss_to_a_plain_mqtt_port_says_it_is_not_tls(broker: LocalBroker) -> None:
    client = Recorder(broker.settings(broker_url=f"wss://127.0.0.1:{broker.tcp_port}/mqtt"))
    with pytest.raises(ConnectError) as info:
        client.connect(timeout=5)
    assert "TLS" in str(info.value) or "WebSocket" in str(info.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_refused_subscription_is_reported(broker: LocalBroker, protocol: str) -> None:
    client = Recorder(broker.settings(topic="#", protocol=protocol))
    with pytest.raises(SubscribeError) as info:
        client.connect(timeout=5)
    assert "'#'" in str(info.value)
    # MQTT 5 names the refusal (0x87); MQTT 3.1.1 has only its failure code 0x80.
    assert ("Not authorized" in str(info.value)) is (protocol == "5")
    assert broker.token not in str(info.value)
    assert client_threads(client) == []


def test_an_exception_in_process_telemetry_is_logged_counted_and_survived(
    settings: Settings,
    publisher: Publisher,
    clients: list[TESAIoTMQTTClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Fragile(Recorder):
        def process_telemetry(self, device_id: str, sensor_type: str, data: Any) -> None:
            if data == 13:
                raise ValueError("unlucky number")
            super().process_telemetry(device_id, sensor_type, data)

    client = Fragile(settings)
    clients.append(client)
    client.connect()
    with caplog.at_level(logging.ERROR, logger="tesaiot_data"):
        for value in (12, 13, 14):
            publisher.send("device/d/telemetry/n", str(value))
        wait_for(lambda: len(client.seen) == 2, message="the message after the failure was lost")
    assert [data for _, _, data in client.seen] == [12, 14]
    assert client.stats.failed == 1
    assert client.stats.processed == 2
    assert "unlucky number" in caplog.text  # the traceback is in the log
    assert "Traceback" in caplog.text or caplog.records[-1].exc_info is not None
    assert client.connected


def test_a_slow_handler_never_blocks_the_network_thread(
    settings: Settings, publisher: Publisher, clients: list[TESAIoTMQTTClient]
) -> None:
    release = threading.Event()

    class Slow(Recorder):
        def process_telemetry(self, device_id: str, sensor_type: str, data: Any) -> None:
            release.wait(30)
            super().process_telemetry(device_id, sensor_type, data)

    client = Slow(settings, queue_size=10)
    clients.append(client)
    client.connect()
    for value in range(50):
        publisher.send("device/d/telemetry/n", str(value), qos=0, wait=False)
    # The network thread keeps taking messages while the handler is stuck; overflow is counted.
    wait_for(lambda: client.stats.received == 50, message="the network thread stalled")
    # The worker holds at most one batch (<= 10) and the queue 10 more: the rest is dropped.
    assert client.stats.dropped >= 50 - 2 * 10
    assert client.connected
    release.set()
    assert client.wait_idle(10)
    stats = client.stats
    assert stats.processed + stats.dropped == stats.received == 50
    assert len(client.seen) == stats.processed


def test_restarting_the_broker_reconnects_and_resubscribes(
    fresh_broker: LocalBroker,
    publisher_factory: Callable[[LocalBroker], Publisher],
    clients: list[TESAIoTMQTTClient],
) -> None:
    client = Recorder(fresh_broker.settings(), reconnect_initial=0.2)
    clients.append(client)
    client.connect()
    publisher = publisher_factory(fresh_broker)
    publisher.send("device/a/telemetry/t", b"1")
    wait_for(lambda: len(client.seen) == 1)
    fresh_broker.restart()
    wait_for(lambda: client.stats.reconnects == 1, timeout=15, message="did not reconnect")
    wait_for(publisher.client.is_connected, timeout=15)
    publisher.send("device/a/telemetry/t", b"2")
    wait_for(lambda: len(client.seen) == 2, message="no message after the reconnect")
    assert [data for _, _, data in client.seen] == [1, 2]
    assert client.connected


def test_persistent_session_at_qos1_loses_nothing_across_a_broker_restart(
    fresh_broker: LocalBroker,
    publisher_factory: Callable[[LocalBroker], Publisher],
    clients: list[TESAIoTMQTTClient],
) -> None:
    settings = fresh_broker.settings(client_id="persistent-notebook", clean_session=False, qos=1)
    client = Recorder(settings, reconnect_initial=0.5)
    clients.append(client)
    client.connect()
    publisher = publisher_factory(fresh_broker)
    for n in range(20):
        publisher.send("device/p/telemetry/n", str(n))
    wait_for(lambda: len(client.seen) >= 20)
    fresh_broker.stop()
    wait_for(lambda: not client.connected, message="the client did not notice the outage")
    # Published while the broker is down: paho queues them and sends them once it is back,
    # perhaps before our client has reconnected; the broker keeps them for its session.
    for n in range(20, 50):
        publisher.send("device/p/telemetry/n", str(n), wait=False)
    fresh_broker.start()

    def received() -> set[int]:
        return {data for _, _, data in client.seen}

    wait_for(lambda: received() == set(range(50)), timeout=20, message="messages were lost")
    # QoS 1 is at-least-once: a redelivery may repeat a message, but none is missing.
    assert len(client.seen) >= 50
    assert client.stats.reconnects == 1


def test_the_token_never_appears_in_logs_or_reprs(
    broker: LocalBroker, publisher: Publisher, caplog: pytest.LogCaptureFixture
) -> None:
    token = broker.token
    wrong = token[:-1] + ("Y" if token.endswith("X") else "X")  # the token is random
    with caplog.at_level(logging.DEBUG):
        client = Recorder(broker.settings(), reconnect_initial=0.2)
        client.connect()
        publisher.send("device/log/telemetry/t", b"1")
        wait_for(lambda: client.seen)
        text = repr(client) + repr(client.settings) + str(client.stats)
        client.disconnect()
        with pytest.raises(AuthError) as info:
            Recorder(broker.settings(token=wrong)).connect(timeout=5)
    assert caplog.records, "nothing was logged: the test would prove nothing"
    for needle in (token, wrong):
        assert needle not in caplog.text
        assert needle not in text
        assert needle not in str(info.value)
    assert "…" in caplog.text  # the masked form is what shows


def test_disconnect_is_idempotent_and_the_client_is_a_context_manager(settings: Settings) -> None:
    with Recorder(settings) as client:
        assert client.connected
        assert client_threads(client)
    assert not client.connected
    client.disconnect()
    client.disconnect()
    wait_for(lambda: client_threads(client) == [], message="threads left behind")


def test_run_forever_returns_when_disconnected_from_another_thread(settings: Settings) -> None:
    client = Recorder(settings)
    client.connect()
    timer = threading.Timer(0.2, client.disconnect)
    timer.start()
    client.run_forever()
    timer.join()
    assert not client.connected


def test_error_translation_of_socket_failures() -> None:
    settings = Settings(token="tesa_mqtt_demo_" + "D" * 32, broker_url="wss://nowhere.invalid/mqtt")
    client = TESAIoTMQTTClient(settings)
    dns = client._translate(socket.gaierror(-2, "Name or service not known"))
    assert isinstance(dns, ConnectError)
    assert "nowhere.invalid" in str(dns)
    assert isinstance(client._translate(TimeoutError()), ConnectTimeoutError)
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    assert isinstance(client._translate(cert), TLSError)


def test_a_token_revoked_while_connected_stops_the_retries_with_auth_error(
    fresh_broker: LocalBroker, clients: list[TESAIoTMQTTClient]
) -> None:
    client = Recorder(fresh_broker.settings(), reconnect_initial=0.2)
    clients.append(client)
    client.connect()
    fresh_broker.revoke_token()
    wait_for(lambda: client.error is not None, timeout=15, message="still retrying")
    assert isinstance(client.error, AuthError)
    assert fresh_broker.token not in str(client.error)
    wait_for(lambda: not [t for t in client_threads(client) if t.endswith("-network")])
    with pytest.raises(AuthError):
        client.run_forever()  # surfaces the error instead of looping


# --------------------------------------------------- nothing dies quietly, nothing is lost

BAD_TOPIC = b"device/\xff\xfe/telemetry/t"


def test_a_topic_that_is_not_utf8_is_counted_and_handed_on_and_the_stream_goes_on(
    fake_broker: FakeBroker, clients: list[TESAIoTMQTTClient]
) -> None:
    client, received, connection = connected_to_fake(fake_broker, clients)
    connection.send(publish(BAD_TOPIC, b'{"v": 1}'))
    connection.send(publish(b"device/ok/telemetry/t", b'{"v": 2}'))
    wait_for(lambda: len(received) == 2, message=f"got {received}")
    bad, good = received
    assert bad.topic.encode("utf-8", "surrogateescape") == BAD_TOPIC  # nothing of it lost
    assert bad.payload == b'{"v": 1}'
    assert (good.topic, good.payload) == ("device/ok/telemetry/t", b'{"v": 2}')
    assert network_thread_alive(client)
    assert client.error is None
    assert client.connected
    stats = client.stats
    assert (stats.received, stats.processed, stats.failed, stats.dropped) == (2, 2, 0, 0)


def test_a_topic_that_is_not_utf8_is_a_logged_reject_in_process_telemetry(
    fake_broker: FakeBroker, clients: list[TESAIoTMQTTClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = Recorder(fake_settings(fake_broker))
    clients.append(client)
    client.connect()
    connection = fake_broker.next_connection()
    with caplog.at_level(logging.WARNING, logger="tesaiot_data"):
        connection.send(publish(BAD_TOPIC, b"1"))
        connection.send(publish(b"device/ok/telemetry/t", b"2"))
        wait_for(lambda: client.seen, message="the message after the bad topic was lost")
        assert client.wait_idle(10)
    assert client.seen == [("ok", "t", 2)]
    stats = client.stats
    assert (stats.received, stats.rejected, stats.processed, stats.failed) == (2, 1, 1, 0)
    assert repr("device/\udcff\udcfe/telemetry/t") in caplog.text
    assert network_thread_alive(client)
    assert client.error is None


def test_a_collector_rejects_a_topic_that_is_not_utf8_and_keeps_its_payload(
    fake_broker: FakeBroker,
) -> None:
    collector = Collector(fake_settings(fake_broker))
    try:
        collector.start()
        connection = fake_broker.next_connection()
        connection.send(publish(BAD_TOPIC, b'{"temperature": 20}'))
        connection.send(publish(b"device/ok/telemetry/t", b'{"temperature": 21}'))
        wait_for(lambda: collector.stats.messages + collector.stats.rejected == 2)
        stats = collector.stats
        assert stats.rejects_by_reason.get("bad_topic") == 1
        assert stats.messages == 1
        assert (stats.received, stats.failed, stats.error) == (2, 0, None)
        assert collector.frame()["value"].tolist() == [21.0]
        assert collector.client is not None
        assert network_thread_alive(collector.client)
    finally:
        collector.stop()


def test_the_rejects_frame_shows_a_topic_that_is_not_utf8_with_its_payload(
    fake_broker: FakeBroker, tmp_path: Path
) -> None:
    collector = Collector(fake_settings(fake_broker))
    try:
        collector.start()
        connection = fake_broker.next_connection()
        connection.send(publish(BAD_TOPIC, b'{"temperature": 20}'))
        wait_for(lambda: collector.stats.rejected == 1)
        rejects = collector.rejects()
        assert rejects["payload"].tolist() == [b'{"temperature": 20}']
        assert rejects["reason"].tolist() == ["bad_topic"]
        assert "telemetry/t" in rejects["topic"].iloc[0]
        # ... and a recording's rejects file can hold it (Parquet strings are UTF-8).
        with collector.record(tmp_path / "r.parquet", flush_every=0.05) as recording:
            connection.send(publish(BAD_TOPIC, b"2"))
            wait_for(lambda: collector.stats.rejected == 2)
        assert load_rejects(recording.path)["payload"].tolist() == [b"2"]
    finally:
        collector.stop()


def test_a_packet_paho_cannot_read_makes_the_client_reconnect_not_die(
    fake_broker: FakeBroker, clients: list[TESAIoTMQTTClient]
) -> None:
    # paho 1.6 raises struct.error out of loop() on this packet; paho 2.x reports a protocol
    # error. Either way the client must reconnect and go on.
    received: list[RawMessage] = []
    client = TESAIoTMQTTClient(
        fake_settings(fake_broker), on_batch=received.extend, reconnect_initial=0.1
    )
    clients.append(client)
    client.connect()
    fake_broker.next_connection().send(publish_with_a_lying_topic_length(b"device/x", b"1"))
    fake_broker.next_connection().send(publish(b"device/ok/telemetry/t", b"2"))
    wait_for(lambda: received, message="nothing arrived after the malformed packet")
    assert [m.payload for m in received] == [b"2"]
    assert client.stats.reconnects == 1
    assert client.error is None
    assert network_thread_alive(client)


def test_an_unexpected_error_in_a_paho_callback_stops_the_client_visibly(
    fake_broker: FakeBroker, clients: list[TESAIoTMQTTClient], caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Recorder):
        subacks = 0

        def _handle_suback(self, mid: int, granted: Any, properties: Any = None) -> None:
            self.subacks += 1
            if self.subacks > 1:  # the SUBACK after the reconnect
                raise RuntimeError("bug in a callback")
            super()._handle_suback(mid, granted, properties)

    client = Broken(fake_settings(fake_broker), reconnect_initial=0.1)
    clients.append(client)
    client.connect()
    with caplog.at_level(logging.ERROR, logger="tesaiot_data"):
        fake_broker.next_connection().close()  # the reconnect's SUBACK raises
        wait_for(lambda: client.error is not None, message="the error was swallowed")
    assert isinstance(client.error, StreamError)
    assert isinstance(client.error, TesaiotError)
    assert "bug in a callback" in str(client.error)
    assert client.error.hint
    assert any(r.exc_info is not None for r in caplog.records), "no traceback was logged"
    wait_for(lambda: not network_thread_alive(client), message="a dead stream kept its thread")
    with pytest.raises(StreamError):
        client.run_forever()


def test_an_exception_in_on_batch_is_logged_counted_and_survived(
    settings: Settings,
    publisher: Publisher,
    clients: list[TESAIoTMQTTClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    received: list[bytes] = []

    def fragile(batch: Any) -> None:
        if any(message.payload == b"13" for message in batch):
            raise ValueError("unlucky batch")
        received.extend(message.payload for message in batch)

    client = TESAIoTMQTTClient(settings, on_batch=fragile)
    clients.append(client)
    client.connect()
    with caplog.at_level(logging.ERROR, logger="tesaiot_data"):
        publisher.send("device/d/telemetry/n", b"13")
        wait_for(lambda: client.stats.failed == 1, message="the failure was not counted")
        publisher.send("device/d/telemetry/n", b"14")
        wait_for(lambda: received == [b"14"], message="the batch after the failure was lost")
    assert "unlucky batch" in caplog.text
    assert client.stats.processed == 1
    assert client.connected
    assert network_thread_alive(client)


# ------------------------------------------------------------ two clients, one client id

CLASH = "another client with the same client id"


def test_two_clients_with_one_client_id_get_one_warning_each(
    broker: LocalBroker, clients: list[TESAIoTMQTTClient], caplog: pytest.LogCaptureFixture
) -> None:
    settings = broker.settings(client_id=f"shared-{uuid.uuid4().hex[:12]}")
    with caplog.at_level(logging.WARNING, logger="tesaiot_data"):
        first = Recorder(settings, reconnect_initial=0.2, reconnect_max=0.4)
        clients.append(first)
        first.connect()
        second = Recorder(settings, reconnect_initial=0.2, reconnect_max=0.4)
        clients.append(second)
        second.connect()  # the broker now closes the first; it reconnects and closes this one
        wait_for(
            lambda: min(first.stats.reconnects, second.stats.reconnects) >= 6,
            timeout=60,
            message="the two clients did not keep taking the session from each other",
        )
        first.disconnect()
        second.disconnect()
    warnings = [r.getMessage() for r in caplog.records if CLASH in r.getMessage()]
    assert len(warnings) == 2, warnings  # one per client, not one per disconnect
    assert settings.client_id in warnings[0]
    assert "MQTT_CLIENT_ID" in warnings[0]
    assert not first.connected
    assert not second.connected
    assert client_threads(first) == []


def reconnected(client: TESAIoTMQTTClient, times: int) -> bool:
    return client.stats.reconnects == times and client.connected


def test_the_client_id_warning_needs_three_quick_disconnects_and_is_rate_limited(
    fake_broker: FakeBroker, clients: list[TESAIoTMQTTClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = TESAIoTMQTTClient(
        fake_settings(fake_broker), on_batch=lambda _: None, reconnect_initial=0.05
    )
    clients.append(client)
    client.connect()

    def clashes() -> int:
        return sum(CLASH in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.WARNING, logger="tesaiot_data"):
        for closed in range(1, 7):
            fake_broker.next_connection().close()
            wait_for(partial(reconnected, client, closed), message=f"no reconnect {closed}")
            assert clashes() == (0 if closed < 3 else 1), f"after {closed} disconnects"
    assert client.error is None
    assert client.connected


# --- reading the socket through ReadBuffer (paho 2.x; paho 1.6 reads as it ships) ----------


def _sizes(seed: int, count: int, largest: int) -> list[int]:
    rng = random.Random(seed)
    return [
        rng.choice((1, 2, 127, 128, 129, 16_383, 16_384, rng.randint(1, largest)))
        for _ in range(count)
    ]


def test_the_client_reads_through_a_read_buffer_on_paho_2(
    settings: Settings, clients: list[TESAIoTMQTTClient]
) -> None:
    client = TESAIoTMQTTClient(settings, on_batch=lambda _batch: None)
    clients.append(client)
    client.connect()
    sock: Any = client._mqtt.socket()  # paho's public accessor for the socket it reads
    assert isinstance(sock, ReadBuffer) == PAHO_V2
    if PAHO_V2:  # over WSS the TLS socket under paho's WebSocket layer is buffered too
        assert isinstance(sock._sock._socket, ReadBuffer)


def test_packets_split_anywhere_and_packed_together_arrive_whole_and_in_order(
    fake_broker: FakeBroker, clients: list[TESAIoTMQTTClient]
) -> None:
    client, received, connection = connected_to_fake(fake_broker, clients)
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payloads = [os.urandom(size) for size in _sizes(1, 300, 2_000)]
    payloads.append(os.urandom(200_000))  # more than one 64 KiB read and 3 bytes of length
    packets = [publish(f"device/d{i}/telemetry/t".encode(), p) for i, p in enumerate(payloads)]
    stream = b"".join(packets)
    # Most of it in one write, so that one read holds many packets and ends inside one;
    # the rest a byte or a few at a time, so that packets (and their lengths) arrive split.
    cut = len(stream) - 5_000
    connection.send(stream[:cut])
    rng = random.Random(2)
    position = cut
    while position < len(stream):
        step = rng.choice((1, 1, 2, 3, 7, 64))
        connection.send(stream[position : position + step])
        position += step
    wait_for(lambda: len(received) >= len(payloads), message=f"got {len(received)} messages")
    assert [m.payload for m in received] == payloads
    assert [m.topic for m in received] == [f"device/d{i}/telemetry/t" for i in range(len(payloads))]
    assert client.stats.failed == 0
    assert client.connected


@pytest.mark.parametrize("scheme", ["wss", "mqtt"])
def test_messages_of_every_size_arrive_exactly_over_wss_and_tcp(
    broker: LocalBroker, publisher: Publisher, clients: list[TESAIoTMQTTClient], scheme: str
) -> None:
    if scheme == "wss":
        settings = broker.settings()
    else:
        settings = broker.settings(broker_url=f"mqtt://127.0.0.1:{broker.tcp_port}", ca_certs=None)
    received: list[RawMessage] = []
    client = TESAIoTMQTTClient(settings, on_batch=received.extend)
    clients.append(client)
    client.connect()
    # Sizes around a TLS record (16 KiB), the 1- and 2-byte remaining lengths, and one message
    # larger than a 64 KiB read (Mosquitto's WebSocket listener sends it at ~40 KB/s).
    payloads = [os.urandom(size) for size in _sizes(3, 200, 4_000)] + [os.urandom(70_000)]
    for i, payload in enumerate(payloads):
        publisher.send(f"device/s{i}/telemetry/t", payload, qos=1, wait=False)
    wait_for(
        lambda: len(received) >= len(payloads),
        timeout=60,
        message=f"got {len(received)} of {len(payloads)}",
    )
    assert [m.payload for m in received] == payloads
    assert client.stats.failed == 0


_BLOCK = bytes(128 * 1024)  # hashed without the GIL (hashlib releases it above 2 KiB)


def test_a_burst_waits_in_the_socket_while_the_worker_is_behind(
    broker: LocalBroker, clients: list[TESAIoTMQTTClient]
) -> None:
    sizes: list[int] = []

    def slow(batch: Sequence[RawMessage]) -> None:
        # Slower per message than paho reads them, and without the GIL most of the time, as
        # numpy, Arrow and file writes are: the network thread runs meanwhile.
        for _ in batch:
            hashlib.sha256(_BLOCK).digest()
        sizes.append(len(batch))

    client = TESAIoTMQTTClient(broker.settings(qos=0), on_batch=slow)
    clients.append(client)
    client.connect()
    count = 20_000
    fleet = DeviceFleet(broker.publisher(), devices=50, mixed_shapes=False, malformed=0)
    flood(broker.publisher(), fleet_packets(fleet, count))
    wait_for(lambda: client.stats.processed == count, timeout=120, message="not all handled")
    assert client.stats.dropped == 0
    # The network thread read at most about _READ_AHEAD messages ahead of the worker, so no
    # batch is much larger; without the wait one batch took most of the burst.
    assert max(sizes) <= 2 * _READ_AHEAD, sizes
