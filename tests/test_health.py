"""collector.health(): per-device last seen, rate, pace, silence, clock skew and rejects."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tesaiot_data import Collector, Settings
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.demo.fleet import SENSORS, DeviceFleet
from tesaiot_data.errors import ConfigError
from tesaiot_data.messages import RawMessage
from tesaiot_data.monitor.health import HEALTH_COLUMNS, DeviceHealth, device_of_topic
from tesaiot_data.parse.rows import parse_batch
from tesaiot_data.window.rolling import RollingWindow
from tests.helpers import publish_acknowledged, wait_for

pytestmark = pytest.mark.broker


def row(health: pd.DataFrame, device: str) -> pd.Series:
    rows = health[health["device_id"] == device]
    assert len(rows) == 1, f"{device} is not in health() once: {health['device'].tolist()}"
    return rows.iloc[0]


def test_health_lists_every_device_with_its_rate_pace_and_metrics(
    settings: Settings,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
) -> None:
    collector = collectors(settings).start()
    fleet = fleet_factory(devices=3, rate=30, seed=11, mixed_shapes=False).start()

    def enough() -> bool:
        health = collector.health()
        return len(health) == 3 and bool((health["messages"] >= 20).all())

    wait_for(enough, message="every device sent 20 messages")
    health = collector.health()
    assert tuple(health.columns) == HEALTH_COLUMNS
    assert str(health["last_seen"].dtype) == "datetime64[ns, UTC]"
    for name in ("age_s", "msgs_per_s", "usual_interval_s", "clock_skew_s", "reject_share"):
        assert health[name].dtype == np.float64, name
    assert health["silent"].dtype == bool
    assert health["messages"].dtype == np.int64
    assert sorted(health["device_id"]) == sorted(fleet.device_ids)
    assert health["device_id"].tolist() == sorted(fleet.device_ids)  # none silent: by id
    assert not health["silent"].any()
    # Each device publishes 10 msg/s; timing on a shared machine is noisy, bounds generous.
    assert health["msgs_per_s"].between(4, 25).all(), health["msgs_per_s"].tolist()
    assert health["usual_interval_s"].between(0.02, 0.3).all(), health["usual_interval_s"]
    assert (health["age_s"] < 5).all()
    assert (health["reject_share"] == 0).all()
    assert set(health["metrics"]) == {",".join(sorted(SENSORS))}
    assert collector.stats.devices == 3


def test_a_device_that_stops_publishing_becomes_silent_first(
    settings: Settings,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
) -> None:
    collector = collectors(settings).start()
    fleet = fleet_factory(devices=3, rate=30, seed=12, silent_after={1: 0.3}).start()
    quiet = fleet.device_ids[1]

    def quiet_is_silent() -> list[pd.DataFrame]:
        health = collector.health(silent_after="2s")  # 2 s: loaded CI machines stall
        return [health] if len(health) == 3 and health["silent"].iloc[0] else []

    [health] = wait_for(quiet_is_silent, message="the quiet device became silent")
    assert health["device_id"].iloc[0] == quiet
    assert health["silent"].tolist() == [True, False, False]
    assert row(health, quiet)["age_s"] > 2
    # By its own pace (10 msg/s: 5 intervals, at least 5 s) it is not silent yet, unless
    # this machine is very slow; the user's silent_after decides otherwise.
    by_pace = collector.health()
    assert row(by_pace, quiet)["usual_interval_s"] < 1
    assert not row(collector.health(silent_after="1h"), quiet)["silent"]
    with pytest.raises(ConfigError, match="silent_after"):
        collector.health(silent_after="-1s")


def test_clock_skew_is_the_median_device_time_minus_receive_time(
    broker: LocalBroker, settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings).start()
    now = time.time()
    messages: list[tuple[str, Any]] = []
    for i in range(10):
        messages.append(("device/ahead/telemetry/t", {"value": i, "timestamp": now + 120 + i}))
        messages.append(("device/right/telemetry/t", {"value": i, "timestamp": time.time()}))
        messages.append(("device/none/telemetry/t", {"value": i}))  # no device time
    publish_acknowledged(broker.publisher(), messages)
    wait_for(lambda: collector.stats.messages == 30)
    health = collector.health()
    ahead, right, none = (row(health, d) for d in ("ahead", "right", "none"))
    # Each ahead message is stamped 120 s + i after `now`, and sent about i*delay later.
    assert 110 < ahead["clock_skew_s"] < 130
    assert abs(right["clock_skew_s"]) < 5
    assert np.isnan(none["clock_skew_s"])


def test_reject_share_counts_each_devices_malformed_messages(
    settings: Settings,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
) -> None:
    collector = collectors(settings).start()
    fleet = fleet_factory(devices=2, qos=1, seed=5, malformed=0.3)
    fleet.publish(300)
    wait_for(lambda: collector.stats.messages + collector.stats.rejected == 300)
    health = collector.health()
    assert health["messages"].sum() == 300
    assert health["rejected"].sum() == fleet.malformed_published == collector.stats.rejected
    assert np.allclose(health["reject_share"], health["rejected"] / health["messages"])
    assert health["reject_share"].between(0.1, 0.5).all()


def test_a_device_sending_only_garbage_is_seen_with_a_reject_share_of_one(
    broker: LocalBroker, settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings).start()
    publish_acknowledged(broker.publisher(), [("device/broken/telemetry/t", b"not json")] * 3)
    wait_for(lambda: collector.stats.rejected == 3)
    broken = row(collector.health(), "broken")
    assert broken["messages"] == broken["rejected"] == 3
    assert broken["reject_share"] == 1.0
    assert broken["metrics"] == ""


def raw(device: str, second: float, body: Any = None, *, retain: bool = False) -> RawMessage:
    payload = json.dumps({"value": 1.0} if body is None else body).encode()
    return RawMessage(f"device/{device}/telemetry/t", payload, round(second * 1e9), retain)


def feed(health: DeviceHealth, messages: list[RawMessage]) -> None:
    window = RollingWindow(window_ns=None, max_rows=100_000)
    batch = parse_batch(messages)
    health.observe(window.append(batch), batch.rejects)


def test_memory_is_bounded_by_devices_the_least_recently_seen_go_first() -> None:
    health = DeviceHealth(max_devices=5, forget_after=60)
    t0 = 1_765_276_245.0
    feed(health, [raw(f"d{i}", t0 + i) for i in range(20)])
    assert health.devices == 5
    assert health.evicted == 15
    frame = health.frame(now_ns=round((t0 + 20) * 1e9))
    assert sorted(frame["device_id"]) == [f"d{i}" for i in range(15, 20)]
    # A message keeps a device; 60 s later only it is left.
    feed(health, [raw("d15", t0 + 70)])
    assert health.evict(round((t0 + 90) * 1e9)) == 4
    assert list(health.last_seen()) == ["d15"]
    assert health.evicted == 19


def test_rates_and_intervals_from_exact_receive_times() -> None:
    health = DeviceHealth()
    t0 = 1_765_276_245.0
    # Two messages a second for 100 s (the rate looks at the last minute), then silence.
    feed(health, [raw("pace", t0 + i / 2, {"value": i, "ts": t0 + i / 2 - 3}) for i in range(200)])
    frame = health.frame(now_ns=round((t0 + 100) * 1e9))
    pace = row(frame, "pace")
    assert pace["usual_interval_s"] == pytest.approx(0.5)
    assert 1.8 <= pace["msgs_per_s"] <= 2.2
    assert pace["clock_skew_s"] == pytest.approx(-3, abs=0.01)
    assert not pace["silent"]
    later = row(health.frame(now_ns=round((t0 + 106) * 1e9)), "pace")
    assert later["silent"]  # 5 intervals of 0.5 s, but at least SILENT_FLOOR_S = 5 s
    assert later["age_s"] == pytest.approx(6.5)
    assert later["msgs_per_s"] < pace["msgs_per_s"]


def test_retained_replays_are_not_signs_of_life(
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings)
    t0 = time.time()
    collector.ingest([raw("live", t0), raw("stored", t0 + 0.001, retain=True)])
    health = collector.health()
    assert health["device_id"].tolist() == ["live"]


def test_empty_health_has_the_columns_and_dtypes() -> None:
    frame = DeviceHealth().frame(now_ns=time.time_ns())
    assert tuple(frame.columns) == HEALTH_COLUMNS
    assert frame.empty
    assert str(frame["last_seen"].dtype) == "datetime64[ns, UTC]"
    assert frame["silent"].dtype == bool


def test_device_of_topic() -> None:
    assert device_of_topic("device/a-1/telemetry/t") == "a-1"
    assert device_of_topic("device/a") == "a"
    assert device_of_topic("device//telemetry") is None
    assert device_of_topic("sensors/a/telemetry") is None


def test_fleet_silent_after_checks_its_devices(broker: LocalBroker) -> None:
    with pytest.raises(ConfigError, match="not one of this fleet's devices"):
        DeviceFleet(broker.publisher(), devices=2, silent_after={"dev-9": 1.0})
    with pytest.raises(ConfigError, match="index 2"):
        DeviceFleet(broker.publisher(), devices=2, silent_after={2: 1.0})
    with pytest.raises(ConfigError, match="seconds"):
        DeviceFleet(broker.publisher(), devices=2, silent_after={0: -1.0})
    fleet = DeviceFleet(broker.publisher(), devices=2, silent_after={0: 0.0}, mixed_shapes=False)
    pairs = fleet.take(10)
    assert len(pairs) == 5
    assert {topic.split("/")[1] for topic, _ in pairs} == {fleet.device_ids[1]}
    assert fleet.published == 5
