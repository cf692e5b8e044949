"""A store that fails after the start keeps at most `max_pending_rows` rows in memory.

Beyond the bound the oldest rows are dropped, counted (`rows_dropped`) and said in the log:
once when dropping begins, once with what was dropped when a write succeeds again. Real
files: a tmpfs remounted read-only (chmod does not stop root), or a folder replaced by a file.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tesaiot_data import RecordingError, load_recording
from tesaiot_data.collector.stats import CollectorStats, status_line
from tesaiot_data.sinks.base import DEFAULT_MAX_PENDING_ROWS
from tesaiot_data.sinks.dataset import DatasetWriter
from tesaiot_data.sinks.recorder import Recorder
from tests.frames import T0, make_frame
from tests.helpers import local
from tests.small_disk import remount_read_only, small_disk

STEP_NS = 1_000_000


def rows(count: int, *, first: int) -> pd.DataFrame:
    """`count` rows whose receive times are rows `first ..` of one clock (1 ms apart)."""
    return make_frame(count, start=T0 + pd.Timedelta(first * STEP_NS, unit="ns"), step_ns=STEP_NS)


def received(frame: pd.DataFrame) -> list[int]:
    return sorted(frame["received_at"].astype("int64").tolist())


def numbers(first: int, last: int) -> list[int]:
    """The receive times (epoch ns) of rows `first .. last - 1`."""
    start = T0.value
    return [start + i * STEP_NS for i in range(first, last)]


def remount_writable(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,rw", str(folder)], check=True, capture_output=True)


def dropping_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "dropped from now on" in r.getMessage()]


def dropped_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if "unwritten (beyond max_pending_rows)" in (r.getMessage())
    ]


def test_a_dataset_on_a_disk_made_read_only_keeps_the_newest_rows_up_to_the_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tesaiot_data")
    with small_disk(tmp_path / "disk", size="4m") as disk:
        writer = DatasetWriter(disk / "data", flush_every=0, max_pending_rows=100)
        writer.add(rows(50, first=0))
        assert len(writer.flush()) == 1
        remount_read_only(disk)
        writer.add(rows(80, first=50))
        with pytest.raises(OSError, match="Read-only file system"):
            writer.flush()
        assert (writer.pending_rows, writer.rows_dropped) == (80, 0)
        assert not dropping_warnings(caplog)
        for first in range(130, 330, 40):  # each flush fails; the pending rows stay bounded
            writer.add(rows(40, first=first))
            with pytest.raises(OSError, match="Read-only file system"):
                writer.flush()
            assert writer.pending_rows <= 100
        assert writer.error is not None
        assert (writer.rows, writer.rows_on_disk, writer.pending_rows) == (330, 50, 100)
        assert writer.rows_dropped == 180
        assert writer.rows == writer.rows_on_disk + writer.pending_rows + writer.rows_dropped
        assert "rows_dropped=180" in repr(writer)
        # Said once, however many flushes failed and batches were dropped.
        warnings = dropping_warnings(caplog)
        assert len(warnings) == 1, warnings
        assert "more than 100 rows wait in memory" in warnings[0]
        assert "Read-only file system" in warnings[0]
        assert not dropped_lines(caplog)

        remount_writable(disk)
        writer.flush()
        assert writer.error is None
        writer.close()
        # The first 50 rows and the newest 100: the oldest waiting rows were dropped.
        frame = load_recording(disk / "data")
        assert received(frame) == numbers(0, 50) + numbers(230, 330)
        assert writer.rows_on_disk == 150
        lines = dropped_lines(caplog)
        assert len(lines) == 1, lines
        first_lost = pd.Timestamp(numbers(50, 51)[0], tz="UTC").isoformat(timespec="microseconds")
        last_lost = pd.Timestamp(numbers(229, 230)[0], tz="UTC").isoformat(timespec="microseconds")
        assert f"dropped 180 rows received from {first_lost} to {last_lost}" in lines[0]


def test_a_dataset_folder_replaced_by_a_file_fails_at_close_with_the_drops_counted(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    writer = DatasetWriter(root, flush_every=0, max_pending_rows=30)
    writer.add(rows(10, first=0))
    writer.flush()
    shutil.rmtree(root)
    root.write_text("someone put a file here\n")
    for first in range(10, 70, 20):
        writer.add(rows(20, first=first))
        with pytest.raises((NotADirectoryError, FileExistsError)):
            writer.flush()
    assert (writer.pending_rows, writer.rows_dropped) == (30, 30)
    with pytest.raises(RecordingError) as caught:
        writer.close()
    error = caught.value
    assert (error.rows_on_disk, error.rows_lost) == (10, 60)
    assert "30 of them dropped from memory earlier" in str(error)


def test_a_recorder_whose_parts_folder_vanishes_keeps_the_newest_rows_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tesaiot_data")
    recorder = Recorder(tmp_path / "session.parquet", flush_every=0, max_pending_rows=25)
    recorder.add(rows(10, first=0))
    recorder.flush()
    parts = local(recorder.parts_dir)
    kept_part = next(parts.glob("part-*.parquet")).read_bytes()
    shutil.rmtree(parts)
    for first in range(10, 70, 20):
        recorder.add(rows(20, first=first))
        with pytest.raises(FileNotFoundError):
            recorder.flush()
    assert (recorder.pending_rows, recorder.rows_dropped) == (25, 35)
    # The folder comes back with the part that was in it (a restore from a backup).
    parts.mkdir()
    (parts / "part-000001.parquet").write_bytes(kept_part)
    path = recorder.stop()
    frame = load_recording(path)
    assert received(frame) == numbers(0, 10) + numbers(45, 70)
    assert pq.read_metadata(path).metadata[b"tesaiot.rows"] == b"35"
    assert recorder.rows_on_disk == 35
    assert len(dropping_warnings(caplog)) == 1
    assert len(dropped_lines(caplog)) == 1


def test_the_bound_is_validated_and_can_be_changed_on_a_running_sink(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "data")
    assert writer.max_pending_rows == DEFAULT_MAX_PENDING_ROWS == 5_000_000
    for bad, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="max_pending_rows"):
            DatasetWriter(tmp_path / "data", max_pending_rows=bad)  # type: ignore[arg-type]
    writer.add(rows(40, first=0))
    writer.max_pending_rows = 15  # a smaller bound applies at once
    assert (writer.pending_rows, writer.rows_dropped) == (15, 25)
    writer.close()
    assert received(load_recording(tmp_path / "data")) == numbers(25, 40)


def test_the_status_line_and_the_summary_show_rows_dropped_unwritten(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "data", max_pending_rows=5)
    writer.add(rows(12, first=0))
    counters: dict[str, Any] = {f.name: 0 for f in dataclasses.fields(CollectorStats)}
    stats = CollectorStats(
        **{
            **counters,
            "rejects_by_reason": {},
            "rate": 0.0,
            "mean_rate": 0.0,
            "connected": True,
            "last_message_at": None,
            "error": None,
        }
    )
    assert "dropped unwritten" not in status_line(stats, running=True)
    line = status_line(stats, running=True, rows_dropped=writer.rows_dropped)
    assert line.endswith("| 7 rows dropped unwritten | 0 rejects | 0 reconnects")
    dropped = dataclasses.replace(stats, sink_rows_dropped=3)
    assert "| 3 rows dropped unwritten |" in status_line(dropped, running=True)
    assert "3 rows dropped unwritten: a store kept failing" in str(dropped)
    assert "dropped unwritten" not in str(stats)
