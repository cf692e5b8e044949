"""health(): a device that publishes one topic per sensor is paced by its updates, not bursts.

ESPHome, Tasmota and Home Assistant publish each sensor on its own topic, all within a
millisecond (home-assistant/core#65558); the usual interval is the time between updates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pandas as pd
import pytest

from tesaiot_data import Collector, Settings
from tesaiot_data.messages import RawMessage
from tesaiot_data.monitor.health import BURST_GAP_S, SILENT_FACTOR, SILENT_UNKNOWN_S

T0 = 1_765_276_245.0  # 2025-12-09T10:30:45Z
INSIDE_BURST_S = 0.0007  # the gap between the topics of one update, as measured


def burst(device: str, at: float, sensors: int) -> list[RawMessage]:
    """One update: a message per sensor, `INSIDE_BURST_S` apart, from receive time `at`."""
    return [
        RawMessage(
            f"device/{device}/telemetry/sensor_{i}",
            json.dumps({"value": 20.0 + i}).encode(),
            round((at + i * INSIDE_BURST_S) * 1e9),
        )
        for i in range(sensors)
    ]


def health_at(collector: Collector, second: float) -> pd.DataFrame:
    return collector.ingest.health.frame(now_ns=round((T0 + second) * 1e9))


def row(frame: pd.DataFrame, device: str) -> pd.Series:
    rows = frame[frame["device_id"] == device]
    assert len(rows) == 1, frame["device_id"].tolist()
    return rows.iloc[0]


@pytest.mark.parametrize(
    ("sensors", "every_s", "batched"),
    [
        (6, 10.0, True),  # the example: six topics per update, one update every 10 s
        (6, 10.0, False),  # each message its own batch: the burst spans batches
        (40, 60.0, True),  # more topics per update than the ring keeps messages
        (2, 1.0, False),  # a fast updater: silent after the 5 s floor, not 5 intervals
    ],
)
def test_a_bursting_device_is_paced_by_its_updates(
    settings: Settings,
    collectors: Callable[..., Collector],
    sensors: int,
    every_s: float,
    batched: bool,
) -> None:
    collector = collectors(settings)
    updates = 8
    for k in range(updates):
        messages = burst("esphome", T0 + k * every_s, sensors)
        if batched:
            collector.ingest(messages)
        else:
            for message in messages:
                collector.ingest([message])
    last = (updates - 1) * every_s + (sensors - 1) * INSIDE_BURST_S
    limit = max(SILENT_FACTOR * every_s, 5.0)
    soon = row(health_at(collector, last + min(6.0, limit - 1)), "esphome")
    assert soon["usual_interval_s"] == pytest.approx(every_s, abs=0.01)
    assert not soon["silent"]  # today: silent 5 s after every update
    assert soon["messages"] == updates * sensors
    assert soon["metrics"] == ",".join(sorted(f"sensor_{i}" for i in range(sensors)))
    assert not row(health_at(collector, last + limit - 0.5), "esphome")["silent"]
    assert row(health_at(collector, last + limit + 0.5), "esphome")["silent"]


def test_after_its_first_burst_a_device_has_no_pace_yet(
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings)
    collector.ingest(burst("new", T0, 6))
    first = row(health_at(collector, 6.0), "new")
    assert math.isnan(first["usual_interval_s"])
    assert not first["silent"]  # judged by SILENT_UNKNOWN_S, not by the burst's gaps
    assert row(health_at(collector, SILENT_UNKNOWN_S + 1), "new")["silent"]


def test_a_steady_fast_stream_keeps_its_message_pace(
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    # 100 messages a second for 3 s: every gap is inside BURST_GAP_S, yet it is no burst.
    step = 0.01
    assert step < BURST_GAP_S
    collector = collectors(settings)
    collector.ingest(
        [
            RawMessage("device/fast/telemetry/t", b'{"value": 1}', round((T0 + i * step) * 1e9))
            for i in range(300)
        ]
    )
    fast = row(health_at(collector, 3.0), "fast")
    assert fast["usual_interval_s"] == pytest.approx(step, rel=0.01)
    assert not fast["silent"]
    assert row(health_at(collector, 3.0 + 5.5), "fast")["silent"]  # the 5 s floor


def test_bursting_and_steady_devices_side_by_side_in_one_batch(
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings)
    messages: list[RawMessage] = []
    for k in range(10):
        messages += burst("tasmota", T0 + 5 * k, 4)
        messages.append(
            RawMessage("device/plain/telemetry/t", b'{"value": 1}', round((T0 + 5 * k) * 1e9))
        )
    messages.sort(key=lambda m: m.received_ns)
    collector.ingest(messages)
    frame = health_at(collector, 45 + 7)
    assert row(frame, "tasmota")["usual_interval_s"] == pytest.approx(5, abs=0.01)
    assert row(frame, "plain")["usual_interval_s"] == pytest.approx(5)
    assert not frame["silent"].any()
