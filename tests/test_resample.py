"""Live resampling: buckets by device time, aggregations, filters, and late rows.

The rows come through the real broker with device timestamps the test chooses, so every
bucket's expected value is known; pandas' own groupby of `frame()` is the reference.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tesaiot_data import Collector, ConfigError, Settings
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.window import resample as resample_module
from tesaiot_data.window.resample import HOWS, resample_frame, rule_ns
from tests.frames import make_frame
from tests.helpers import publish_acknowledged, wait_for

pytestmark = pytest.mark.broker

T0 = pd.Timestamp("2025-12-09T10:30:40", tz="UTC")  # a multiple of 10 s since the epoch
DEVICES = ("dev-a", "dev-b", "dev-c")


def reading(device: str, stamp: pd.Timestamp, **fields: object) -> tuple[str, dict[str, Any]]:
    """A flat payload: one row per field, at the device time `stamp`."""
    return f"device/{device}/telemetry/env", {"timestamp": stamp.isoformat(), **fields}


def fleet_readings(seconds: int = 60, *, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """Three devices, a reading every 1.5 s each, two numbers and a text, in shuffled order."""
    rng = np.random.default_rng(seed)
    messages = [
        reading(
            device,
            T0 + pd.Timedelta(milliseconds=1500 * i + 100 * d),
            temperature=round(float(rng.normal(25, 2)), 3),
            humidity=round(float(rng.normal(60, 5)), 3),
            state="ok",
        )
        for i in range(seconds * 2 // 3)
        for d, device in enumerate(DEVICES)
    ]
    random.Random(seed).shuffle(messages)  # arrival order is not device-time order
    return messages


def reference(frame: pd.DataFrame, rule: str, how: str) -> pd.DataFrame:
    """What pandas itself makes of the frame: groupby device, metric and an epoch grouper."""
    numeric = frame[frame["value"].notna()].sort_values("timestamp", kind="stable")
    grouper = pd.Grouper(key="timestamp", freq=rule, origin="epoch")
    wide = (
        numeric.groupby(["device_id", "metric", grouper], observed=True)["value"]
        .agg(how)
        .unstack(["device_id", "metric"])
    )
    wide.columns = pd.MultiIndex.from_arrays(
        [wide.columns.get_level_values(n).astype(str) for n in ("device_id", "metric")],
        names=["device_id", "metric"],
    )
    wide = wide.sort_index(axis=1).dropna(how="all")
    return wide.fillna(0).astype("int64") if how == "count" else wide


def collected(
    settings: Settings,
    collectors: Callable[..., Collector],
    broker: LocalBroker,
    messages: Sequence[tuple[str, dict[str, Any]]],
) -> Collector:
    collector = collectors(settings, window=None).start()
    publish_acknowledged(broker.publisher(), messages)
    rows = sum(len(body) - 1 for _, body in messages)  # one row per field but the time
    wait_for(lambda: collector.stats.rows == rows, message=f"{rows} rows")
    return collector


def test_buckets_equal_a_pandas_groupby_of_the_frame_for_every_how(
    broker: LocalBroker, settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collected(settings, collectors, broker, fleet_readings())
    frame = collector.frame()
    for rule in ("10s", "7s", "1min"):
        for how in HOWS:
            got = collector.resample(rule, how=how)
            pd.testing.assert_frame_equal(got, reference(frame, rule, how), check_freq=False)

    wide = collector.resample("10s")
    assert str(wide.index.dtype) == "datetime64[ns, UTC]"
    assert wide.index.name == "timestamp"
    assert list(wide.columns.names) == ["device_id", "metric"]
    assert sorted({d for d, _ in wide.columns}) == list(DEVICES)
    assert {m for _, m in wide.columns} == {"temperature", "humidity"}  # the text is left out
    assert wide.index[0] == T0
    assert (np.diff(wide.index.asi8) == rule_ns("10s")).all()
    # One bucket by hand: dev-a's readings at T0 + 0, 1.5, ..., 9 s.
    by_hand = frame[
        (frame["device_id"] == "dev-a")
        & (frame["metric"] == "temperature")
        & (frame["timestamp"] < T0 + pd.Timedelta("10s"))
    ]
    assert len(by_hand) == 7
    assert wide.loc[T0, ("dev-a", "temperature")] == pytest.approx(by_hand["value"].mean())


def test_a_list_of_hows_adds_a_third_level_in_the_order_given(
    broker: LocalBroker, settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collected(settings, collectors, broker, fleet_readings(30, seed=1))
    hows = ["max", "count", "first", "last"]
    wide = collector.resample("10s", how=hows)
    assert list(wide.columns.names) == ["device_id", "metric", "how"]
    assert list(wide[("dev-b", "humidity")].columns) == hows
    frame = collector.frame()
    for how in hows:
        pd.testing.assert_frame_equal(
            wide.xs(how, axis=1, level="how"), reference(frame, "10s", how), check_freq=False
        )
    assert wide[("dev-a", "temperature", "count")].dtype == np.int64
    # first and last go by device time, not by arrival (the messages came shuffled).
    temps = frame[(frame["device_id"] == "dev-c") & (frame["metric"] == "temperature")]
    in_first = temps[temps["timestamp"] < T0 + pd.Timedelta("10s")].sort_values("timestamp")
    assert wide.loc[T0, ("dev-c", "temperature", "first")] == in_first["value"].iloc[0]
    assert wide.loc[T0, ("dev-c", "temperature", "last")] == in_first["value"].iloc[-1]


def test_filters_pick_devices_metrics_and_received_since(
    broker: LocalBroker, settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collected(settings, collectors, broker, fleet_readings(30, seed=2))
    one = collector.resample("10s", devices="dev-b", metrics=["humidity"])
    assert list(one.columns) == [("dev-b", "humidity")]
    pd.testing.assert_frame_equal(
        one, collector.resample("10s")[[("dev-b", "humidity")]], check_freq=False
    )
    two = collector.resample("10s", devices=["dev-a", "dev-c"], metrics="temperature")
    assert list(two.columns) == [("dev-a", "temperature"), ("dev-c", "temperature")]
    assert collector.resample("10s", devices="nobody").empty

    # since= selects by receive time, as frame() does: only the second batch.
    mid = pd.Timestamp.now(tz="UTC")
    later = [reading("dev-z", T0 + pd.Timedelta(seconds=s), temperature=float(s)) for s in (1, 2)]
    publish_acknowledged(broker.publisher(), later)
    wait_for(lambda: len(collector.frame(devices="dev-z")) == 2, message="dev-z rows")
    recent = collector.resample("10s", since=mid)
    assert list(recent.columns) == [("dev-z", "temperature")]
    assert recent.loc[T0, ("dev-z", "temperature")] == 1.5


def test_late_rows_are_counted_once_their_bucket_was_handed_out(
    broker: LocalBroker, settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collected(
        settings,
        collectors,
        broker,
        [reading("dev-a", T0 + pd.Timedelta(seconds=s), temperature=float(s)) for s in range(25)],
    )
    assert collector.stats.late_rows == 0  # nothing was handed out yet
    before = collector.resample("10s", metrics="temperature")
    assert list(before.index) == [T0 + pd.Timedelta(seconds=s) for s in (0, 10, 20)]
    # The watermark: the end of the newest bucket returned (these are past buckets).
    assert collector.ingest.watermark.watermark_ns == (T0 + pd.Timedelta("30s")).value

    publish_acknowledged(
        broker.publisher(),
        [
            reading("dev-a", T0 + pd.Timedelta(seconds=5), temperature=100.0),  # late
            reading("dev-b", T0 - pd.Timedelta(hours=1), temperature=1.0),  # late: before all
            reading("dev-a", T0 + pd.Timedelta(seconds=30), temperature=30.0),  # on time
            reading("dev-a", pd.Timestamp.now(tz="UTC"), temperature=2.0),  # on time
        ],
    )
    wait_for(lambda: collector.stats.rows == 25 + 4, message="the new rows")
    stats = collector.stats
    assert stats.late_rows == 2
    assert "2 late (after their bucket was resampled)" in str(stats)

    after = collector.resample("10s", metrics="temperature")
    assert after.loc[T0, ("dev-a", "temperature")] != before.loc[T0, ("dev-a", "temperature")]
    # The newest bucket is open now (its end is after the call): the watermark stops at the
    # call's clock floored to the rule, so readings still coming for it are not late.
    now_floor = pd.Timestamp.now(tz="UTC").floor("10s")
    watermark = collector.ingest.watermark.watermark_ns
    assert watermark is not None
    assert now_floor - pd.Timedelta("10s") <= pd.Timestamp(watermark, tz="UTC") <= now_floor
    publish_acknowledged(
        broker.publisher(), [reading("dev-a", pd.Timestamp.now(tz="UTC"), temperature=3.0)]
    )
    wait_for(lambda: collector.stats.rows == 25 + 5, message="the last row")
    assert collector.stats.late_rows == 2


# ------------------------------------------------------------ without a broker


def offline_collector() -> Collector:
    """A collector that is never started: resample() reads an empty window."""
    return Collector(Settings(token="tesa_mqtt_demo_" + "D" * 32, broker_url="mqtt://127.0.0.1:1"))


@pytest.mark.parametrize("rule", ["abc", "10S", "MS", "W", "0s", "-1s", "", 10])
def test_a_rule_without_a_fixed_positive_length_is_a_config_error(rule: Any) -> None:
    with pytest.raises(ConfigError, match="rule=") as caught:
        offline_collector().resample(rule)
    assert caught.value.hint is not None
    assert "'10s'" in caught.value.hint


@pytest.mark.parametrize("how", ["avg", ["mean", "avg"], [], ["mean", "mean"], [len]])
def test_an_unknown_how_is_a_config_error_with_the_choices(how: Any) -> None:
    with pytest.raises(ConfigError, match="how=") as caught:
        offline_collector().resample("10s", how=how)
    assert caught.value.hint is not None


def test_an_empty_window_gives_an_empty_frame_of_the_same_shape() -> None:
    collector = offline_collector()
    empty = collector.resample("10s")
    assert empty.empty
    assert str(empty.index.dtype) == "datetime64[ns, UTC]"
    assert list(empty.columns.names) == ["device_id", "metric"]
    assert list(collector.resample("1min", how=["mean"]).columns.names) == [
        "device_id",
        "metric",
        "how",
    ]
    assert collector.ingest.watermark.watermark_ns is None  # nothing handed out


def test_rules_and_offline_frames() -> None:
    assert rule_ns("10s") == 10 * 10**9
    assert rule_ns("250ms") == 250 * 10**6
    assert rule_ns("1D") == 86_400 * 10**9
    assert rule_ns(pd.Timedelta("2min")) == 120 * 10**9
    frame = make_frame(2_000, step_ns=50_000_000, devices=2, metrics=2)
    pd.testing.assert_frame_equal(
        resample_frame(frame, "1s", how="median"),
        reference(frame, "1s", "median"),
        check_freq=False,
    )


def test_a_wrong_clock_adds_one_bucket_not_the_years_between() -> None:
    frame = make_frame(100, step_ns=100_000_000, devices=1, metrics=1)
    frame.loc[3, "timestamp"] = pd.Timestamp("1970-01-01T00:00:07", tz="UTC")
    frame.loc[4, "timestamp"] = pd.Timestamp("2262-04-11T23:47:16.5", tz="UTC")
    wide = resample_frame(frame, "1s", how="count")
    assert wide.index[0] == pd.Timestamp("1970-01-01T00:00:07", tz="UTC")
    assert wide.index[-1] == pd.Timestamp("2262-04-11T23:47:16", tz="UTC")
    assert len(wide) <= 13
    assert int(wide.to_numpy().sum()) == frame["value"].notna().sum()


def test_a_result_too_large_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resample_module, "MAX_CELLS", 100)
    frame = make_frame(1_000, step_ns=10_000_000, devices=5, metrics=4)
    with pytest.raises(ConfigError, match="cells") as caught:
        resample_frame(frame, "10ms")
    assert caught.value.hint is not None
    assert "longer rule" in caught.value.hint
