"""Datasets and recordings on a real S3 server (moto), each read back and compared."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tesaiot_data.errors import NotARecordingError, RecordingError, StorageError
from tesaiot_data.files.compaction import STEP_WRITTEN, compact_dataset
from tesaiot_data.readers.disk import load_recording, load_rejects, read_metadata
from tesaiot_data.readers.history import history_frame
from tesaiot_data.readers.sql import query
from tesaiot_data.sinks.dataset import DatasetWriter
from tesaiot_data.sinks.recorder import Recorder
from tesaiot_data.window.rolling import RollingWindow
from tests.frames import assert_same_rows, make_frame, reject
from tests.s3_server import S3, s3, s3_server  # noqa: F401  (fixtures)

# 4,000 rows a second apart from 2025-12-09T23:30: two UTC days, 1,800 and 2,200 rows.
FRAME = make_frame(4000, start=pd.Timestamp("2025-12-09T23:30", tz="UTC"), step_ns=10**9)
DAYS = ["date=2025-12-09", "date=2025-12-10"]


def _written(s3: S3, prefix: str = "telemetry", flushes: int = 4) -> str:  # noqa: F811
    url = s3.url(prefix)
    writer = DatasetWriter(url, flush_every=0)
    step = len(FRAME) // flushes
    for start in range(0, len(FRAME), step):
        writer.add(FRAME.iloc[start : start + step])
        writer.flush()
    writer.close()
    assert writer.rows_written == len(FRAME)
    return url


def test_the_dataset_writer_writes_whole_objects_under_date_prefixes(s3: S3) -> None:  # noqa: F811
    url = _written(s3)
    keys = s3.objects("telemetry")
    # One object per day and flush, nothing else: no probe, no temporary object left.
    assert len(keys) == 5
    assert {key.split("/")[1] for key in keys} == set(DAYS)
    assert all(key.split("/")[2].startswith("part-") for key in keys)
    assert_same_rows(load_recording(url), FRAME)
    assert read_metadata(url)["rows"] == str(len(FRAME))


def test_reading_a_day_lists_only_its_prefix(s3: S3) -> None:  # noqa: F811
    url = _written(s3)
    # A broken object in the first day: read only when that day's prefix is listed.
    with s3.filesystem.open_output_stream(f"{s3.bucket}/telemetry/{DAYS[0]}/broken.parquet") as out:
        out.write(b"not parquet")
    with pytest.raises(NotARecordingError, match=r"broken\.parquet"):
        load_recording(url)
    window = RollingWindow(window_ns=None, max_rows=10)
    second_day = history_frame(window, since="2025-12-10", until=None, dataset=url)
    expected = FRAME.loc[FRAME["received_at"] >= pd.Timestamp("2025-12-10", tz="UTC")]
    assert_same_rows(second_day, expected.reset_index(drop=True))


def test_history_reads_an_s3_dataset_in_range(s3: S3) -> None:  # noqa: F811
    url = _written(s3)
    window = RollingWindow(window_ns=None, max_rows=10)
    assert_same_rows(history_frame(window, since=None, dataset=url), FRAME)
    since, until = FRAME["received_at"].iloc[[1000, 3000]]
    part = history_frame(window, since=since, until=until, dataset=url)
    assert_same_rows(part, FRAME.iloc[1000:3000].reset_index(drop=True))


def test_a_recording_on_s3_reads_its_parts_then_its_one_object(s3: S3) -> None:  # noqa: F811
    url = s3.url("sessions/run.parquet")
    recorder = Recorder(url, flush_every=0)
    recorder.add(FRAME.iloc[:1500], [reject(1)])
    recorder.flush()
    recorder.add(FRAME.iloc[1500:], [reject(2)])
    recorder.flush()
    assert s3.objects("sessions") == [
        "sessions/run.parquet.parts/part-000001.parquet",
        "sessions/run.parquet.parts/part-000002.parquet",
        "sessions/run.parquet.parts/rejects-000001.parquet",
        "sessions/run.parquet.parts/rejects-000002.parquet",
    ]
    assert_same_rows(load_recording(url), FRAME)  # while it records: the parts
    assert list(load_rejects(url)["topic"]) == [reject(1).topic, reject(2).topic]
    assert str(recorder.stop()) == url
    assert s3.objects("sessions") == ["sessions/run.parquet", "sessions/run.rejects.parquet"]
    assert_same_rows(load_recording(url), FRAME)
    assert read_metadata(url)["rows"] == str(len(FRAME))
    assert list(load_rejects(url)["topic"]) == [reject(1).topic, reject(2).topic]


def test_a_second_recorder_on_the_same_s3_path_is_refused(s3: S3) -> None:  # noqa: F811
    url = s3.url("run.parquet")
    first = Recorder(url, flush_every=0)
    first.add(FRAME.iloc[:10])
    first.flush()
    with pytest.raises(FileExistsError, match="already exists"):
        Recorder(url)
    first.stop()


def test_compaction_on_s3_writes_the_merged_object_before_deleting_the_parts(
    s3: S3,  # noqa: F811
) -> None:
    url = _written(s3, flushes=8)
    between: list[pd.DataFrame] = []

    def look(step: str, merged: object) -> None:
        if step == STEP_WRITTEN:  # the parts are still there: readers skip them
            between.append(load_recording(url))

    result = compact_dataset(url, before="2025-12-11", on_step=look)
    assert result.partitions == 2
    assert result.rows == len(FRAME)
    keys = s3.objects("telemetry")
    assert [key.split("/")[1] for key in keys] == DAYS
    assert all(key.split("/")[2].startswith("compacted-") for key in keys)
    assert len(between) == 2
    for frame in between:
        assert_same_rows(frame, FRAME)
    assert_same_rows(load_recording(url), FRAME)
    assert compact_dataset(url, before="2025-12-11").partitions == 0  # nothing left to do


def test_query_over_an_s3_dataset_without_extensions(s3: S3) -> None:  # noqa: F811
    url = _written(s3)
    result = query(
        url,
        "select device_id, date_trunc('hour', timestamp) as hour, count(*) as rows, "
        "avg(value) as mean from telemetry group by all order by all",
    )
    frame = FRAME.assign(hour=FRAME["timestamp"].dt.floor("h"))
    expected = (
        frame.groupby(["device_id", "hour"], observed=True)["value"]
        .agg(rows="size", mean="mean")
        .reset_index()
    )
    assert list(result["device_id"].astype(str)) == list(expected["device_id"].astype(str))
    assert list(result["hour"]) == list(expected["hour"])
    assert list(result["rows"]) == list(expected["rows"])
    pd.testing.assert_series_equal(result["mean"], expected["mean"], check_names=False)


def test_a_store_that_fails_keeps_the_rows_and_retries(s3: S3) -> None:  # noqa: F811
    url = s3.url("telemetry")
    writer = DatasetWriter(url, flush_every=0)
    s3.filesystem.delete_dir(s3.bucket)  # the bucket goes away while the writer runs
    writer.add(FRAME)
    with pytest.raises(StorageError, match="does not exist"):
        writer.flush()
    assert isinstance(writer.error, StorageError)
    assert writer.rows_on_disk == 0
    assert writer.pending_rows == len(FRAME)
    s3.filesystem.create_dir(s3.bucket)
    writer.flush()
    assert writer.error is None
    assert writer.rows_on_disk == len(FRAME)
    assert_same_rows(load_recording(url), FRAME)
    assert not [key for key in s3.objects() if key.rsplit("/", 1)[-1].startswith(".")]


def test_closing_on_a_failed_store_counts_the_rows_lost_and_says_what_to_check(
    s3: S3,  # noqa: F811
) -> None:
    writer = DatasetWriter(s3.url("telemetry"), flush_every=0)
    s3.filesystem.delete_dir(s3.bucket)
    writer.add(FRAME)
    with pytest.raises(RecordingError, match="does not exist") as caught:
        writer.close()
    assert caught.value.rows_on_disk == 0
    assert caught.value.rows_lost == len(FRAME)
    assert "create the bucket" in (caught.value.hint or "")


_KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from tests.frames import make_frame
    from tesaiot_data.sinks.recorder import Recorder

    recorder = Recorder(sys.argv[1], flush_every=0)
    frame = make_frame(50_000, step_ns=10**6)
    number = 0
    while True:  # until SIGKILL: a part of 50,000 rows after another
        recorder.add(frame)
        recorder.flush()
        number += 1
        print(number, flush=True)
    """
)


def test_a_recorder_killed_on_s3_leaves_every_object_readable(s3: S3) -> None:  # noqa: F811
    url = s3.url("killed/run.parquet")
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, url],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert process.stdout is not None
        flushed = 0
        while flushed < 3:
            line = process.stdout.readline()
            assert line, "the writer stopped before flushing three parts"
            flushed = int(line)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    visible = [key for key in s3.objects("killed") if not key.rsplit("/", 1)[-1].startswith(".")]
    assert len(visible) >= flushed
    for key in visible:  # whole objects only: each one's footer reads
        assert pq.read_metadata(f"{s3.bucket}/{key}", filesystem=s3.filesystem).num_rows == 50_000
    frame = load_recording(url)  # the flushed parts of the unfinished recording
    assert len(frame) == 50_000 * len(visible)
