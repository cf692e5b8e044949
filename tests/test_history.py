"""Collector.history(): a dataset on disk and the live window as one frame, each row once."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tesaiot_data import (
    Collector,
    ConfigError,
    NotARecordingError,
    RecordingError,
    Settings,
    compact_dataset,
    load_recording,
)
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.messages import RawMessage
from tesaiot_data.schema import CATEGORY_COLUMNS, COLUMNS
from tesaiot_data.sinks.dataset import DatasetWriter
from tests.frames import assert_same_rows, make_frame, plain
from tests.helpers import wait_for
from tests.small_disk import fill, small_disk

pytestmark = pytest.mark.broker

MESSAGES = 300
WINDOW_ROWS = 40
# The data columns of a reading, whoever received it (another process's received_at differs).
DATA = [name for name in COLUMNS if name != "received_at"]


def unique_clock_fleet(fleet_factory: Callable[..., DeviceFleet]) -> DeviceFleet:
    """Devices that stamp each message 1 ms after the last, so no two readings are equal."""
    base, step = time.time(), itertools.count()
    return fleet_factory(
        devices=3, qos=1, mixed_shapes=False, seed=21, clock=lambda: base + next(step) / 1000
    )


def publish_all(fleet: DeviceFleet, *collectors: Collector) -> None:
    for _ in range(3):
        fleet.publish(MESSAGES // 3)
    wait_for(
        lambda: all(c.stats.messages == MESSAGES for c in collectors),
        message="a collector did not get every message",
    )


def assert_dtypes_of_frame(history: pd.DataFrame, frame: pd.DataFrame) -> None:
    assert list(history.columns) == list(frame.columns) == list(COLUMNS)
    assert isinstance(history.index, pd.RangeIndex)
    for name in COLUMNS:
        if name in CATEGORY_COLUMNS:
            assert isinstance(history[name].dtype, pd.CategoricalDtype), name
            categories = history[name].cat.categories
            assert categories.dtype == frame[name].cat.categories.dtype, name
            assert set(categories) == set(history[name].dropna()), f"{name}: unused categories"
        else:
            assert history[name].dtype == frame[name].dtype, name


def by_data(frame: pd.DataFrame) -> pd.DataFrame:
    """The data columns, as plain values, in one order whatever the receive times."""
    rows = plain(frame)[DATA]
    return rows.sort_values(["timestamp", "device_id", "metric"], ignore_index=True)


@pytest.mark.parametrize("flush_every", ["0.2s", "1h"])
def test_history_of_the_own_dataset_has_every_row_once_and_the_dtypes_of_frame(
    settings: Settings,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
    tmp_path: Path,
    flush_every: str,
) -> None:
    root = tmp_path / "ds"
    collector = collectors(
        settings, dataset=root, flush_every=flush_every, max_rows=WINDOW_ROWS
    ).start()
    recording = collector.record(tmp_path / "truth.parquet", flush_every=0.2)
    publish_all(unique_clock_fleet(fleet_factory), collector)
    if flush_every == "1h":  # nothing flushed yet: history() must write what was evicted
        assert not list(root.rglob("*.parquet"))

    history = collector.history()

    truth = load_recording(recording.stop())
    assert len(truth) == collector.stats.rows_total == MESSAGES
    assert collector.stats.rows_evicted >= MESSAGES - WINDOW_ROWS  # most rows are on disk only
    assert_same_rows(history, truth)  # each row once, same receive times, arrival order
    assert_dtypes_of_frame(history, collector.frame())

    # Filters, pushed down to the files and applied to the window alike.
    t_disk = truth["received_at"].iloc[100]  # long evicted: on disk only
    t_live = collector.frame()["received_at"].iloc[10]  # in the window
    received = truth["received_at"]
    assert_same_rows(collector.history(since=t_disk), truth[received >= t_disk])
    assert_same_rows(
        collector.history(since=t_disk, until=t_live),
        truth[(received >= t_disk) & (received < t_live)],
    )
    device = str(truth["device_id"].iloc[0])
    picked = collector.history(devices=device, metrics=["temperature", "humidity"])
    wanted = truth[
        (truth["device_id"] == device) & truth["metric"].isin(["temperature", "humidity"])
    ]
    assert 0 < len(picked) < len(truth)
    assert_same_rows(picked, wanted)
    assert list(picked["device_id"].cat.categories) == [device]
    assert collector.history(since=t_live, until=t_disk).empty

    # Within the window it is frame(since=...), dtypes and categories included.
    pd.testing.assert_frame_equal(collector.history(since=t_live), collector.frame(since=t_live))

    collector.stop()  # stopped: every row is on disk, the window still holds its rows
    assert_same_rows(collector.history(), truth)


def test_history_over_another_processs_dataset_keeps_each_reading_once(
    broker: LocalBroker,
    settings: Settings,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
    tmp_path: Path,
) -> None:
    root = tmp_path / "service"
    service = collectors(
        broker.settings(client_id=f"service-{uuid.uuid4().hex[:8]}"),
        dataset=root,
        flush_every="0.2s",
    ).start()
    viewer = collectors(settings, max_rows=WINDOW_ROWS).start()
    recording = viewer.record(tmp_path / "truth.parquet", flush_every=0.2)
    publish_all(unique_clock_fleet(fleet_factory), service, viewer)
    wait_for(
        lambda: root.is_dir() and len(load_recording(root)) == MESSAGES,
        message="the service did not flush",
    )
    # The seam overlaps: the service's files hold every reading of the window too, with
    # receive times of the service's, a little earlier or later than the viewer's.
    window_readings = set(plain(viewer.frame())[DATA].itertuples(index=False))
    assert len(window_readings) == WINDOW_ROWS
    assert window_readings <= set(plain(load_recording(root))[DATA].itertuples(index=False))

    history = viewer.history(dataset=root)

    truth = load_recording(recording.stop())
    assert len(truth) == MESSAGES
    assert len(history) == MESSAGES
    assert not history.duplicated(subset=DATA).any()
    pd.testing.assert_frame_equal(by_data(history), by_data(truth))
    # The window's rows are there with the viewer's own receive times; rows before the seam
    # and those the viewer no longer holds come with the service's.
    live = viewer.frame()
    history_rows = set(plain(history).itertuples(index=False))
    assert set(plain(live).itertuples(index=False)) <= history_rows
    assert history["received_at"].is_monotonic_increasing
    assert_dtypes_of_frame(history, live)

    # A compacted dataset reads the same.
    service.stop()
    compact_dataset(root, before=pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=1))
    assert len(list(root.rglob("*.parquet"))) == 1
    assert_same_rows(viewer.history(dataset=root), history)


@pytest.mark.parametrize("offset_ms", [-50, 50])
def test_receive_times_of_another_process_either_side_of_the_seam(
    settings: Settings,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
    tmp_path: Path,
    offset_ms: int,
) -> None:
    """A recorder that received each message earlier (its copies of the window's first rows
    fall before the watermark) or later (its copies of the last evicted rows fall after it)."""
    viewer = collectors(settings, max_rows=WINDOW_ROWS).start()
    recording = viewer.record(tmp_path / "truth.parquet", flush_every=0.2)
    publish_all(unique_clock_fleet(fleet_factory), viewer)
    truth = load_recording(recording.stop())
    other = truth.assign(received_at=truth["received_at"] + pd.Timedelta(milliseconds=offset_ms))
    with DatasetWriter(tmp_path / "other") as writer:
        writer.add(other)
    watermark = viewer.frame()["received_at"].min()
    if offset_ms < 0:  # in both sources by receive time alone: would be there twice
        assert (other["received_at"] < watermark).sum() > MESSAGES - WINDOW_ROWS
    else:  # in neither by receive time alone: would be lost
        assert (other["received_at"] >= watermark).sum() > WINDOW_ROWS

    history = viewer.history(dataset=tmp_path / "other")

    assert len(history) == MESSAGES
    pd.testing.assert_frame_equal(by_data(history), by_data(truth))
    assert history["received_at"].is_monotonic_increasing


def test_history_without_a_dataset_is_the_live_window_with_a_note(settings: Settings) -> None:
    collector = Collector(settings)
    now = time.time_ns()
    collector.ingest(
        [
            RawMessage("device/h1/telemetry/t", b'{"value": %d}' % n, now - n * 60_000_000_000)
            for n in (2, 1, 0)  # received 2 and 1 minutes ago, and now, in arrival order
        ]
    )
    with pytest.warns(UserWarning, match=r"live window only.*record --dataset") as caught:
        recent = collector.history(since="90s")
    assert caught[0].filename == __file__  # the note points at the user's line
    assert sorted(recent["value"]) == [0.0, 1.0]
    assert_same_rows(recent, collector.frame(since="90s"))
    with pytest.raises(ConfigError, match="since"):
        collector.history(since="soon")  # a wrong time is still an error


def test_history_reads_only_the_days_in_range(settings: Settings, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    recent = make_frame(200, start=pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1))
    with DatasetWriter(root) as writer:
        writer.add(recent)
    old = root / "date=2020-01-01"
    old.mkdir()
    (old / "part-20200101T000000000000-x.parquet").write_text("not Parquet: never opened")
    collector = Collector(settings)  # not started: an empty window

    assert_same_rows(collector.history(dataset=root), recent)  # since="7d": 2020 is skipped
    with pytest.raises(NotARecordingError):
        collector.history(since=None, dataset=root)
    with pytest.raises(NotARecordingError):
        collector.history(since="2019-12-31", until="2020-01-02", dataset=root)
    assert collector.history(since="2019-12-30", until="2019-12-31", dataset=root).empty
    with pytest.raises(FileNotFoundError):
        collector.history(dataset=tmp_path / "nope")
    with pytest.raises(ValueError, match="since='yesterday-ish' is neither a duration nor a time"):
        collector.history(since="yesterday-ish", dataset=root)


def test_history_raises_when_the_pending_rows_cannot_be_written(
    settings: Settings,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk", size="64k") as disk:
        root = disk / "ds"
        collector = collectors(
            settings, dataset=root, flush_every="1h", max_rows=WINDOW_ROWS
        ).start()
        filler = fill(disk)
        publish_all(unique_clock_fleet(fleet_factory), collector)

        with pytest.raises(RecordingError, match="could not write the collector's pending"):
            collector.history()

        filler.unlink()
        assert len(collector.history()) == MESSAGES
        collector.stop()
