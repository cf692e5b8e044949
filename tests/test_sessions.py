"""Persistent sessions and MQTT 5 against a real Mosquitto: what a stopped collector gets back.

Each test that leaves a session on its broker uses a broker of its own (`fresh_broker`): a
session left on the shared broker would queue every later test's messages. The client tests
of MQTT 5 (WSS, a refused token, a refused subscription) are `tests/test_client.py`'s, run
for both versions; shared subscriptions over both are in `tests/test_share_group.py`.
These tests run under paho 1.6.1 too (`PYTHONPATH=.venv/paho1 TESAIOT_EXPECT_PAHO=1`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tesaiot_data import AuthError, Collector, Settings, TESAIoTMQTTClient, load_recording
from tesaiot_data.demo.broker import LocalBroker
from tests.fake_broker import CONNACK, CONNECT, FakeConnection, packet
from tests.helpers import publish_acknowledged, wait_for

PROTOCOLS = ["3.1.1", "5"]
READINGS = 300
START_MS = 1_765_000_000_000  # device time of reading 0; reading n is n ms later
CLI = [sys.executable, "-m", "tesaiot_data.cli"]


def readings(first: int, count: int = READINGS) -> list[tuple[str, Any]]:
    """QoS 1 readings `first` ... `first + count - 1`, each its own value and device time."""
    return [
        ("device/away/telemetry/n", {"value": n, "timestamp": START_MS + n})
        for n in range(first, first + count)
    ]


def values(collector: Collector) -> list[int]:
    """The values the collector holds, in arrival order."""
    return [int(value) for value in collector.frame()["value"]]


@pytest.mark.broker
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_collector_restarted_with_its_session_gets_what_was_published_while_it_was_away(
    fresh_broker: LocalBroker, collectors: Callable[..., Collector], protocol: str
) -> None:
    broker = fresh_broker
    client_id = f"test-session-{uuid.uuid4().hex[:8]}"
    persistent = broker.settings(client_id=client_id, protocol=protocol, session_expiry="1h")
    assert persistent.url.scheme == "wss"
    collectors(persistent).start().stop()  # the broker now keeps the session, subscription too
    publish_acknowledged(broker.publisher(), readings(0))  # every one acknowledged: queued
    again = collectors(persistent).start()
    wait_for(
        lambda: len(values(again)) >= READINGS,
        timeout=30,
        message=f"the session lost messages: {len(values(again))} of {READINGS} arrived",
    )
    assert sorted(values(again)) == list(range(READINGS))  # each once (QoS 1 may repeat; none did)
    again.stop()

    # The contrast: the same id with a clean session. Its first connect also ends the session.
    clean = persistent.replace(session_expiry=None)
    assert not clean.persistent_session
    collectors(clean).start().stop()
    publish_acknowledged(broker.publisher(), readings(1000))  # nobody subscribed: dropped
    back = collectors(clean).start()
    publish_acknowledged(broker.publisher(), readings(5000, 1))  # after its SUBSCRIBE
    wait_for(lambda: 5000 in values(back), message="the marker did not arrive")
    # A queued message would have come before the marker; with a clean session none did.
    assert values(back) == [5000]


@pytest.mark.broker
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_log_says_whether_the_broker_resumed_the_session(
    fresh_broker: LocalBroker,
    collectors: Callable[..., Collector],
    caplog: pytest.LogCaptureFixture,
    protocol: str,
) -> None:
    settings = fresh_broker.settings(
        client_id=f"test-session-{uuid.uuid4().hex[:8]}", protocol=protocol, session_expiry="2h"
    )
    with caplog.at_level(logging.INFO, logger="tesaiot_data.mqtt"):
        collectors(settings).start().stop()
        assert "had no session for client id" in caplog.text
        assert ("kept for 7,200 s" in caplog.text) is (protocol == "5")
        assert "resumed the session" not in caplog.text
        collectors(settings).start().stop()
    assert "resumed the session of client id" in caplog.text


def _refuse_with_a_reason_string(server: socket.socket, words: str) -> None:
    """Answer one MQTT 5 CONNECT with CONNACK 0x87 Not authorized and a Reason String."""
    sock, _ = server.accept()
    sock.settimeout(10)
    with sock:
        connection = FakeConnection(sock)
        header, body = connection.read_packet()
        assert header & 0xF0 == CONNECT
        assert body[6] == 5, "not an MQTT 5 CONNECT"  # after the protocol name "MQTT"
        reason_string = bytes([0x1F]) + struct.pack("!H", len(words)) + words.encode()
        connection.send(packet(CONNACK, bytes([0x00, 0x87, len(reason_string)]) + reason_string))
        with contextlib.suppress(EOFError, OSError):
            connection.read_packet()  # until the client closes the connection


def test_the_reason_string_of_a_refused_mqtt5_connect_is_in_the_auth_error() -> None:
    # Mosquitto sends no Reason String with a refusal, so a scripted broker does.
    words = "token revoked by the organisation's admin"
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        port = server.getsockname()[1]
        thread = threading.Thread(target=_refuse_with_a_reason_string, args=(server, words))
        thread.start()
        settings = Settings(
            token="tesa_mqtt_demo_" + "R" * 32,
            broker_url=f"mqtt://127.0.0.1:{port}",
            protocol="5",
            connect_timeout=5,
        )
        with pytest.raises(AuthError) as info:
            TESAIoTMQTTClient(settings).connect()
        thread.join(10)
    message = str(info.value)
    assert "Not authorized" in message
    assert words in message
    assert "MQTT_API_TOKEN" in message
    assert settings.token not in message


# --- the service: record --dataset with a persistent session --------------------------------


def rows_on_disk(root: Path) -> int:
    """Rows in the dataset's part files, from their footers."""
    return sum(pq.read_metadata(part).num_rows for part in root.rglob("part-*.parquet"))


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, process.out.read_text()  # type: ignore[attr-defined]


@pytest.mark.broker
def test_a_dataset_service_with_a_persistent_session_gets_what_was_published_while_down(
    fresh_broker: LocalBroker,
    services: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    root = tmp_path / "dataset"
    args = [
        "--dataset",
        str(root),
        "--flush-every",
        "0.2s",
        "--client-id",
        "recorder-line-7",
        "--session-expiry",
        "1h",
        "--protocol",
        "5",
    ]
    _stop(services(fresh_broker, *args))  # a deploy: the service stops cleanly
    publish_acknowledged(fresh_broker.publisher(), readings(0))
    service = services(fresh_broker, *args)  # ... and starts again
    wait_for(
        lambda: rows_on_disk(root) >= READINGS,
        timeout=30,
        message="the restarted service did not write what was published while it was down",
    )
    _stop(service)
    frame = load_recording(root)
    assert sorted(int(value) for value in frame["value"]) == list(range(READINGS))
