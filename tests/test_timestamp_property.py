"""A device time carried in an MQTT 5 user property (`timestamp_property`), against Mosquitto."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tesaiot_data import Collector, ConfigError
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.messages import RawMessage
from tesaiot_data.mqtt._paho import PAHO_V2, new_client
from tesaiot_data.mqtt.inbox import DurableInbox
from tests.helpers import wait_for

pytestmark = pytest.mark.skipif(not PAHO_V2, reason="user properties need paho-mqtt 2")


def publish_v5(
    broker: LocalBroker, messages: list[tuple[str, dict[str, object], str | None]]
) -> None:
    """Publish JSON payloads at QoS 1 over MQTT 5, each with a `ts` user property if given."""
    from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415
    from paho.mqtt.properties import Properties  # noqa: PLC0415

    publisher = broker.publisher()
    client = new_client(f"test-v5-{uuid.uuid4().hex[:8]}", protocol="5")
    client.username_pw_set(publisher.username, publisher.password)
    client.connect(publisher.host, publisher.port, keepalive=30)
    client.loop_start()
    try:
        for topic, body, stamp in messages:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if stamp is not None:
                properties.UserProperty = ("ts", stamp)
            info = client.publish(topic, json.dumps(body), qos=1, properties=properties)
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.broker
def test_the_user_property_gives_the_time_of_rows_whose_payload_has_none(
    broker: LocalBroker, collectors: Callable[..., Collector]
) -> None:
    settings = broker.settings(client_id=f"test-{uuid.uuid4().hex[:8]}", protocol="5")
    collector = collectors(settings, timestamp_property="ts").start()
    publish_v5(
        broker,
        [
            ("device/p1/telemetry/t", {"value": 1.0}, "2025-01-02T03:04:05Z"),
            ("device/p1/telemetry/t", {"value": 2.0}, "1735787045123"),  # epoch ms
            (
                "device/p1/telemetry/t",
                {"value": 3.0, "timestamp": "2025-06-01T00:00:00Z"},
                "2025-01-02T03:04:05Z",
            ),  # the payload's own time wins
            ("device/p1/telemetry/t", {"value": 4.0}, None),  # none: the receive time
            ("device/p1/telemetry/t", {"value": 5.0}, "not a time"),  # unreadable: the same
        ],
    )
    wait_for(lambda: len(collector.frame()) >= 5, message="the readings did not arrive")
    frame = collector.frame().set_index("value")
    assert frame.loc[1.0, "timestamp"] == pd.Timestamp("2025-01-02T03:04:05Z")
    assert frame.loc[2.0, "timestamp"] == pd.Timestamp("2025-01-02T03:04:05.123Z")
    assert frame.loc[3.0, "timestamp"] == pd.Timestamp("2025-06-01T00:00:00Z")
    for value in (4.0, 5.0):
        assert frame.loc[value, "timestamp"] == frame.loc[value, "received_at"]
    assert collector.stats.timestamp_fallbacks == 2


@pytest.mark.broker
def test_without_the_option_the_property_is_ignored(
    broker: LocalBroker, collectors: Callable[..., Collector]
) -> None:
    settings = broker.settings(client_id=f"test-{uuid.uuid4().hex[:8]}", protocol="5")
    collector = collectors(settings).start()
    publish_v5(broker, [("device/p2/telemetry/t", {"value": 1.0}, "2025-01-02T03:04:05Z")])
    wait_for(lambda: len(collector.frame()) >= 1, message="the reading did not arrive")
    row = collector.frame().iloc[0]
    assert row["timestamp"] == row["received_at"]


def test_the_durable_inbox_keeps_the_device_time(tmp_path: Path) -> None:
    inbox = DurableInbox(tmp_path)
    sent = [
        RawMessage("device/a/telemetry/t", b"{}", 5, False, 1_735_787_045_000_000_000),
        RawMessage("device/a/telemetry/t", b"{}", 6, True, None),
    ]
    inbox.append(sent)
    inbox.close()
    again = DurableInbox(tmp_path)
    assert [m for _, batch in again.recover() for m in batch] == sent
    again.close()


@pytest.mark.broker
def test_record_takes_flush_every_as_a_duration(
    broker: LocalBroker, tmp_path: Path, collectors: Callable[..., Collector]
) -> None:
    settings = broker.settings(client_id=f"test-{uuid.uuid4().hex[:8]}", protocol="5")
    collector = collectors(settings).start()
    with pytest.raises(ConfigError, match="flush_every"):
        collector.record(tmp_path / "s.parquet", flush_every="soon")
    recording = collector.record(tmp_path / "r.parquet", flush_every="100ms")
    publish_v5(broker, [("device/p3/telemetry/t", {"value": 1.0}, None)])
    # a part reaches disk while the recording runs: flushed every 0.1 s, not every 5
    wait_for(lambda: recording.rows_on_disk >= 1, message="no part was flushed")
    recording.stop()
