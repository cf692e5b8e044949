"""resample in a time zone: local calendar days of 23 and 25 hours, local hours, the frame's zone.

The rows come through the real broker (or the worker's entry point) with device timestamps
the test chooses; pandas' own `resample` of the frame in that zone is the reference.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from datetime import timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from tesaiot_data import Collector, ConfigError, Settings
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.messages import RawMessage
from tesaiot_data.window.resample import resample_frame
from tests.helpers import publish_acknowledged, wait_for

BERLIN = "Europe/Berlin"


def stamps(start: str, end: str, every: str) -> pd.DatetimeIndex:
    return pd.date_range(pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC"), freq=every)


def collected(collector: Collector, times: pd.DatetimeIndex, device: str = "d") -> pd.DataFrame:
    """Ingest one reading per time (value: its index) and return the collector's frame."""
    now = time.time_ns()  # received now: the window keeps rows by receive time
    collector.ingest(
        [
            RawMessage(
                f"device/{device}/telemetry/t",
                json.dumps({"value": float(i), "timestamp": t.isoformat()}).encode(),
                now + i,
            )
            for i, t in enumerate(times)
        ]
    )
    return collector.frame()


def pandas_reference(frame: pd.DataFrame, rule: str, zone: str, how: str) -> pd.Series:
    series = frame.set_index(frame["timestamp"].dt.tz_convert(zone))["value"]
    result: pd.Series = series.resample(rule).agg(how)
    return result[result.index.isin(result.dropna().index)] if how != "count" else result


def test_local_calendar_days_have_23_and_25_hours(
    broker: LocalBroker, settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings).start()
    # Hourly readings from 2025-03-29 to 2025-03-31 and 2025-10-25 to 2025-10-27 (UTC).
    times = stamps("2025-03-28T23:00", "2025-03-31T21:00", "1h").append(
        stamps("2025-10-24T22:00", "2025-10-27T22:00", "1h")
    )
    publish_acknowledged(
        broker.publisher(),
        [("device/d/telemetry/t", {"value": 1.0, "timestamp": t.isoformat()}) for t in times],
    )
    wait_for(lambda: collector.stats.messages == len(times))
    frame = collector.frame()
    days = resample_frame(frame, "1D", how="count", tz=BERLIN)[("d", "t")]
    assert str(days.index.tz) == BERLIN
    assert (days.index == days.index.normalize()).all()  # local midnights
    hours = dict(zip(days.index.strftime("%Y-%m-%d"), days.tolist(), strict=True))
    assert hours["2025-03-30"] == 23
    assert hours["2025-10-26"] == 25
    assert hours["2025-03-29"] == hours["2025-10-25"] == 24
    reference = pandas_reference(frame, "1D", BERLIN, "count")
    reference = reference[reference > 0]
    pd.testing.assert_series_equal(days, reference, check_names=False, check_freq=False)
    # In UTC (the default) the same rows make 24-hour days that cut across local ones.
    utc = resample_frame(frame, "1D", how="count")[("d", "t")]
    assert set(utc.tolist()) <= {1, 2, 22, 23, 24}
    assert str(utc.index.tz) == "UTC"


@pytest.mark.parametrize("how", ["mean", "sum", "min", "max", "first", "last", "count"])
@pytest.mark.parametrize(
    ("rule", "zone", "start", "end"),
    [
        ("1D", BERLIN, "2025-10-20T00:00", "2025-11-03T00:00"),
        ("1h", BERLIN, "2025-10-25T20:00", "2025-10-26T06:00"),  # the fold: two 02:00 hours
        ("1h", BERLIN, "2025-03-29T20:00", "2025-03-30T06:00"),  # the gap: no 02:00 hour
        ("1D", "America/New_York", "2025-10-28T00:00", "2025-11-05T00:00"),
        ("1h", "Asia/Kolkata", "2025-06-01T00:00", "2025-06-01T12:00"),  # hours at :00 local
        ("15min", "Australia/Lord_Howe", "2025-04-05T13:00", "2025-04-05T17:00"),
    ],
)
def test_buckets_in_a_zone_agree_with_pandas(
    settings: Settings,
    collectors: Callable[..., Collector],
    rule: str,
    zone: str,
    start: str,
    end: str,
    how: str,
) -> None:
    frame = collected(collectors(settings), stamps(start, end, "7min"))
    ours = resample_frame(frame, rule, how=how, tz=zone)[("d", "t")]
    reference = pandas_reference(frame, rule, zone, how)
    if how == "count":
        reference = reference[reference > 0]
    pd.testing.assert_series_equal(ours, reference, check_names=False, check_freq=False)


def test_multi_day_rules_are_anchored_at_local_midnight(  # pandas: at the first row's day
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    frame = collected(collectors(settings), stamps("2025-10-20T00:00", "2025-10-30T00:00", "1h"))
    days = resample_frame(frame, "2D", how="count", tz=BERLIN)[("d", "t")]
    assert (days.index == days.index.normalize()).all()
    # Two calendar days each; the pair with 26 October holds 49 hours.
    assert days.iloc[1:-1].tolist().count(49) == 1
    assert set(days.iloc[1:-1]) == {48, 49}


def test_the_frames_own_zone_is_honoured_as_pandas_does(
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    frame = collected(collectors(settings), stamps("2025-10-24T00:00", "2025-10-28T00:00", "1h"))
    local = frame.assign(timestamp=frame["timestamp"].dt.tz_convert(BERLIN))
    own = resample_frame(local, "1D", how=["count", "mean"])
    pd.testing.assert_frame_equal(
        own, resample_frame(frame, "1D", how=["count", "mean"], tz=BERLIN)
    )
    assert str(own.index.tz) == BERLIN
    # An explicit tz wins over the frame's own; tz="UTC" gives UTC days.
    utc = resample_frame(local, "1D", tz="UTC")
    pd.testing.assert_frame_equal(utc, resample_frame(frame, "1D"))


def test_a_fixed_offset_zone_and_a_tzinfo(
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    frame = collected(collectors(settings), stamps("2025-06-01T00:00", "2025-06-03T00:00", "1h"))
    seven = timezone(timedelta(hours=7))
    days = resample_frame(frame, "1D", how="count", tz=seven)[("d", "t")]
    assert days.index[0] == pd.Timestamp("2025-06-01T00:00", tz=seven)
    assert days.tolist() == [17, 24, 8]  # 07:00-24:00, a whole day, 00:00-07:00 local


@pytest.mark.parametrize("tz", ["Mars/Olympus_Mons", "", 7, "+07:00x"])
def test_a_zone_that_is_not_one_is_refused_naming_tz(settings: Settings, tz: object) -> None:
    frame = collected(Collector(settings), stamps("2025-06-01", "2025-06-02", "1h"))
    with pytest.raises(ConfigError, match=r"^tz=") as caught:
        resample_frame(frame, "1D", tz=tz)  # type: ignore[arg-type]
    assert "Europe/Berlin" in str(caught.value)


def test_an_empty_result_in_a_zone_has_the_zones_index(settings: Settings) -> None:
    frame = Collector(settings).frame()
    empty = resample_frame(frame, "1D", tz=BERLIN)
    assert empty.empty
    assert str(empty.index.tz) == BERLIN
    assert np.issubdtype(empty.dtypes.to_numpy().dtype, np.object_) or empty.columns.empty


def test_collector_resample_takes_tz(
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings)
    frame = collected(collector, stamps("2025-10-24T22:00", "2025-10-27T22:00", "1h"))
    live = collector.resample("1D", how="count", tz=BERLIN)
    pd.testing.assert_frame_equal(live, resample_frame(frame, "1D", how="count", tz=BERLIN))
    assert live[("d", "t")].tolist() == [24, 25, 24]


def test_frame_and_resample_warn_once_about_a_metric_never_seen(
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings)
    collected(collector, stamps("2025-06-01", "2025-06-02", "1h"))
    with pytest.warns(UserWarning, match=r"metrics='temp'.*known metrics: t\b") as caught:
        assert collector.frame(metrics=["temp", "t"])["metric"].eq("t").all()
    assert caught[0].filename == __file__
    with pytest.warns(UserWarning, match="metrics='humidity'") as caught:
        assert collector.resample("1h", metrics="humidity").empty
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collector.frame(metrics="temp")  # once per name
        collector.resample("1h", metrics=["t"])
