"""Sinks: Recorder and DatasetWriter, written to real files (and real full disks) and read back."""

from __future__ import annotations

import errno
import importlib.util
import re
import shutil
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tesaiot_data.errors import RecordingError
from tesaiot_data.files.parquet import write_frame, write_rejects
from tesaiot_data.messages import RawMessage
from tesaiot_data.parse.rows import parse_batch
from tesaiot_data.readers.disk import load_recording, load_rejects, read_metadata
from tesaiot_data.schema import COLUMNS
from tesaiot_data.sinks.base import Sink
from tesaiot_data.sinks.dataset import DatasetWriter
from tesaiot_data.sinks.recorder import Recorder
from tesaiot_data.window.chunk import Chunk
from tesaiot_data.window.rolling import RollingWindow
from tests.frames import (
    T0,
    UTC_NS,
    assert_same_rows,
    leftovers,
    make_frame,
    plain,
    raw_metadata,
    reject,
)
from tests.helpers import local
from tests.small_disk import fill, remount_read_only, small_disk

# --- the sink protocol ---------------------------------------------------------------------


def test_no_temp_files_after_all_writers(tmp_path: Path) -> None:
    write_frame(make_frame(10), tmp_path / "f.parquet")
    write_rejects([reject(1)], tmp_path / "f.rejects.parquet")
    with Recorder(tmp_path / "rec.parquet", flush_every=0) as recorder:
        recorder.add(make_frame(10), [reject(2)])
        recorder.flush()
        recorder.add(make_frame(10))
    writer = DatasetWriter(tmp_path / "ds")
    writer.add(make_frame(10))
    writer.flush()
    assert leftovers(tmp_path) == []


def _chunks(batches: int, rows: int = 100, *, devices: int = 10**6) -> list[Chunk]:
    """Chunks of a small window fed unique device names: it compacts its dictionaries, so
    the chunks span several dictionary generations, as a long recording's do."""
    window = RollingWindow(window_ns=None, max_rows=rows)
    chunks = []
    for k in range(batches):
        messages = [
            RawMessage(
                f"device/dev-{i % devices}/telemetry/temperature",
                b'{"value": %d, "unit": "C"}' % i,
                T0.value + i * 1_000_000_000,  # a second apart: crosses midnight at row 2
            )
            for i in range(k * rows, (k + 1) * rows)
        ]
        chunk = window.append(parse_batch(messages))
        assert chunk is not None
        chunks.append(chunk)
    return chunks


@pytest.mark.parametrize("kind", ["recorder", "dataset"])
def test_sinks_take_the_windows_arrow_batches_across_dictionary_generations(
    tmp_path: Path, kind: str
) -> None:
    chunks = _chunks(60)
    assert len({id(c.categories["device_id"]) for c in chunks}) > 1  # several generations
    sink: Sink = (
        Recorder(tmp_path / "r.parquet") if kind == "recorder" else DatasetWriter(tmp_path / "ds")
    )
    assert isinstance(sink, Sink)
    for index, arrow in enumerate(RollingWindow.batches_of(chunks)):
        sink.add(arrow)
        if index % 3 == 0:
            sink.flush()
    assert sink.rows == 6000
    sink.close()
    assert sink.closed
    assert sink.rows_on_disk == 6000
    back = load_recording(sink.path)
    assert back["value"].tolist() == [float(i) for i in range(6000)]
    assert back["device_id"].astype(str).tolist() == [f"dev-{i}" for i in range(6000)]
    where = local(sink.path)
    files = [where] if kind == "recorder" else sorted(where.rglob("part-*.parquet"))
    assert len(files) > 1 or kind == "recorder"
    for path in files:  # every file names only the devices of its own rows
        table = pq.read_table(path)
        names = set(table.column("device_id").to_pylist())
        for chunk in table.column("device_id").chunks:
            assert set(chunk.dictionary.to_pylist()) <= names


def test_add_refuses_a_batch_of_another_schema_and_keeps_nothing(tmp_path: Path) -> None:
    (arrow,) = RollingWindow.batches_of(_chunks(1, 10))
    loose = pa.RecordBatch.from_arrays(
        [c.cast(pa.string()) if pa.types.is_dictionary(c.type) else c for c in arrow.columns],
        names=arrow.schema.names,
    )
    for sink in (Recorder(tmp_path / "r.parquet"), DatasetWriter(tmp_path / "ds")):
        with pytest.raises(ValueError, match=r"'device_id' .* \(hint: make batches"):
            sink.add(loose)
        assert sink.rows == 0
        assert not sink.flush_due()
        sink.close()


def test_a_dataset_writer_keeps_no_rejects_and_flushes_when_due(tmp_path: Path) -> None:
    (arrow,) = RollingWindow.batches_of(_chunks(1, 10))
    lazy = DatasetWriter(tmp_path / "lazy", flush_every=3600)
    lazy.add(arrow)
    assert not lazy.flush_due()
    with DatasetWriter(tmp_path / "ds", flush_every=0) as writer:
        writer.add(None, [reject(1)])  # a dataset holds telemetry only
        assert writer.rejects == 0
        assert not writer.flush_due()
        writer.add(arrow, [reject(2)])
        assert writer.flush_due()
        assert len(writer.flush()) == 2  # rows on both sides of midnight
        assert not writer.flush_due()
        writer.add(arrow)  # written by close
    assert writer.closed
    assert writer.close() == tmp_path / "ds"  # idempotent
    writer.add(arrow)  # after close: dropped
    assert writer.rows == writer.rows_on_disk == 20
    assert len(load_recording(tmp_path / "ds")) == 20
    assert lazy.close() == tmp_path / "lazy"
    assert len(load_recording(tmp_path / "lazy")) == 10


# --- Recorder ------------------------------------------------------------------------------


def test_recorder_rows_across_flushes_in_order(tmp_path: Path) -> None:
    path = tmp_path / "session.parquet"
    batches = [
        make_frame(n, start=T0 + pd.Timedelta(seconds=i), seed=i)
        for i, n in enumerate([3, 100, 1, 2500, 40])
    ]
    recorder = Recorder(path, flush_every=5.0, metadata={"topic": "device/+/telemetry/#"})
    assert recorder.path == path
    assert recorder.parts_dir == tmp_path / "session.parquet.parts"
    assert recorder.started_at.tzinfo is not None
    parts = []
    for index, frame in enumerate(batches):
        recorder.add(frame)
        if index % 2 == 1:
            parts.append(recorder.flush())
    assert parts == [recorder.parts_dir / f"part-{i:06d}.parquet" for i in (1, 2)]
    assert recorder.flush() == recorder.parts_dir / "part-000003.parquet"  # the last batch
    assert recorder.flush() is None
    recorder.add(make_frame(6, start=T0 + pd.Timedelta(seconds=9), seed=9))  # flushed by stop
    batches.append(make_frame(6, start=T0 + pd.Timedelta(seconds=9), seed=9))
    assert recorder.rows == sum(len(b) for b in batches)
    assert not recorder.stopped

    assert recorder.stop() == path
    assert recorder.stopped
    assert not recorder.parts_dir.exists()
    expected = pd.concat([plain(b) for b in batches], ignore_index=True)
    assert_same_rows(load_recording(path), expected)
    meta = read_metadata(path)
    assert meta["rows"] == str(len(expected))
    assert meta["rejects"] == "0"
    assert meta["topic"] == "device/+/telemetry/#"
    assert meta["start"] == expected["received_at"].min().isoformat(timespec="microseconds")
    assert meta["end"] == expected["received_at"].max().isoformat(timespec="microseconds")
    assert not (tmp_path / "session.rejects.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["session.parquet"]


def test_recorder_batches_with_different_category_lists(tmp_path: Path) -> None:
    batches = [make_frame(50, prefix=f"site{i}", devices=3 + i, metrics=1 + i) for i in range(4)]
    with Recorder(tmp_path / "r.parquet") as recorder:
        for frame in batches:
            recorder.add(frame)
            recorder.flush()
            recorder.add(frame.iloc[:0])  # an empty batch changes nothing
    back = load_recording(recorder.path)
    assert_same_rows(back, pd.concat([plain(b) for b in batches], ignore_index=True))
    assert set(back["device_id"].cat.categories) == {
        f"site{i}-{d:03d}" for i in range(4) for d in range(3 + i)
    }


def test_recorder_flush_due(tmp_path: Path) -> None:
    eager = Recorder(tmp_path / "eager.parquet", flush_every=0)
    assert not eager.flush_due()  # nothing pending
    eager.add(make_frame(3))
    assert eager.flush_due()
    eager.flush()
    assert not eager.flush_due()
    eager.add(make_frame(0), [reject(1)])
    assert eager.flush_due()  # rejects alone are worth a flush
    assert eager.flush() is None  # but there is no rows part
    assert not eager.flush_due()

    lazy = Recorder(tmp_path / "lazy.parquet", flush_every=3600)
    lazy.add(make_frame(3))
    assert not lazy.flush_due()
    eager.stop()
    lazy.stop()


def test_recorder_rejects_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="flush_every"):
        Recorder(tmp_path / "r.parquet", flush_every=-1)


def test_recorder_stop_is_idempotent_and_ignores_late_batches(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "r.parquet")
    recorder.add(make_frame(10))
    first = local(recorder.stop())
    mtime = first.stat().st_mtime_ns
    assert recorder.stop() == first
    assert first.stat().st_mtime_ns == mtime
    recorder.add(make_frame(1), [reject(1)])  # an ingest thread racing stop(): dropped
    assert recorder.rows == 10
    assert recorder.rejects == 0
    assert recorder.flush() is None
    assert not recorder.flush_due()
    assert not recorder.parts_dir.exists()
    assert len(load_recording(first)) == 10


def test_recorder_empty_session(tmp_path: Path) -> None:
    with Recorder(tmp_path / "empty.parquet", metadata={"who": "test"}) as recorder:
        pass
    back = load_recording(recorder.path)
    assert back.empty
    assert list(back.columns) == list(COLUMNS)
    meta = read_metadata(recorder.path)
    assert meta["rows"] == "0"
    assert meta["who"] == "test"
    start = datetime.fromisoformat(meta["start"])
    assert abs(start - recorder.started_at) < timedelta(milliseconds=1)
    assert datetime.fromisoformat(meta["end"]) >= start
    assert load_rejects(recorder.path).empty


def test_recorder_rejects_sidecar(tmp_path: Path) -> None:
    payloads = [b"\xff\xfe\x00binary", b"", "ไทย".encode(), b"{" * 300]
    rejects = [reject(i, payload) for i, payload in enumerate(payloads)]
    with Recorder(tmp_path / "s.parquet", metadata={"who": "test"}) as recorder:
        recorder.add(make_frame(5), rejects[:2])
        recorder.flush()
        recorder.add(make_frame(0), rejects[2:])
    assert recorder.rejects == 4
    sidecar = tmp_path / "s.rejects.parquet"
    assert sidecar.is_file()
    assert read_metadata(recorder.path)["rejects"] == "4"
    assert raw_metadata(sidecar)[b"tesaiot.who"] == b"test"
    for source in (recorder.path, sidecar):
        back = load_rejects(source)
        assert list(back.columns) == [
            "received_at",
            "topic",
            "reason",
            "detail",
            "payload",
            "payload_size",
        ]
        assert list(back["payload"]) == payloads
        assert list(back["payload_size"]) == [len(p) + 1000 for p in payloads]
        assert list(back["reason"].astype(str)) == [r.reason.value for r in rejects]
        assert list(back["topic"]) == [r.topic for r in rejects]
        assert list(back["detail"]) == [r.detail for r in rejects]
        assert back["received_at"].dtype == UTC_NS
        expected_times = pd.to_datetime([r.received_ns for r in rejects], unit="ns", utc=True)
        assert list(back["received_at"]) == list(expected_times)


def test_recorder_removes_stale_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    with Recorder(path) as recorder:
        recorder.add(make_frame(2), [reject(1)])
    assert len(load_rejects(path)) == 1
    with Recorder(path) as recorder:
        recorder.add(make_frame(3))
    assert load_rejects(path).empty
    assert len(load_recording(path)) == 3


def test_recorder_refuses_an_unfinished_recording(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "r.parquet")
    recorder.add(make_frame(3))
    recorder.flush()
    with pytest.raises(FileExistsError, match="load_recording"):
        Recorder(tmp_path / "r.parquet")
    recorder.stop()


def test_recorder_add_and_flush_from_threads(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "t.parquet", flush_every=0)
    done = threading.Event()

    def ingest(worker: int) -> None:
        for index in range(40):
            frame = make_frame(25, prefix=f"w{worker}", seed=index)
            frame["value"] = np.arange(25) + 1000 * index + 100_000 * worker
            recorder.add(frame)

    def housekeeping() -> None:
        while not done.is_set():
            recorder.flush()

    flusher = threading.Thread(target=housekeeping)
    flusher.start()
    workers = [threading.Thread(target=ingest, args=(w,)) for w in range(4)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    done.set()
    flusher.join()
    back = load_recording(recorder.stop())
    assert len(back) == 4 * 40 * 25
    assert back["value"].is_unique
    for worker in range(4):  # each thread's rows keep their order
        mine = back[back["device_id"].astype(str).str.startswith(f"w{worker}-")]
        assert mine["value"].is_monotonic_increasing


# --- crash ---------------------------------------------------------------------------------


def _crash_helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "crash_recorder", Path(__file__).with_name("crash_recorder.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_recording_survives_sigkill(tmp_path: Path) -> None:
    helper = _crash_helper()
    path = tmp_path / "crash.parquet"
    parts, rows = 3, 400
    process = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("crash_recorder.py")),
            str(path),
            str(parts),
            str(rows),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, process.kill)  # a hung child ends the test, not the suite
    watchdog.start()
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == f"flushed {parts}", process.stderr.read() if process.stderr else ""
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        watchdog.cancel()
        process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL

    assert not path.exists()
    parts_dir = tmp_path / "crash.parquet.parts"
    # What a crash in the middle of a write leaves: a temp file, never a part.
    (parts_dir / ".part-000004.parquet.0badf00d.tmp").write_bytes(b"PAR1 half")
    expected = pd.concat([plain(helper.batch(i, rows)) for i in range(parts)], ignore_index=True)
    assert_same_rows(load_recording(path), expected)
    assert_same_rows(load_recording(parts_dir), expected)
    assert read_metadata(path)["rows"] == str(parts * rows)
    rejects = load_rejects(path)
    assert list(rejects["topic"]) == [helper.reject(i).topic for i in range(parts)]


# --- DatasetWriter -------------------------------------------------------------------------


def test_dataset_writer_splits_by_utc_date(tmp_path: Path) -> None:
    root = tmp_path / "data"
    # 4 s of rows from 23:59:58 UTC: the first half on 12-09, the rest on 12-10.
    frame = make_frame(4000, start=T0, step_ns=1_000_000)
    writer = DatasetWriter(root, metadata={"source": "test"})
    written: list[Path] = []
    for chunk in np.array_split(np.arange(len(frame)), 7):
        writer.add(frame.iloc[chunk])
        if chunk[0] % 2 == 0:
            written += map(local, writer.flush())
    written += map(local, writer.flush())
    assert writer.flush() == []
    assert writer.rows_written == len(frame)

    assert sorted(p.name for p in root.iterdir()) == ["date=2025-12-09", "date=2025-12-10"]
    pattern = re.compile(r"part-\d{8}T\d{12}-[A-Za-z0-9_-]+-\d+-[0-9a-f]{8}\.parquet")
    for path in written:
        assert pattern.fullmatch(path.name), path.name
        day = path.parent.name.removeprefix("date=")
        days = load_recording(path)["received_at"].dt.strftime("%Y-%m-%d")
        assert set(days) == {day}
        assert read_metadata(path)["source"] == "test"
    back = load_recording(root)
    assert_same_rows(back, frame)  # every row once, in date then flush order
    assert "date" not in back.columns

    hive = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    assert hive.num_rows == len(frame)
    assert set(hive.column("date").to_pylist()) == {"2025-12-09", "2025-12-10"}
    # NaN values are stored as Arrow nulls and come back as NaN.
    hive_values = hive.column("value").to_pandas()
    np.testing.assert_array_equal(np.sort(hive_values), np.sort(frame["value"]))
    meta = read_metadata(root)
    assert meta["rows"] == str(len(frame))
    assert meta["start"] == frame["received_at"].min().isoformat(timespec="microseconds")
    assert meta["end"] == frame["received_at"].max().isoformat(timespec="microseconds")


def test_dataset_writer_appends_to_an_existing_folder(tmp_path: Path) -> None:
    first, second = make_frame(10, seed=1), make_frame(10, seed=2)
    for frame in (first, second):
        writer = DatasetWriter(tmp_path / "ds")
        writer.add(frame)
        writer.flush()
    back = load_recording(tmp_path / "ds")
    assert len(back) == 20
    assert set(back["value"].dropna()) == set(first["value"].dropna()) | set(
        second["value"].dropna()
    )


def test_each_dataset_day_carries_only_its_own_categories(tmp_path: Path) -> None:
    # Devices 0-1 report before midnight, 2-3 after: each day's file names only its own.
    frame = make_frame(4, start=T0, step_ns=1_000_000_000, devices=4)
    writer = DatasetWriter(tmp_path / "ds")
    writer.add(frame)
    written = writer.flush()
    assert len(written) == 2
    for path in written:
        table = pq.read_table(path)
        rows = set(table.column("device_id").to_pylist())
        dictionary = table.column("device_id").chunk(0).dictionary.to_pylist()
        assert sorted(dictionary) == sorted(rows)
    assert_same_rows(load_recording(tmp_path / "ds"), frame)


# --- recording failures --------------------------------------------------------------------


def test_two_recorders_on_one_path_the_second_fails_at_construction(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.parquet"
    first = Recorder(path)
    assert first.parts_dir.is_dir()  # made at once: it is what keeps a second recorder out
    with pytest.raises(FileExistsError, match="another recorder") as caught:
        Recorder(path)
    assert "hint:" in str(caught.value)
    first.add(make_frame(5))
    first.stop()
    assert_same_rows(load_recording(path), make_frame(5))


def test_counts_and_error_of_a_recorder_whose_folder_was_removed(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    recorder = Recorder(path, flush_every=0)
    assert recorder.rows_on_disk == 0
    assert recorder.error is None
    recorder.add(make_frame(10))
    recorder.flush()
    assert recorder.rows_on_disk == 10
    shutil.rmtree(local(recorder.parts_dir))  # a clean-up script, or the user, removes it
    recorder.add(make_frame(7, seed=1))
    with pytest.raises(FileNotFoundError) as caught:
        recorder.flush()
    assert recorder.error is caught.value
    assert recorder.rows_on_disk == 10  # what was written; the stop below counts again
    assert not recorder.parts_dir.exists()  # not made again behind the user's back

    with pytest.raises(RecordingError, match=re.escape(str(path))) as failed:
        recorder.stop()
    error = failed.value
    assert isinstance(error.__cause__, FileNotFoundError)
    assert error.path == str(path)
    assert (error.rows_on_disk, error.rows_lost) == (0, 17)
    assert recorder.rows_on_disk == 0
    assert recorder.error is error
    assert "hint:" in str(error)
    assert recorder.stopped
    with pytest.raises(RecordingError) as again:
        recorder.stop()
    assert again.value is error
    recorder.add(make_frame(3))  # stopped: dropped, as after a successful stop
    assert recorder.rows == 17
    assert recorder.flush() is None
    assert not path.exists()


def _batch(index: int, rows: int = 1000) -> pd.DataFrame:
    return make_frame(rows, start=T0 + pd.Timedelta(seconds=index), seed=index)


def _add_until_the_disk_is_full(sink: Sink) -> tuple[list[pd.DataFrame], OSError]:
    """Add and flush batches of 1,000 rows until a flush fails; return them and the error."""
    batches: list[pd.DataFrame] = []
    for index in range(100):
        batches.append(_batch(index))
        sink.add(batches[-1])
        try:
            sink.flush()
        except OSError as exc:
            return batches, exc
    pytest.fail("the disk never filled up")


def test_a_full_disk_fails_the_flush_keeps_the_rows_and_a_later_flush_writes_them(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        filler = fill(disk, limit=96 * 1024)
        recorder = Recorder(disk / "r.parquet", flush_every=0)
        batches, full = _add_until_the_disk_is_full(recorder)
        assert full.errno == errno.ENOSPC
        assert recorder.error is full
        assert recorder.rows == 1000 * len(batches)
        assert recorder.rows_on_disk == 1000 * (len(batches) - 1)  # the last batch is pending
        assert leftovers(disk) == []

        filler.unlink()  # space again
        assert recorder.flush() is not None
        assert recorder.error is None
        assert recorder.rows_on_disk == recorder.rows
        expected = pd.concat([plain(b) for b in batches], ignore_index=True)
        assert_same_rows(load_recording(recorder.path), expected)

        # Full again when stop merges the parts: every row is in the parts, none is lost.
        fill(disk)
        with pytest.raises(RecordingError, match="No space left") as failed:
            recorder.stop()
        assert (failed.value.rows_on_disk, failed.value.rows_lost) == (recorder.rows, 0)
        assert failed.value.__cause__ is not None
        assert getattr(failed.value.__cause__, "errno", None) == errno.ENOSPC
        assert_same_rows(load_recording(recorder.path), expected)
        assert leftovers(disk) == []


def test_stop_on_a_read_only_disk_raises_with_the_rows_on_disk(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        path = disk / "r.parquet"
        recorder = Recorder(path, flush_every=0)
        recorder.add(_batch(0, 300), [reject(1)])
        recorder.flush()
        recorder.add(_batch(1, 200))
        remount_read_only(disk)
        with pytest.raises(OSError, match="Read-only") as flush_failed:
            recorder.flush()
        assert flush_failed.value.errno == errno.EROFS
        with pytest.raises(RecordingError, match="Read-only file system") as failed:
            recorder.stop()
        assert failed.value.path == str(path)
        assert (failed.value.rows_on_disk, failed.value.rows_lost) == (300, 200)
        assert "300 rows reached disk, 200 rows were lost" in str(failed.value)
        assert f"load_recording({str(recorder.parts_dir)!r})" in str(failed.value)
        assert recorder.rows_on_disk == 300
        assert_same_rows(load_recording(path), _batch(0, 300))
        assert len(load_rejects(path)) == 1


def test_a_full_disk_fails_a_dataset_flush_and_a_later_flush_writes_the_rows(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        filler = fill(disk, limit=96 * 1024)
        writer = DatasetWriter(disk / "ds")
        assert writer.error is None
        batches, full = _add_until_the_disk_is_full(writer)
        assert full.errno == errno.ENOSPC
        assert writer.error is full
        assert writer.rows_on_disk == writer.rows_written == 1000 * (len(batches) - 1)

        filler.unlink()
        assert writer.flush() != []
        assert writer.error is None
        assert writer.rows_on_disk == 1000 * len(batches)
        expected = pd.concat([plain(b) for b in batches], ignore_index=True)
        assert_same_rows(load_recording(disk / "ds"), expected)
        assert leftovers(disk) == []


def test_closing_a_dataset_on_a_full_disk_raises_with_the_counts_and_can_be_retried(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        writer = DatasetWriter(disk / "ds")
        writer.add(_batch(0))
        writer.flush()
        filler = fill(disk)
        writer.add(_batch(1))
        with pytest.raises(RecordingError, match="No space left") as failed:
            writer.close()
        assert (failed.value.rows_on_disk, failed.value.rows_lost) == (1000, 1000)
        assert failed.value.path == str(disk / "ds")
        assert writer.error is not None
        assert leftovers(disk) == []
        writer.add(_batch(2))  # closed: dropped
        filler.unlink()
        assert writer.close() == disk / "ds"  # the pending rows, written now
        assert writer.error is None
        expected = pd.concat([plain(_batch(0)), plain(_batch(1))], ignore_index=True)
        assert_same_rows(load_recording(disk / "ds"), expected)
