"""collector.alert() and alerts(): thresholds, for_, silence, callbacks, recordings."""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tesaiot_data import Collector, ConfigError, Settings, load_recording
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.messages import RawMessage
from tesaiot_data.monitor.alerts import AlertEngine
from tesaiot_data.monitor.events import ALERT_COLUMNS, AlertEvent
from tesaiot_data.monitor.rules import AlertRule
from tesaiot_data.monitor.sidecar import alerts_sidecar, load_alerts
from tests.helpers import publish_acknowledged, wait_for

pytestmark = pytest.mark.broker

T0 = 1_765_276_245.0  # 2025-12-09T10:30:45Z


def readings(device: str, values: Sequence[float], metric: str = "temperature") -> list[Any]:
    return [(f"device/{device}/telemetry/{metric}", {"value": v}) for v in values]


def events_of(frame: pd.DataFrame, device: str) -> list[tuple[str, float]]:
    mine = frame[frame["device_id"] == device]
    return list(zip(mine["state"].astype(str), mine["value"], strict=True))


class Calls:
    """A callback that keeps its events (called on the housekeeping thread)."""

    def __init__(self) -> None:
        self.events: list[AlertEvent] = []
        self.threads: set[str] = set()

    def __call__(self, event: AlertEvent) -> None:
        self.events.append(event)
        self.threads.add(threading.current_thread().name)


def test_above_fires_once_and_clears_once_per_device(
    broker: LocalBroker,
    settings: Settings,
    collectors: Callable[..., Collector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tesaiot_data.monitor.alerts")
    collector = collectors(settings).start()
    calls = Calls()
    collector.alert("hot", metric="temperature", above=50, callback=calls)
    values = [20, 60, 70, 65, 20, 10]
    publish_acknowledged(
        broker.publisher(),
        readings("a", values) + readings("b", values) + readings("a", [99], metric="humidity"),
    )
    wait_for(lambda: len(calls.events) == 4, message="four events reached the callback")
    alerts = collector.alerts()
    assert tuple(alerts.columns) == ALERT_COLUMNS
    assert str(alerts["time"].dtype) == "datetime64[ns, UTC]"
    assert alerts["time"].is_monotonic_increasing
    for device in ("a", "b"):
        assert events_of(alerts, device) == [("firing", 60.0), ("cleared", 20.0)]
    assert set(alerts["rule"]) == {"hot"}
    assert set(alerts["metric"]) == {"temperature"}
    assert [(e.device, e.state) for e in calls.events] == [
        ("a", "firing"),
        ("a", "cleared"),
        ("b", "firing"),
        ("b", "cleared"),
    ]
    assert calls.threads == {"tesaiot-collector-housekeeping"}
    assert collector.stats.alert_events == 4
    assert collector.alerts(active=True).empty
    assert collector.alerts(since=pd.Timestamp.now(tz="UTC") + pd.Timedelta("1s")).empty
    logged = [r for r in caplog.records if r.name == "tesaiot_data.monitor.alerts"]
    assert [r.levelno for r in logged] == [logging.WARNING, logging.INFO] * 2
    assert "'hot' firing for device a temperature=60" in logged[0].getMessage()


def test_below_and_devices_filter_and_the_active_alerts(
    broker: LocalBroker, settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings).start()
    collector.alert("low-battery", metric="battery", below=3.5, devices=["a"])
    collector.alert("band", metric="battery", below=3.0, above=4.5)
    publish_acknowledged(
        broker.publisher(),
        readings("a", [3.9, 3.4, 3.3], metric="battery")
        + readings("b", [3.4, 4.6], metric="battery"),
    )
    wait_for(lambda: collector.stats.messages == 5)
    alerts = collector.alerts()
    low = alerts[alerts["rule"] == "low-battery"]
    assert events_of(low, "a") == [("firing", 3.4)]
    assert events_of(low, "b") == []  # not in devices=
    band = alerts[alerts["rule"] == "band"]
    assert events_of(band, "b") == [("firing", 4.6)]
    active = collector.alerts(active=True)
    assert sorted(zip(active["rule"].astype(str), active["device_id"], strict=True)) == [
        ("band", "b"),
        ("low-battery", "a"),
    ]


def ingest(collector: Collector, device: str, points: list[tuple[float, float]]) -> None:
    """Feed rows straight to the worker's entry point, with exact receive times."""
    collector.ingest(
        [
            RawMessage(
                f"device/{device}/telemetry/temperature",
                json.dumps({"value": v}).encode(),
                round((T0 + t) * 1e9),
            )
            for t, v in points
        ]
    )


def test_for_fires_only_once_the_breach_lasted_that_long_by_receive_time(
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings)
    collector.alert("hot-2s", metric="temperature", above=50, for_="2s")
    # A 1.5 s breach: nothing. Then a breach from t=10 that lasts: fires at t=12, over
    # three batches; back in range at t=14.
    ingest(collector, "a", [(0, 20), (1, 60), (2, 61), (2.5, 62), (3, 20)])
    assert collector.alerts().empty
    ingest(collector, "a", [(10, 60), (11, 70)])
    assert collector.alerts().empty
    ingest(collector, "a", [(11.5, 70), (12, 71), (13, 72)])
    ingest(collector, "a", [(14, 20), (15, 80)])
    alerts = collector.alerts()
    assert events_of(alerts, "a") == [("firing", 71.0), ("cleared", 20.0)]
    assert alerts["time"].tolist() == [
        pd.Timestamp(T0 + 12, unit="s", tz="UTC"),
        pd.Timestamp(T0 + 14, unit="s", tz="UTC"),
    ]
    # A device's breach does not carry over to another.
    ingest(collector, "b", [(20, 60), (30, 20)])
    assert events_of(collector.alerts(), "b") == []


def test_a_silent_rule_fires_and_clears_when_the_device_returns(
    broker: LocalBroker,
    settings: Settings,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
) -> None:
    collector = collectors(settings).start()
    calls = Calls()
    collector.alert("gone", silent="2s", callback=calls)  # 2 s: loaded CI machines stall
    collector.alert("never-seen", silent="1s", devices=["ghost"])
    fleet = fleet_factory(devices=2, rate=20, seed=21, silent_after={0: 0.3}).start()
    quiet, busy = fleet.device_ids

    def fired() -> bool:
        return any(e.device == quiet and e.state == "firing" for e in calls.events)

    wait_for(fired, message="the silent alert fired")
    publish_acknowledged(broker.publisher(), readings(quiet, [21.5]))
    wait_for(lambda: len(calls.events) == 2, message="the silent alert cleared")
    fleet.stop()
    alerts = collector.alerts()
    gone = alerts[alerts["rule"] == "gone"]
    assert events_of(gone, quiet)[0] == ("firing", 2.0)
    assert [state for state, _ in events_of(gone, quiet)] == ["firing", "cleared"]
    assert events_of(gone, quiet)[1][1] > 2.0  # the silence lasted that long
    assert events_of(gone, busy) == []  # 10 msg/s: never 2 s quiet (on a sane machine)
    assert gone["metric"].isna().all()
    assert alerts["metric"].dtype == pd.Series(["x"], dtype=str).dtype  # missing as NaN, not None
    ghost = alerts[alerts["rule"] == "never-seen"]
    assert events_of(ghost, "ghost") == [("firing", 1.0)]


def test_a_raising_callback_is_contained_logged_once_and_counted(
    broker: LocalBroker,
    settings: Settings,
    collectors: Callable[..., Collector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = collectors(settings).start()

    def broken(event: AlertEvent) -> None:
        raise RuntimeError(f"boom at {event.device}")

    calls = Calls()
    collector.alert("broken", metric="temperature", above=50, callback=broken)
    collector.alert("fine", metric="temperature", above=50, callback=calls)
    publish_acknowledged(broker.publisher(), readings("a", [60, 20, 60]) + readings("b", [70]))
    wait_for(lambda: len(calls.events) == 4, message="the other rule's callback ran")
    wait_for(lambda: collector.stats.alert_callback_errors == 4)
    failures = [r for r in caplog.records if "callback of alert 'broken'" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert len(collector.alerts()) == 8
    assert collector.running  # collection goes on
    publish_acknowledged(broker.publisher(), readings("c", [1]))
    wait_for(lambda: collector.stats.messages == 5)


def test_alert_arguments_are_checked(settings: Settings) -> None:
    collector = Collector(settings)
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "no condition"),
        ({"above": 1}, "no metric"),
        ({"metric": "t", "above": 1, "silent": "1s"}, "both a threshold and silent"),
        ({"metric": "t", "silent": "1s"}, "watches whole devices"),
        ({"metric": "t", "above": 1, "below": 2}, "must be less than"),
        ({"metric": "t", "above": float("nan")}, "finite"),
        ({"metric": "t", "above": True}, "finite"),
        ({"metric": "t", "above": 1, "for_": "soon"}, "not a duration"),
        ({"silent": "0s"}, "positive"),
        ({"metric": "t", "above": 1, "devices": []}, "one or more device ids"),
        ({"metric": "t", "above": 1, "callback": 3}, "not callable"),
    ]
    for options, match in cases:
        with pytest.raises(ConfigError, match=match):
            collector.alert("x", **options)
    collector.alert("x", metric="t", above=1, for_=0)
    with pytest.raises(ConfigError, match="exists") as caught:
        collector.alert("x", silent="5s")
    assert "replace=True" in str(caught.value)
    collector.alert("x", silent="5s", replace=True)
    assert collector.remove_alert("x")
    assert not collector.remove_alert("x")


def test_alert_events_are_written_beside_the_recording(
    broker: LocalBroker,
    settings: Settings,
    collectors: Callable[..., Collector],
    tmp_path: Path,
) -> None:
    collector = collectors(settings).start()
    collector.alert("hot", metric="temperature", above=50)
    publish_acknowledged(broker.publisher(), readings("before", [60]))  # before the recording
    wait_for(lambda: collector.stats.alert_events == 1)
    recording = collector.record(tmp_path / "session.parquet")
    publish_acknowledged(broker.publisher(), readings("a", [20, 60, 20]) + readings("b", [70]))
    wait_for(lambda: collector.stats.alert_events == 4)
    path = recording.stop()
    assert len(load_recording(path)) == 4
    sidecar = alerts_sidecar(path)
    assert sidecar == tmp_path / "session.alerts.parquet"
    written = load_alerts(path)
    expected = collector.alerts()
    expected = expected[expected["device_id"] != "before"].reset_index(drop=True)
    pd.testing.assert_frame_equal(written, expected)
    assert list(written["device_id"]) == ["a", "a", "b"]
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically

    # A quiet recording still says "no alerts"; one stopped by collector.stop() too.
    quiet = collector.record(tmp_path / "quiet.parquet")
    assert load_alerts(quiet.stop()).empty
    last = collector.record(tmp_path / "last.parquet")
    publish_acknowledged(broker.publisher(), readings("c", [90]))
    wait_for(lambda: collector.stats.alert_events == 5)
    collector.stop()
    assert events_of(load_alerts(last.path), "c") == [("firing", 90.0)]


def test_no_alert_rules_no_alerts_file(
    settings: Settings, collectors: Callable[..., Collector], tmp_path: Path
) -> None:
    collector = collectors(settings).start()
    path = collector.record(tmp_path / "plain.parquet").stop()
    assert not alerts_sidecar(path).exists()
    with pytest.raises(FileNotFoundError):
        load_alerts(path)


def test_events_beyond_the_limit_are_dropped_and_counted(
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings)
    collector.ingest.alerts = AlertEngine(max_events=3)
    collector.alert("hot", metric="temperature", above=50)
    ingest(collector, "a", [(i, 60 if i % 2 else 20) for i in range(12)])
    stats = collector.stats
    assert stats.alert_events == 11
    assert stats.alert_events_dropped == 8
    assert len(collector.alerts()) == 3


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("for_", float("inf")),
        ("for_", float("nan")),
        ("for_", -5),
        ("for_", 1e300),
        ("for_", "inf"),
        ("for_", pd.Timedelta.max),
        ("for_", "40000D"),
        ("silent", float("inf")),
        ("silent", float("nan")),
        ("silent", -1),
        ("silent", 10**30),
        ("silent", pd.Timedelta.max),
        ("silent", "-5min"),
    ],
)
def test_an_alert_duration_out_of_range_is_refused_where_the_rule_is_made(
    settings: Settings, option: str, value: object
) -> None:
    collector = Collector(settings)
    options: dict[str, Any] = (
        {"metric": "t", "above": 1, "for_": value} if option == "for_" else {"silent": value}
    )
    with pytest.raises(ConfigError, match=f"^{option}=") as caught:
        collector.alert("x", **options)
    assert "36,500 days" in str(caught.value)  # the valid range
    assert collector.remove_alert("x") is False  # nothing was added


def test_a_rule_that_fails_to_evaluate_never_stops_the_others(
    settings: Settings,
    collectors: Callable[..., Collector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # AlertRule.make refuses these durations; built by hand they stand for any rule whose
    # evaluation raises. Each comes first, before a good rule of its kind.
    collector = collectors(settings)
    engine = collector.ingest.alerts
    engine.add(AlertRule("broken-hot", metric="temperature", above=50, for_s=math.inf), now_ns=0)
    engine.add(AlertRule("broken-gone", silent_s=math.inf), now_ns=0)
    collector.alert("hot", metric="temperature", above=50)
    collector.alert("gone", silent="1s")
    ingest(collector, "a", [(0, 60), (1, 70)])
    ingest(collector, "a", [(2, 20), (3, 80)])
    now = round((T0 + 10) * 1e9)
    for _ in range(2):
        engine.evaluate_silence({"a": round((T0 + 3) * 1e9)}, now_ns=now, listening_since_ns=0)
    alerts = collector.alerts()
    assert set(alerts["rule"]) == {"hot", "gone"}
    hot = alerts[alerts["rule"] == "hot"]
    assert events_of(hot, "a") == [("firing", 60.0), ("cleared", 20.0), ("firing", 80.0)]
    assert events_of(alerts[alerts["rule"] == "gone"], "a") == [("firing", 1.0)]
    assert collector.stats.alert_rule_errors == 4  # two batches, two silence checks
    failures = [r for r in caplog.records if "could not be evaluated" in r.getMessage()]
    assert sorted(r.getMessage().split("'")[1] for r in failures) == ["broken-gone", "broken-hot"]
    assert all(r.exc_info is not None for r in failures)  # once per rule, with its traceback
