"""A replay with `shift_to_now` at any speed: device time follows the replay's clock.

The collector's clock-skew check (`clock_skew`, `stats.clock_skew_rows`, the "wrong device
clock" warning) must not fire on the product's own replays; at speed 1 every row still moves
by one offset, spacing kept.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tesaiot_data.collector.collector import Collector
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.files.parquet import write_frame
from tesaiot_data.replay import replay
from tesaiot_data.schema import to_canonical
from tesaiot_data.settings import Settings
from tests.helpers import wait_for

pytestmark = pytest.mark.broker

T0 = pd.Timestamp("2025-12-09T10:30:45.123456789Z").value
SECOND = 1_000_000_000


def recording(
    device: str, *, step_ns: int, count: int, skewed: dict[int, int] | None = None
) -> pd.DataFrame:
    """`count` two-metric messages `step_ns` apart; `skewed` adds ns to some device times."""
    rows = []
    for index in range(count):
        for metric, value in (("temperature", 20.0 + index), ("humidity", 50.5)):
            rows.append(
                {
                    "timestamp": T0 + index * step_ns + (skewed or {}).get(index, 0),
                    "received_at": T0 + 2_000_000 + index * step_ns,  # 2 ms on the way
                    "device_id": device,
                    "sensor_type": "env",
                    "metric": metric,
                    "value": value,
                    "unit": None,
                    "value_text": None,
                }
            )
    frame = pd.DataFrame(rows)
    for name in ("timestamp", "received_at"):
        frame[name] = pd.to_datetime(frame[name], unit="ns", utc=True)
    return to_canonical(frame)


def as_publisher(broker: LocalBroker) -> dict[str, Any]:
    publisher = broker.publisher()
    return {
        "settings": broker.settings(),
        "broker_url": f"mqtt://{publisher.host}:{publisher.port}",
        "username": publisher.username,
        "password": publisher.password,
    }


def collect(collectors: Callable[..., Collector], settings: Settings, **options: Any) -> Collector:
    return collectors(settings.replace(client_id=f"skew-{uuid.uuid4().hex[:8]}"), **options)


def rows_of(collector: Collector, device: str, rows: int) -> pd.DataFrame:
    def arrived() -> bool:
        frame = collector.frame()
        return int((frame["device_id"] == device).sum()) >= rows

    wait_for(arrived, message=f"fewer than {rows} rows of {device} arrived")
    assert collector.wait_idle()
    frame = collector.frame()
    return frame[frame["device_id"] == device]


def test_a_60x_replay_shifted_to_now_raises_no_clock_skew(
    broker: LocalBroker, settings: Settings, collectors: Callable[..., Collector], tmp_path: Path
) -> None:
    # A minute recorded, replayed in one second: before the fix the last rows' device times
    # ran 59 s ahead of their arrival, and the collector blamed "a wrong device clock".
    device = f"skew-{uuid.uuid4().hex[:8]}"
    path = write_frame(recording(device, step_ns=SECOND, count=61), tmp_path / "minute.parquet")
    collector = collect(collectors, settings, clock_skew="5s").start()
    before = time.time_ns()
    result = replay(path, speed=60, shift_to_now=True, qos=1, **as_publisher(broker))
    after = time.time_ns()
    assert result.rows == 122
    frame = rows_of(collector, device, 122)
    assert collector.stats.clock_skew_rows == 0
    stamps = frame["timestamp"].array.asi8
    received = frame["received_at"].array.asi8
    assert before <= stamps.min() <= stamps.max() <= after + SECOND
    # Device time follows the replay's pace: within a second of the receive time throughout.
    assert np.abs(stamps - received).max() < SECOND
    # The order of the readings is the recorded one, their spacing divided by the speed.
    ordered = frame.sort_values("timestamp")
    assert list(ordered.loc[ordered["metric"] == "temperature", "value"]) == [
        20.0 + index for index in range(61)
    ]
    gaps = np.diff(np.unique(stamps))
    assert np.allclose(gaps, SECOND / 60, atol=1_000)


def test_a_device_clock_wrong_in_the_recording_stays_wrong_in_a_fast_replay(
    broker: LocalBroker, settings: Settings, collectors: Callable[..., Collector], tmp_path: Path
) -> None:
    # The replay removes only its own speed-up: a message whose device clock was 30 s off
    # when recorded is 30 s off when replayed, and the check counts its two rows.
    device = f"skew-{uuid.uuid4().hex[:8]}"
    frame = recording(device, step_ns=SECOND, count=31, skewed={10: 30 * SECOND})
    path = write_frame(frame, tmp_path / "wrong-clock.parquet")
    collector = collect(collectors, settings, clock_skew="10s").start()
    replay(path, speed=30, shift_to_now=True, qos=1, **as_publisher(broker))
    rows_of(collector, device, 62)
    assert collector.stats.clock_skew_rows == 2


def test_at_speed_1_shift_to_now_moves_every_row_by_one_offset(
    broker: LocalBroker, settings: Settings, collectors: Callable[..., Collector], tmp_path: Path
) -> None:
    device = f"skew-{uuid.uuid4().hex[:8]}"
    original = recording(device, step_ns=200_000_123, count=4, skewed={2: 7_000})
    path = write_frame(original, tmp_path / "one.parquet")
    collector = collect(collectors, settings).start()
    before = time.time_ns()
    replay(path, shift_to_now=True, qos=1, **as_publisher(broker))
    after = time.time_ns()
    frame = rows_of(collector, device, 8)
    stamps = np.sort(frame["timestamp"].array.asi8)
    old = np.sort(original["timestamp"].array.asi8)
    assert before <= stamps[0] <= after
    np.testing.assert_array_equal(stamps - stamps[0], old - old[0])
    assert collector.stats.clock_skew_rows == 0


def test_without_shift_to_now_a_fast_replay_keeps_the_recorded_times(
    broker: LocalBroker, settings: Settings, collectors: Callable[..., Collector], tmp_path: Path
) -> None:
    device = f"skew-{uuid.uuid4().hex[:8]}"
    original = recording(device, step_ns=SECOND, count=5)
    path = write_frame(original, tmp_path / "kept.parquet")
    collector = collect(collectors, settings).start()
    replay(path, speed=50, qos=1, **as_publisher(broker))
    frame = rows_of(collector, device, 10)
    np.testing.assert_array_equal(
        np.sort(frame["timestamp"].array.asi8), np.sort(original["timestamp"].array.asi8)
    )
