"""What users type for durations and `since`: the short unit spellings pandas is dropping."""

from __future__ import annotations

import time
import warnings

import pandas as pd
import pytest

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
