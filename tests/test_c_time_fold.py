"""naive_timezone and the repeated autumn hour: the receive time tells the two passes apart.

In Berlin, 2025-10-26 02:00-03:00 local happens twice (CEST, then CET). A device that sends
local time without a zone sends "02:30:00" twice, an hour apart; reading both as the first
pass put the second 60 min early, and `dedupe=True` then dropped genuine readings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tesaiot_data import Collector, Settings, load_recording
from tesaiot_data.messages import RawMessage
from tesaiot_data.parse.rows import ParseOptions, parse_batch
from tesaiot_data.parse.timestamps import NaiveZone, timestamp_ns

BERLIN = NaiveZone.parse("Europe/Berlin")
DELAY_NS = 1_500_000_000  # the network and the device's queue: a second and a half


def utc_ns(text: str) -> int:
    return int(pd.Timestamp(text, tz="UTC").value)


@pytest.mark.parametrize(
    ("zone", "local", "first_utc", "second_utc"),
    [
        ("Europe/Berlin", "2025-10-26T02:30:00", "2025-10-26T00:30:00", "2025-10-26T01:30:00"),
        ("Europe/Berlin", "2025-10-26 02:00", "2025-10-26T00:00:00", "2025-10-26T01:00:00"),
        (
            "Europe/Berlin",
            "2025-10-26T02:59:59.250",
            "2025-10-26T00:59:59.25",
            "2025-10-26T01:59:59.25",
        ),
        ("America/New_York", "2025-11-02T01:15:00", "2025-11-02T05:15:00", "2025-11-02T06:15:00"),
        (
            "Australia/Lord_Howe",
            "2025-04-06T01:45:00",
            "2025-04-05T14:45:00",
            "2025-04-05T15:15:00",
        ),
    ],
)
def test_each_pass_of_the_repeated_hour_is_read_as_the_one_nearer_its_receive_time(
    zone: str, local: str, first_utc: str, second_utc: str
) -> None:
    naive = NaiveZone.parse(zone)
    for utc in (first_utc, second_utc):
        assert timestamp_ns(local, naive, received_ns=utc_ns(utc) + DELAY_NS) == utc_ns(utc)
    # A device clock a little fast or slow still picks its own pass.
    assert timestamp_ns(local, naive, received_ns=utc_ns(second_utc) - 10**9) == utc_ns(second_utc)
    # Without a receive time: the first pass, as before.
    assert timestamp_ns(local, naive) == utc_ns(first_utc)


@pytest.mark.parametrize(
    ("local", "utc"),
    [
        ("2025-10-26T01:30:00", "2025-10-25T23:30:00"),  # before the fold: one instant
        ("2025-10-26T03:30:00", "2025-10-26T02:30:00"),  # after it
        ("2025-07-01T12:00:00", "2025-07-01T10:00:00"),
        ("2025-10-26T02:30:00+02:00", "2025-10-26T00:30:00"),  # a zone: no guessing
        ("2025-10-26T02:30:00Z", "2025-10-26T02:30:00"),
    ],
)
def test_other_times_do_not_move_with_the_receive_time(local: str, utc: str) -> None:
    for received in (utc_ns(utc) - 3_600 * 10**9, utc_ns(utc), utc_ns(utc) + 3_600 * 10**9):
        assert timestamp_ns(local, BERLIN, received_ns=received) == utc_ns(utc)


def test_the_spring_gap_is_unchanged_by_the_receive_time() -> None:
    # 02:30 on 2025-03-30 does not exist in Berlin; it keeps its reading (01:30 UTC).
    before = timestamp_ns("2025-03-30T02:30:00", BERLIN)
    assert timestamp_ns("2025-03-30T02:30:00", BERLIN, received_ns=utc_ns("2025-03-30T00:30")) == (
        before
    )


def test_offsets_of_the_fold_and_the_single_offset_kept() -> None:
    assert BERLIN is not None
    assert BERLIN.offsets("2025-10-26T02:30") == (7200, 3600)
    assert BERLIN.offsets("2025-10-26T03:30") == (3600, 3600)
    assert BERLIN.offset("2025-10-26T02:30") == 7200
    assert BERLIN.offsets("2025-02-30T02:30") is None


def fold_messages() -> list[RawMessage]:
    """A device sending local time every 10 min through the night of 2025-10-26, same value."""
    start = utc_ns("2025-10-25T23:00:00")
    messages = []
    for i in range(18):  # 01:00 CEST .. 03:50 CET local: 3 h of UTC
        sent = start + i * 600 * 10**9
        local = pd.Timestamp(sent, tz="UTC").tz_convert("Europe/Berlin").tz_localize(None)
        body = {"value": 20.0, "timestamp": local.isoformat()}
        messages.append(
            RawMessage(
                "device/boiler/telemetry/temperature", json.dumps(body).encode(), sent + DELAY_NS
            )
        )
    return messages


def test_parsed_rows_keep_both_passes_and_dedupe_keeps_them(
    settings: Settings, collectors: Callable[..., Collector], tmp_path: Path
) -> None:
    messages = fold_messages()
    sent = [m.received_ns - DELAY_NS for m in messages]
    batch = parse_batch(messages, options=ParseOptions(naive_timezone="Europe/Berlin"))
    assert batch.timestamp_ns == sent
    collector = collectors(settings, naive_timezone="Europe/Berlin")
    recording = collector.record(tmp_path / "night.parquet")
    collector.ingest(messages)
    path = recording.stop()
    frame = collector.frame()
    assert frame["timestamp"].is_unique
    assert frame["timestamp"].is_monotonic_increasing
    assert (frame["timestamp"].diff().dropna() == pd.Timedelta("10min")).all()
    kept = load_recording(path, dedupe=True)
    assert len(kept) == len(messages)  # today: the six readings of the second pass dropped
