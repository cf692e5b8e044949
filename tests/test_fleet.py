"""Simulated devices against a real broker: reproducible, paced, and loss-free with QoS 1."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tesaiot_data.demo.broker import LocalBroker, PublisherConfig, free_port
from tesaiot_data.demo.fleet import SENSORS, DeviceFleet
from tesaiot_data.errors import AuthError, ConfigError, ConnectError
from tests.helpers import Subscriber, wait_for

pytestmark = pytest.mark.broker

NOWHERE = PublisherConfig(host="127.0.0.1", port=1, username="publisher", password="unused")
T0 = 1_765_276_245.123  # 2025-12-09T10:30:45.123Z


def _ticking_clock(step: float = 0.001) -> Callable[[], float]:
    """A clock that moves `step` seconds per call: every message gets its own timestamp."""
    ticks = itertools.count()
    return lambda: T0 + next(ticks) * step


def _is_malformed(payload: bytes) -> bool:
    try:
        document = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return True
    return not document


def test_device_ids_are_reproducible_uuid4() -> None:
    first = DeviceFleet(NOWHERE, devices=4, seed=7).device_ids
    assert first == DeviceFleet(NOWHERE, devices=4, seed=7).device_ids
    assert first != DeviceFleet(NOWHERE, devices=4, seed=8).device_ids
    assert len(set(first)) == 4
    assert all(uuid.UUID(device_id).version == 4 for device_id in first)


@pytest.mark.parametrize(
    "options",
    [{"devices": 0}, {"rate": 0}, {"malformed": 1.5}, {"qos": 3}],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DeviceFleet(NOWHERE, **options)


def test_payload_sequence_is_reproducible_from_the_seed(
    broker: LocalBroker, fleet_factory: Any, subscriber_factory: Any
) -> None:
    watcher = subscriber_factory(broker)

    def stream(seed: int) -> list[tuple[str, bytes]]:
        watcher.messages.clear()
        fleet = fleet_factory(broker, seed=seed, malformed=0.1, qos=1, clock=lambda: T0)
        fleet.publish(60)
        wait_for(lambda: len(watcher.messages) >= 60)
        return list(watcher.messages)

    first = stream(seed=3)
    assert stream(seed=3) == first
    assert stream(seed=4) != first
    assert len(first) == 60


def test_payload_shapes(broker: LocalBroker, fleet_factory: Any, subscriber_factory: Any) -> None:
    watcher = subscriber_factory(broker)
    fleet = fleet_factory(broker, devices=4, seed=1, qos=1)
    fleet.publish(1000)
    wait_for(lambda: len(watcher.messages) >= 1000)

    shapes: Counter[str] = Counter()
    for topic, payload in watcher.messages:
        document = json.loads(payload)
        device_id = topic.split("/")[1]
        assert device_id in fleet.device_ids
        suffix = topic.removeprefix(f"device/{device_id}/telemetry").lstrip("/")
        if suffix in SENSORS:
            shapes["standard"] += 1
            assert set(document) == {"value", "unit", "timestamp"}
            assert isinstance(document["value"], (int, float))
        elif suffix == "env":
            shapes["flat"] += 1
            assert {"timestamp", "temperature", "humidity", "battery"} <= set(document)
            shapes["ai_prediction"] += "ai_prediction" in document
            assert document.get("ai_prediction", "normal") in ("normal", "anomaly")
        else:
            assert suffix == ""
            shapes["nested"] += 1
            assert document["device_id"] == device_id
            assert document["sensor_type"] == "DPS368"
            assert set(document["data"]) == {"pressure", "temperature"}
        stamp = document["timestamp"]
        shapes["epoch_ms"] += isinstance(stamp, int)
        if isinstance(stamp, str):
            assert stamp.endswith("Z")
            assert len(stamp) == len("2025-12-09T10:30:45.123Z")

    assert 800 < shapes["standard"] < 900
    assert shapes["flat"] > 40
    assert shapes["nested"] > 20
    assert shapes["epoch_ms"] > 20
    assert shapes["ai_prediction"] > 5


def test_values_are_plausible(
    broker: LocalBroker, fleet_factory: Any, subscriber_factory: Any
) -> None:
    watcher = subscriber_factory(broker, topic="device/+/telemetry/+")
    fleet = fleet_factory(broker, devices=2, seed=5, qos=1, mixed_shapes=False)
    fleet.publish(500)
    wait_for(lambda: len(watcher.messages) >= 500)
    values: dict[str, list[float]] = {sensor: [] for sensor in SENSORS}
    units: dict[str, set[str]] = {sensor: set() for sensor in SENSORS}
    battery: dict[str, list[float]] = {device_id: [] for device_id in fleet.device_ids}
    for topic, payload in watcher.messages:
        _, device_id, _, sensor = topic.split("/")
        document = json.loads(payload)
        values[sensor].append(document["value"])
        units[sensor].add(document["unit"])
        if sensor == "battery":
            battery[device_id].append(document["value"])
    assert units == {
        "temperature": {"celsius"},
        "humidity": {"percent"},
        "pressure": {"hPa"},
        "motion": {"count"},
        "battery": {"volt"},
    }
    assert all(10 < value < 40 for value in values["temperature"])
    assert all(0 <= value <= 100 for value in values["humidity"])
    assert all(990 < value < 1040 for value in values["pressure"])
    assert set(values["motion"]) <= {0, 1}
    assert all(3.3 <= value <= 4.25 for value in values["battery"])
    assert all(readings[-1] < readings[0] for readings in battery.values()), "no drain"


def test_rate_is_paced(broker: LocalBroker, fleet_factory: Any) -> None:
    fleet = fleet_factory(broker, rate=200)
    started = time.monotonic()
    fleet.start()
    wait_for(lambda: fleet.published >= 100, period=0.005)
    elapsed = time.monotonic() - started
    # 100 messages at 200/s take 0.5 s (the first goes at once); loose bounds for slow CI.
    assert 0.4 < elapsed < 1.5
    fleet.stop()
    fleet.stop()  # idempotent
    assert not fleet.running


def test_malformed_share(broker: LocalBroker, fleet_factory: Any, subscriber_factory: Any) -> None:
    watcher = subscriber_factory(broker)
    fleet = fleet_factory(broker, malformed=0.2, qos=1, seed=11)
    fleet.publish(2000)
    wait_for(lambda: len(watcher.messages) >= 2000)
    broken = [payload for payload in watcher.payloads if _is_malformed(payload)]
    assert len(broken) == fleet.malformed_published
    assert 0.16 < len(broken) / 2000 < 0.24
    kinds = {b"": "empty", b"{}": "empty object"}
    seen = {kinds.get(payload, "other") for payload in broken}
    assert seen == {"empty", "empty object", "other"}
    assert any(b"\xff" in payload for payload in broken), "no invalid UTF-8"


def test_publish_count_delivers_exactly_count(
    broker: LocalBroker, fleet_factory: Any, subscriber_factory: Any
) -> None:
    watcher = subscriber_factory(broker)
    fleet = fleet_factory(broker, qos=1, clock=_ticking_clock())
    assert fleet.publish(500) == 500
    assert fleet.published == 500
    # Anything extra would arrive before this last message, which comes from the same stream.
    fleet.publish(1)
    wait_for(lambda: len(watcher.messages) >= 501)
    assert len(watcher.messages) == 501
    assert len(set(watcher.payloads)) == 501


def test_qos1_messages_survive_a_broker_restart(
    fresh_broker: LocalBroker, fleet_factory: Any
) -> None:
    reader = Subscriber.as_publisher(
        fresh_broker.publisher(), client_id="restart-reader", clean_session=False, qos=1
    ).start()
    try:
        fleet = fleet_factory(fresh_broker, qos=1, rate=400, clock=_ticking_clock())
        fleet.start()
        wait_for(lambda: len(reader.messages) >= 50, message="nothing arrived before the restart")
        before = fleet.published
        fresh_broker.restart()
        wait_for(lambda: fleet.published >= before + 200, message="the fleet stalled")
        fleet.stop()  # waits for every PUBACK, including the messages kept during the restart
        assert fleet.dropped == 0
        # QoS 1 is at least once: the restart may duplicate a message, never lose one.
        wait_for(
            lambda: len(set(reader.payloads)) >= fleet.published,
            message=f"{fleet.published - len(set(reader.payloads))} messages were lost",
        )
        assert len(set(reader.payloads)) == fleet.published
        assert len(reader.connects) >= 2, "the reader never lost its connection"
    finally:
        reader.stop()


def test_context_manager_starts_and_stops(broker: LocalBroker) -> None:
    with DeviceFleet(broker.publisher(), rate=500) as fleet:
        assert fleet.running
        wait_for(lambda: fleet.published >= 10)
    assert not fleet.running
    assert "DeviceFleet(" in repr(fleet)


def test_start_fails_without_a_broker() -> None:
    fleet = DeviceFleet(
        PublisherConfig(host="127.0.0.1", port=free_port(), username="p", password="x")
    )
    with pytest.raises(ConnectError, match="cannot reach"):
        fleet.start()
    assert not fleet.running


def test_start_fails_with_a_wrong_password(broker: LocalBroker) -> None:
    config = broker.publisher()
    wrong = PublisherConfig(
        host=config.host, port=config.port, username=config.username, password="x"
    )
    with pytest.raises(AuthError, match="refused"):
        DeviceFleet(wrong).start()
