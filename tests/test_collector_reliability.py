"""Nothing lost, nothing grows: the collector under messy traffic, failing disks and long runs.

Each test is one example of a kind of fault seen in MQTT loggers in the field, run against the
real broker and real files.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from tesaiot_data import Collector, RecordingError, Settings, load_recording
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.demo.flood import flood, publish_packet
from tesaiot_data.messages import RawMessage
from tests.helpers import publish_acknowledged, wait_for

pytestmark = pytest.mark.broker

T0 = 1_765_276_245.0  # 2025-12-09T10:30:45Z


def counts_add_up(collector: Collector) -> bool:
    s = collector.stats
    return s.received == s.messages + s.rejected + s.dropped + s.failed + s.pending


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- 1. memory and files follow what is held -------------------------------------------------


@pytest.mark.slow
def test_200k_unique_texts_and_devices_keep_memory_and_files_bounded_by_the_window(
    broker: LocalBroker, collectors: Callable[..., Collector], tmp_path: Path
) -> None:
    if not Path("/proc/self/statm").exists():
        pytest.skip("RSS is read from /proc (Linux)")
    collector = collectors(broker.settings(qos=0), max_rows=1000, window=None).start()

    def churn(start: int, count: int) -> bytes:
        return b"".join(
            publish_packet(
                f"device/dev-{i:07d}/telemetry/camera",
                b'{"_msgid": "%08x.%06x", "frame": "%s", "temperature": %d}'
                % (i * 2654435761 % 2**32, i, b"Q" * 200 + b"%07d" % i, i % 40),
            )
            for i in range(start, start + count)
        )

    def send(start: int, count: int) -> None:
        flood(broker.publisher(), churn(start, count))
        wait_for(lambda: collector.stats.received >= start + count, timeout=120)
        assert collector.wait_idle(60)

    send(0, 20_000)  # warm-up: allocator pools, caches, the first compactions
    gc.collect()
    warm_rss = rss_bytes()
    for start in range(20_000, 200_000, 45_000):
        send(start, 45_000)
    gc.collect()
    grown = rss_bytes() - warm_rss

    stats = collector.stats
    assert stats.received == 200_000
    assert counts_add_up(collector)
    assert stats.pending == 0
    assert stats.rows == 1000
    entries = collector.window.dictionary_entries
    # 1,000 rows held carry at most ~700 distinct ids and texts; the old store kept 200,000+.
    assert entries["device_id"] < 10_000, entries
    assert entries["value_text"] < 20_000, entries
    assert grown < 40 * 2**20, f"RSS grew {grown / 2**20:.1f} MB after warm-up"
    frame_of_window = collector.frame()
    assert frame_of_window["device_id"].cat.categories.size <= 1000

    # A short recording made now carries only its own strings.
    with collector.record(tmp_path / "after.parquet", flush_every=60) as recording:
        send(200_000, 20)
    path = recording.stop()
    rows = len(load_recording(path))
    assert rows == 60  # three fields per message
    assert path.stat().st_size < 30_000, path.stat().st_size  # was 595 KB


# --- 2. every row cut or lost is counted -----------------------------------------------------


def test_rows_beyond_the_per_message_limit_are_counted_and_logged(
    broker: LocalBroker,
    collectors: Callable[..., Collector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = collectors(broker.settings(), max_rows_per_message=1000).start()
    readings = [{"value": i, "timestamp": int(T0 * 1000) + i} for i in range(1500)]
    with caplog.at_level(logging.WARNING, logger="tesaiot_data.collector.ingest"):
        publish_acknowledged(
            broker.publisher(), [("device/batched/telemetry/vibration", readings)] * 2
        )
        wait_for(lambda: collector.stats.messages == 2)
    stats = collector.stats
    assert (stats.rows_total, stats.truncated_messages, stats.rows_cut) == (2000, 2, 1000)
    warnings = [r for r in caplog.records if "max_rows_per_message=1000" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited: once, not once per message


def test_the_default_per_message_limit_keeps_a_batch_of_1500_readings(
    broker: LocalBroker, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(broker.settings()).start()
    readings = [{"value": i, "timestamp": int(T0 * 1000) + i} for i in range(1500)]
    publish_acknowledged(broker.publisher(), [("device/batched/telemetry/vibration", readings)])
    wait_for(lambda: collector.stats.messages == 1)
    assert (collector.stats.rows, collector.stats.rows_cut) == (1500, 0)


def test_a_recording_made_before_start_with_auto_persist_records_every_row(
    broker: LocalBroker, collectors: Callable[..., Collector], tmp_path: Path
) -> None:
    collector = collectors(broker.settings(), dataset=tmp_path / "ds", flush_every="60s")
    recording = collector.record(tmp_path / "early.parquet", flush_every=0.2)
    collector.start()
    publish_acknowledged(
        broker.publisher(), [("device/a/telemetry/t", {"value": i}) for i in range(30)]
    )
    wait_for(lambda: collector.stats.messages == 30)
    path = recording.stop()
    assert len(load_recording(path)) == 30
    collector.stop()
    assert len(load_recording(tmp_path / "ds")) == 30


def test_a_second_recording_on_the_same_path_is_refused_at_record_time(
    collectors: Callable[..., Collector], settings: Settings, tmp_path: Path
) -> None:
    collector = collectors(settings)
    first = collector.record(tmp_path / "same.parquet")
    with pytest.raises(FileExistsError, match=r"same\.parquet"):
        collector.record(tmp_path / "same.parquet")
    with pytest.raises(FileExistsError):
        Collector(settings).record(tmp_path / "same.parquet")  # another collector too
    first.stop()


def test_stop_finishes_every_other_recording_and_reports_the_failed_one(
    broker: LocalBroker, collectors: Callable[..., Collector], tmp_path: Path
) -> None:
    collector = collectors(broker.settings()).start()
    broken = collector.record(tmp_path / "broken" / "a.parquet", flush_every=0.1)
    healthy = collector.record(tmp_path / "b.parquet", flush_every=0.1)
    publish_acknowledged(
        broker.publisher(), [("device/a/telemetry/t", {"value": i}) for i in range(50)]
    )
    wait_for(lambda: collector.stats.messages == 50)
    wait_for(lambda: broken.rows_on_disk == 50, message="the first part was not flushed")
    shutil.rmtree(tmp_path / "broken")  # the folder disappears under the recording
    publish_acknowledged(
        broker.publisher(), [("device/a/telemetry/t", {"value": i}) for i in range(50, 80)]
    )
    wait_for(lambda: collector.stats.messages == 80)

    with pytest.raises(RecordingError) as caught:
        collector.stop()
    error = caught.value
    assert error.path is not None
    assert "a.parquet" in error.path
    assert "a.parquet" in str(error)
    assert "hint" in str(error)
    # The first part went with its folder; whatever is on disk is what the error says.
    broken_path = tmp_path / "broken" / "a.parquet"
    readable = broken_path.exists() or Path(f"{broken_path}.parts").exists()
    assert error.rows_on_disk == (len(load_recording(broken_path)) if readable else 0)
    assert error.rows_on_disk + error.rows_lost == 80
    assert error.rows_lost >= 50
    assert load_recording(tmp_path / "b.parquet")["value"].tolist() == [float(i) for i in range(80)]
    stats = collector.stats
    assert (stats.received, stats.messages, stats.pending) == (80, 80, 0)
    assert counts_add_up(collector)
    assert stats.failed_sinks == 1
    assert healthy.stop() == tmp_path / "b.parquet"  # idempotent, and healthy


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a disk that really fills up (root only; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_reported_once_and_the_rows_are_written_when_space_returns(
    broker: LocalBroker,
    collectors: Callable[..., Collector],
    small_disk: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    filler = small_disk / "filler"
    with open(filler, "wb") as out:  # leave a few KB: enough for the parts folder
        out.write(b"\0" * (1024 * 1024 - 16 * 1024))
    with open(small_disk / "top-up", "wb") as out, contextlib.suppress(OSError):
        out.write(b"\0" * 1024 * 1024)  # fails part-way: now the disk is truly full
    collector = collectors(broker.settings()).start()
    with caplog.at_level(logging.WARNING, logger="tesaiot_data.sinks.feed"):
        recording = collector.record(small_disk / "r.parquet", flush_every=0.05)
        for batch in range(4):
            publish_acknowledged(
                broker.publisher(),
                [("device/a/telemetry/t", {"value": batch * 100 + i}) for i in range(100)],
            )
        wait_for(lambda: collector.stats.messages == 400)
        wait_for(lambda: recording.error is not None, message="the full disk was not noticed")
        wait_for(lambda: collector.stats.failed_sinks == 1)
        assert collector.running
        assert collector.stats.connected
        errors = [
            r
            for r in caplog.records
            if r.name == "tesaiot_data.sinks.feed" and "cannot write" in r.getMessage()
        ]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert "No space left" in errors[0].getMessage()
        assert errors[0].exc_info is None  # one line, not a traceback per flush
        assert recording.rows == 400
        assert recording.rows_on_disk < 400

        filler.unlink()
        (small_disk / "top-up").unlink()
        wait_for(lambda: recording.error is None, message="no later flush succeeded")
        wait_for(lambda: recording.rows_on_disk == 400)
    path = recording.stop()
    assert load_recording(path)["value"].tolist() == [float(i) for i in range(400)]
    assert collector.stats.failed_sinks == 0


# --- 5. rows mean what the device meant ------------------------------------------------------


def test_retained_messages_are_not_doubled_by_a_reconnect(
    fresh_broker: LocalBroker, collectors: Callable[..., Collector]
) -> None:
    retained = [
        ("device/door-1/telemetry/state", {"value": "open"}),
        ("device/door-2/telemetry/state", {"value": "closed"}),
    ]
    publish_acknowledged(fresh_broker.publisher(), retained, retain=True)
    collector = collectors(fresh_broker.settings()).start()
    wait_for(lambda: collector.stats.messages == 2)
    assert collector.stats.retained == 2  # the user can see these came from the broker's store
    fresh_broker.restart()
    wait_for(lambda: collector.stats.reconnects == 1, timeout=20, message="no reconnect")
    wait_for(lambda: collector.stats.rejected == 2, message="no retained redelivery arrived")
    stats = collector.stats
    assert stats.rejects_by_reason == {"retained_duplicate": 2}
    assert stats.rows == 2  # 2 rows, not 4
    assert collector.rejects()["reason"].astype(str).tolist() == ["retained_duplicate"] * 2
    # A new retained value is a new reading.
    publish_acknowledged(
        fresh_broker.publisher(), [("device/door-1/telemetry/state", {"value": "closed"})]
    )
    wait_for(lambda: collector.stats.rows == 3)
    assert counts_add_up(collector)


def test_wrong_device_clocks_are_counted_as_clock_skew(
    settings: Settings, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(settings)
    received = pd.Timestamp.now(tz="UTC").timestamp()
    local = pd.Timestamp.now(tz="Asia/Bangkok").tz_localize(None).isoformat()
    messages = [
        ("device/good/telemetry/t", {"value": 1}),
        ("device/future/telemetry/t", {"value": 2, "timestamp": "2262-04-11T00:00:00Z"}),
        ("device/ancient/telemetry/t", {"value": 3, "timestamp": "1677-09-22T00:00:00Z"}),
        ("device/local/telemetry/t", {"value": 4, "timestamp": local}),
    ]
    raw = [RawMessage(t, json.dumps(body).encode(), round(received * 1e9)) for t, body in messages]
    collector.ingest(raw)
    assert collector.stats.clock_skew_rows == 3

    bangkok = collectors(settings, naive_timezone="Asia/Bangkok")
    bangkok.ingest(raw[-1:])
    assert bangkok.stats.clock_skew_rows == 0
    skew = bangkok.frame()["timestamp"].iloc[0] - pd.Timestamp(received, unit="s", tz="UTC")
    assert abs(skew) < pd.Timedelta("5s")
