"""What users type for durations and `since`: short unit spellings, bare numbers, the range."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tesaiot_data import Collector, Settings, compact_dataset
from tesaiot_data.arguments import duration_seconds, moment_ns, parse_timedelta
from tesaiot_data.errors import ConfigError
from tesaiot_data.messages import RawMessage
from tesaiot_data.parse.rows import parse_batch
from tesaiot_data.parse.timestamps import timestamp_ns


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", pd.Timedelta(days=7)),
        ("7D", pd.Timedelta(days=7)),
        ("1w", pd.Timedelta(weeks=1)),
        ("2H", pd.Timedelta(hours=2)),
        ("1d2h", pd.Timedelta(days=1, hours=2)),
        ("3 days", pd.Timedelta(days=3)),
        ("5min", pd.Timedelta(minutes=5)),
        ("10s", pd.Timedelta(seconds=10)),
    ],
)
def test_durations_read_without_a_warning(text: str, expected: pd.Timedelta) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_timedelta(text) == expected
        assert duration_seconds(text, name="window") == expected.total_seconds()


def test_since_a_week_back_from_now() -> None:
    before = time.time_ns()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = moment_ns("7d")
    after = time.time_ns()
    week = pd.Timedelta(days=7).value
    assert got is not None
    assert before - week <= got <= after - week


def test_a_word_is_not_a_duration() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        duration_seconds("soon", name="window")


def test_the_last_representable_second_is_read_up_to_the_int64_limit() -> None:
    # 2262-04-11T23:47:16.854775807Z is the largest datetime64[ns]; past it is no timestamp.
    assert timestamp_ns("2262-04-11T23:47:16.853Z") == 9_223_372_036_853_000_000
    assert timestamp_ns("2262-04-11T23:47:16.999Z") is None
    late = RawMessage(
        "device/d/telemetry/t", b'{"value": 1, "timestamp": "2262-04-11T23:47:16.999Z"}', 5
    )
    batch = parse_batch([late, late])
    assert batch.timestamp_ns == [5, 5]
    assert batch.timestamp_fallbacks == 2


def test_a_time_padded_to_the_usual_length_is_not_misread() -> None:
    assert timestamp_ns("   2025-12-09T10:30.123Z") is None
    assert (
        timestamp_ns("2025-12-09T10:30:45.123Z") == pd.Timestamp("2025-12-09T10:30:45.123Z").value
    )


@pytest.mark.parametrize("since", ["bogus", "5 mins", "yesterday-ish"])
def test_a_since_that_is_neither_is_a_config_error_with_a_hint(since: str) -> None:
    with pytest.raises(ConfigError, match="neither a duration nor a time") as caught:
        moment_ns(since)
    assert caught.value.hint is not None
    assert "7d" in caught.value.hint


TOKEN = "tesa_mqtt_demo_" + "T" * 32
EPOCH_NS_SPAN = ("1677-09-21", "2262-04-11")


@pytest.mark.parametrize(
    "since",
    [
        "0001-01-01",
        "9999-12-31",
        "1677-09-20",
        "2262-04-12",
        "2262-04-11T23:47:16.854775808Z",
        datetime(1, 1, 1),
        pd.Timestamp("3000-01-01"),
        np.datetime64("0001-01-01"),
        "200000D",  # a duration back from now longer than a Timedelta holds
        -pd.Timedelta.max,  # a duration "back" that lands past 2262
    ],
)
def test_a_moment_outside_epoch_ns_names_the_parameter_and_the_range(since: object) -> None:
    for name in ("since", "until"):
        with pytest.raises(ConfigError, match=f"^{name}=.* out of range") as caught:
            moment_ns(since, name=name)
        assert all(edge in caught.value.message for edge in EPOCH_NS_SPAN)


@pytest.mark.parametrize("since", ["", " ", "nan", "NaT", pd.NaT, "inf"])
def test_an_empty_or_nan_moment_is_a_config_error(since: object) -> None:
    with pytest.raises(ConfigError, match="neither a duration nor a time"):
        moment_ns(since)


@pytest.mark.parametrize(
    "since", [3600, 3600.0, 0, -5, True, np.int64(3600), np.float64(1.5), "3600", " 1.5e3 ", "2025"]
)
def test_a_bare_number_is_refused_as_a_moment(since: object) -> None:
    with pytest.raises(ConfigError, match="number without a unit") as caught:
        moment_ns(since)
    assert caught.value.hint is not None
    assert "'1h'" in caught.value.hint
    assert "2025-12-09 10:00" in caught.value.hint


def test_the_moments_users_give_still_read() -> None:
    now = 1_765_276_245_000_000_000
    hour = 3_600_000_000_000
    assert moment_ns("1h", now_ns=now) == now - hour
    assert moment_ns("3600s", now_ns=now) == now - hour
    assert moment_ns(pd.Timedelta("1h"), now_ns=now) == now - hour
    assert moment_ns(timedelta(hours=1), now_ns=now) == now - hour
    assert moment_ns(np.timedelta64(1, "h"), now_ns=now) == now - hour
    assert moment_ns("2025-12-09 10:30:45") == now
    assert moment_ns(datetime(2025, 12, 9, 10, 30, 45, tzinfo=timezone.utc)) == now
    assert moment_ns("1677-09-22") == pd.Timestamp("1677-09-22", tz="UTC").value
    assert moment_ns("2262-04-11") == pd.Timestamp("2262-04-11", tz="UTC").value
    assert moment_ns(None) is None


@pytest.mark.parametrize(
    "value",
    [math.inf, -math.inf, math.nan, "nan", "", 1e300, 10**30, pd.Timedelta.max, "40000D", -1],
)
@pytest.mark.parametrize("name", ["window", "clock_skew", "flush_every"])
def test_a_collector_duration_out_of_range_names_the_parameter_and_the_range(
    name: str, value: Any
) -> None:
    with pytest.raises(ConfigError, match=f"^{name}=") as caught:
        Collector(Settings(token=TOKEN), **{name: value})
    assert "36,500 days" in str(caught.value)


def test_the_longest_duration_still_reads() -> None:
    assert duration_seconds("36500D", name="window") == 36_500 * 86_400
    assert duration_seconds(pd.Timedelta(days=36_500), name="window") == 36_500 * 86_400
    with pytest.raises(ConfigError, match="out of range"):
        duration_seconds("36501D", name="window")


def test_the_collector_and_compaction_refuse_odd_moments(tmp_path: Path) -> None:
    collector = Collector(Settings(token=TOKEN))
    reads: list[Callable[..., object]] = [
        collector.frame,
        collector.alerts,
        lambda *, since: collector.resample("1min", since=since),
    ]
    for read in reads:
        for since, match in [
            ("", "neither a duration nor a time"),
            ("0001-01-01", "out of range"),
            ("9999-12-31", "out of range"),
            (3600, "number without a unit"),
        ]:
            with pytest.raises(ConfigError, match=f"since=.*{match}"):
                read(since=since)
    assert collector.frame(since="1h").empty
    (tmp_path / "date=2025-12-09").mkdir()
    for before in (3600, "9999-12-31"):
        with pytest.raises(ConfigError, match=r"^before="):
            compact_dataset(tmp_path, before=before)
