"""Alerts mean what the user means: a state of what fires, damped flapping, bounded logging.

A reading that hovers at a threshold (29.9 / 30.1 around above=30) made one event and one
WARNING line per reading and pushed another device's still-firing alert out of
`alerts(active=True)` (grafana/grafana#6202).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tesaiot_data import Collector, ConfigError, Settings
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.messages import RawMessage
from tesaiot_data.monitor.alerts import LOG_EVENTS_PER_MIN, MAX_EVENTS
from tesaiot_data.monitor.events import ALERT_COLUMNS
from tesaiot_data.monitor.sidecar import load_alerts
from tests.helpers import publish_acknowledged, wait_for

T0 = 1_765_276_245.0  # 2025-12-09T10:30:45Z
LOGGER = "tesaiot_data.monitor.alerts"


def ingest(
    collector: Collector, device: str, points: Sequence[tuple[float, float]], metric: str = "t"
) -> None:
    """Feed rows to the worker's entry point with exact receive times (s after T0)."""
    collector.ingest(
        [
            RawMessage(
                f"device/{device}/telemetry/{metric}",
                json.dumps({"value": v}).encode(),
                round((T0 + t) * 1e9),
            )
            for t, v in points
        ]
    )


def hover(count: int, start: float = 0.0, step: float = 0.1) -> list[tuple[float, float]]:
    """`count` readings alternating 30.1 / 29.9, `step` seconds apart."""
    return [(start + i * step, 30.1 if i % 2 == 0 else 29.9) for i in range(count)]


def states(frame: pd.DataFrame, device: str) -> list[tuple[str, float]]:
    mine = frame[frame["device_id"] == device]
    return list(zip(mine["state"].astype(str), mine["value"], strict=True))


def warnings_of(caplog: pytest.LogCaptureFixture, rule: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and f"'{rule}'" in r.getMessage()
    ]


def test_a_firing_alert_stays_active_however_many_events_another_device_makes(
    settings: Settings, collectors: Callable[..., Collector], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    collector = collectors(settings)
    collector.alert("hot", metric="t", above=30)
    ingest(collector, "steady", [(0, 35.0)])  # fires, and stays firing
    readings = MAX_EVENTS + 101  # more events than the store keeps
    ingest(collector, "hovering", hover(readings, start=1))
    assert collector.stats.alert_events == 1 + readings
    assert len(collector.alerts()) == MAX_EVENTS  # the store is a window of events ...
    active = collector.alerts(active=True)  # ... the active list is a state
    assert sorted(active["device_id"]) == ["hovering", "steady"]
    assert states(active, "steady") == [("firing", 35.0)]
    assert active["time"].is_monotonic_increasing
    assert collector.alerts(active=True, since=pd.Timestamp(T0 + 0.5, unit="s", tz="UTC"))[
        "device_id"
    ].tolist() == ["hovering"]

    # Logging is bounded per rule: LOG_EVENTS_PER_MIN lines, then one that counts the rest.
    engine = collector.ingest.alerts
    assert engine.dispatch() == 1 + readings
    lines = [r for r in caplog.records if r.name == LOGGER]
    assert len(lines) == LOG_EVENTS_PER_MIN
    assert "counted, not logged" in lines[-1].getMessage()
    engine.flush_log(now=time.monotonic() + 61)
    summary = [r for r in caplog.records if r.name == LOGGER][-1]
    assert summary.levelno == logging.WARNING
    assert f"{1 + readings - LOG_EVENTS_PER_MIN} more events" in summary.getMessage()
    assert "hysteresis=" in summary.getMessage()


def test_each_rule_has_its_own_log_budget(
    settings: Settings, collectors: Callable[..., Collector], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    collector = collectors(settings)
    collector.alert("flappy", metric="t", above=30)
    collector.alert("rare", metric="h", above=90)
    ingest(collector, "a", hover(100))
    ingest(collector, "a", [(20, 95.0)], metric="h")
    collector.ingest.alerts.dispatch()
    assert len([r for r in caplog.records if "'flappy'" in r.getMessage()]) == LOG_EVENTS_PER_MIN
    assert len(warnings_of(caplog, "rare")) == 1  # not crowded out by the other rule


def test_hysteresis_clears_only_once_the_value_is_back_by_that_much(
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings)
    collector.alert("hot", metric="t", above=30, hysteresis=0.5)
    collector.alert("cold", metric="t", below=10, hysteresis=2)
    collector.alert("band", metric="t", below=10, above=30, hysteresis=1, devices=["band"])
    ingest(collector, "a", hover(5000))  # the example: one event, not 5,000
    assert states(collector.alerts(), "a") == [("firing", 30.1)]
    ingest(collector, "a", [(600, 29.6), (601, 30.4), (602, 29.5), (603, 31.0)])
    # 29.6 is inside the band (above 29.5): still firing; 29.5 clears; 31 fires again.
    assert states(collector.alerts(), "a") == [
        ("firing", 30.1),
        ("cleared", 29.5),
        ("firing", 31.0),
    ]
    ingest(collector, "b", [(0, 9.0), (1, 11.0), (2, 9.5), (3, 11.9), (4, 12.0), (5, 11.0)])
    assert states(collector.alerts(), "b") == [("firing", 9.0), ("cleared", 12.0)]
    ingest(collector, "band", [(0, 31.0), (1, 29.5), (2, 9.0), (3, 10.5), (4, 11.0), (5, 29.0)])
    band = collector.alerts()
    band = band[band["rule"] == "band"]
    # 29.5 keeps it (not <= 29); 9.0 is a breach; 10.5 keeps it (not >= 11); 11 clears.
    assert states(band, "band") == [("firing", 31.0), ("cleared", 11.0)]


def test_keep_firing_for_clears_after_the_values_stayed_in_range_that_long(
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings)
    collector.alert("hot", metric="t", above=30, keep_firing_for="10s")
    ingest(collector, "a", hover(101))  # 10 s of hovering, 30.1 last: fires once, no clear
    assert states(collector.alerts(), "a") == [("firing", 30.1)]
    # In range from t=20: cleared at the first row 10 s later, across batches.
    ingest(collector, "a", [(20 + i, 29.0) for i in range(6)])
    ingest(collector, "a", [(26 + i, 29.0) for i in range(3)])
    assert len(collector.alerts()) == 1
    ingest(collector, "a", [(29, 29.0), (30, 28.0), (31, 29.0)])
    alerts = collector.alerts()
    assert states(alerts, "a") == [("firing", 30.1), ("cleared", 28.0)]
    assert alerts["time"].iloc[-1] == pd.Timestamp(T0 + 30, unit="s", tz="UTC")
    assert collector.alerts(active=True).empty
    # A breach restarts the count: 25 s in range but broken at t=50.
    ingest(collector, "a", [(40, 31.0), (41, 29.0), (50, 30.5), (51, 29.0), (60, 29.0)])
    assert states(collector.alerts(), "a")[2:] == [("firing", 31.0)]
    ingest(collector, "a", [(61, 29.0)])
    assert states(collector.alerts(), "a")[2:] == [("firing", 31.0), ("cleared", 29.0)]


def test_for_and_keep_firing_for_together_damp_both_edges(
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings)
    collector.alert("hot", metric="t", above=30, for_="2s", keep_firing_for="2s")
    ingest(collector, "a", hover(100, step=0.5))  # never 2 s on either side
    assert collector.alerts().empty
    ingest(collector, "a", [(100, 31.0), (101, 31.0), (102, 31.0), (103, 29.0), (104, 31.0)])
    ingest(collector, "a", [(105, 29.0), (106, 29.0), (107, 29.0)])
    assert states(collector.alerts(), "a") == [("firing", 31.0), ("cleared", 29.0)]
    assert collector.alerts()["time"].tolist() == [
        pd.Timestamp(T0 + 102, unit="s", tz="UTC"),
        pd.Timestamp(T0 + 107, unit="s", tz="UTC"),
    ]


def test_a_removed_rule_leaves_the_active_list(
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings)
    collector.alert("hot", metric="t", above=30)
    collector.alert("gone", silent="1s")
    ingest(collector, "a", [(0, 31.0)])
    engine = collector.ingest.alerts
    engine.evaluate_silence(
        {"a": round(T0 * 1e9)}, now_ns=round((T0 + 5) * 1e9), listening_since_ns=0
    )
    active = collector.alerts(active=True)
    assert sorted(active["rule"].astype(str)) == ["gone", "hot"]
    assert collector.remove_alert("hot")
    assert collector.alerts(active=True)["rule"].astype(str).tolist() == ["gone"]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"metric": "t", "above": 30, "hysteresis": -1}, "^hysteresis=-1 must be zero or more"),
        ({"metric": "t", "above": 30, "hysteresis": float("nan")}, "^hysteresis=nan"),
        ({"metric": "t", "above": 30, "hysteresis": "0.5"}, "^hysteresis='0.5'"),
        ({"metric": "t", "above": 30, "hysteresis": True}, "^hysteresis=True"),
        ({"metric": "t", "below": 10, "above": 12, "hysteresis": 1.5}, "^hysteresis=1.5 leaves"),
        ({"silent": "5s", "hysteresis": 1}, "^hysteresis= is for threshold rules"),
        ({"metric": "t", "above": 30, "keep_firing_for": "soon"}, "^keep_firing_for='soon'"),
        ({"metric": "t", "above": 30, "keep_firing_for": -5}, "^keep_firing_for=-5"),
        ({"metric": "t", "above": 30, "keep_firing_for": float("inf")}, "^keep_firing_for=inf"),
        ({"silent": "5s", "keep_firing_for": "1min"}, "^keep_firing_for= is for threshold"),
    ],
)
def test_damping_options_are_checked_where_the_rule_is_made(
    settings: Settings, options: dict[str, Any], match: str
) -> None:
    collector = Collector(settings)
    with pytest.raises(ConfigError, match=match) as caught:
        collector.alert("x", **options)
    assert caught.value.hint
    assert not collector.remove_alert("x")


def test_damping_options_that_make_a_rule(settings: Settings) -> None:
    collector = Collector(settings)
    collector.alert("a", metric="t", above=30, hysteresis=0, keep_firing_for=0)
    collector.alert("b", metric="t", below=10, above=12, hysteresis=1)  # exactly 11 clears
    collector.alert("c", metric="t", above=30, hysteresis=2, keep_firing_for=pd.Timedelta("1min"))
    rules = {r.name: r for r in collector.ingest.alerts.rules}
    assert rules["c"].hysteresis == 2.0
    assert rules["c"].keep_firing_s == 60.0


def test_over_the_broker_a_hovering_reading_makes_one_warning(
    broker: LocalBroker,
    settings: Settings,
    collectors: Callable[..., Collector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    collector = collectors(settings).start()
    collector.alert("hot", metric="temperature", above=30, hysteresis=0.5)
    hovering = [("device/a/telemetry/temperature", {"value": v}) for _, v in hover(200)] + [
        ("device/b/telemetry/temperature", {"value": 35.0})
    ]
    publish_acknowledged(broker.publisher(), hovering)
    wait_for(lambda: collector.stats.messages == 201)
    wait_for(lambda: len(warnings_of(caplog, "hot")) == 2, message="both firings logged")
    assert collector.stats.alert_events == 2
    assert sorted(collector.alerts(active=True)["device_id"]) == ["a", "b"]


def test_health_and_alerts_name_the_device_column_as_frame_does(
    broker: LocalBroker,
    settings: Settings,
    collectors: Callable[..., Collector],
    tmp_path: Any,
) -> None:
    collector = collectors(settings).start()
    collector.alert("hot", metric="temperature", above=30)
    capture = collector.ingest.alerts.capture()
    recording = collector.record(tmp_path / "r.parquet")
    publish_acknowledged(broker.publisher(), [("device/a/telemetry/temperature", {"value": 31})])
    wait_for(lambda: collector.stats.alert_events == 1)
    path = recording.stop()
    frame, health, alerts = collector.frame(), collector.health(), collector.alerts()
    for result in (frame, health, alerts, load_alerts(path)):
        assert "device_id" in result.columns
        assert result["device_id"].tolist() == ["a"]
    assert tuple(alerts.columns) == ALERT_COLUMNS
    assert [e.device_id for e in collector.ingest.alerts.release(capture)] == ["a"]
    # The 0.1 name is kept as a copy, last, for code written against it (deprecated).
    for result in (health, alerts):
        assert result.columns[-1] == "device"
        assert result["device"].equals(result["device_id"])
    # The file says device_id too; a 0.1 file (column `device`) still reads.
    assert pq.read_schema(path.with_name("r.alerts.parquet")).names[2] == "device_id"
    old = pq.read_table(path.with_name("r.alerts.parquet"))
    old = old.rename_columns(["time", "rule", "device", "metric", "value", "state"])
    pq.write_table(old, tmp_path / "old.alerts.parquet")
    pd.testing.assert_frame_equal(load_alerts(tmp_path / "old.alerts.parquet"), alerts)
    bad = pa.table({"time": [1], "who": ["a"]})
    pq.write_table(bad, tmp_path / "bad.alerts.parquet")
    with pytest.raises(ValueError, match="not an alerts file"):
        load_alerts(tmp_path / "bad.alerts.parquet")


def test_an_alert_on_a_metric_never_seen_warns_with_the_known_ones(
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collector.alert("early", metric="temprature", above=30)  # nothing seen yet: no guess
    ingest(collector, "a", [(0, 20.0)], metric="temperature")
    ingest(collector, "b", [(0, 50.0)], metric="humidity")
    with pytest.warns(UserWarning, match="metric='temprature'") as caught:
        collector.alert("typo", metric="temprature", above=30)
    assert "known metrics: humidity, temperature" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the user's line
    assert "typo" in {r.name for r in collector.ingest.alerts.rules}  # added anyway
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collector.alert("typo-again", metric="temprature", below=0)  # once per name
        collector.alert("right", metric="temperature", above=30)
        collector.alert("quiet", silent="1min")
