"""Parquet storage: real files written and read back."""

from __future__ import annotations

import errno
import importlib.util
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tesaiot_data.errors import NotARecordingError, RecordingError
from tesaiot_data.messages import Reject, RejectReason
from tesaiot_data.schema import ARROW_SCHEMA, CATEGORY_COLUMNS, COLUMNS, empty_frame
from tesaiot_data.storage import (
    PARQUET_COMPRESSION,
    DatasetWriter,
    Recorder,
    load_recording,
    load_rejects,
    read_metadata,
    write_frame,
    write_rejects,
)
from tests.small_disk import fill, remount_read_only, small_disk

T0 = pd.Timestamp("2025-12-09T23:59:58", tz="UTC")
UTC_NS = pd.DatetimeTZDtype(unit="ns", tz="UTC")


def make_frame(
    rows: int,
    *,
    start: pd.Timestamp = T0,
    step_ns: int = 1_000_000,
    devices: int = 5,
    metrics: int = 4,
    prefix: str = "dev",
    seed: int = 0,
) -> pd.DataFrame:
    """A canonical frame with NaN values, missing units and text values mixed in."""
    rng = np.random.default_rng(seed)
    times = start + pd.to_timedelta(np.arange(rows) * step_ns, unit="ns")
    values = rng.normal(20, 5, rows)
    values[::7] = np.nan
    text = np.where(np.arange(rows) % 7 == 0, "on", None)
    unit = np.where(np.arange(rows) % 5 == 0, None, "C")
    return pd.DataFrame(
        {
            "timestamp": times + pd.to_timedelta(rng.integers(0, 999, rows), unit="ns"),
            "received_at": times,
            "device_id": pd.Categorical([f"{prefix}-{i % devices:03d}" for i in range(rows)]),
            "sensor_type": pd.Categorical(["env"] * rows),
            "metric": pd.Categorical([f"m{i % metrics}" for i in range(rows)]),
            "value": values,
            "unit": pd.Categorical(unit),
            "value_text": pd.Categorical(text),
        }
    )


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with categories as plain values, so frames with other category lists compare."""
    out = frame.reset_index(drop=True).copy()
    for name in CATEGORY_COLUMNS:
        out[name] = out[name].astype(object).where(out[name].notna(), None)
    return out


def assert_same_rows(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(actual.columns) == list(COLUMNS)
    assert isinstance(actual.index, pd.RangeIndex)
    assert actual.index.start == 0
    assert actual["timestamp"].dtype == UTC_NS
    assert actual["received_at"].dtype == UTC_NS
    assert actual["value"].dtype == "float64"
    for name in CATEGORY_COLUMNS:
        assert isinstance(actual[name].dtype, pd.CategoricalDtype), name
    pd.testing.assert_frame_equal(plain(actual), plain(expected))


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def raw_metadata(path: Path) -> dict[bytes, bytes]:
    """A file's key-value metadata as pyarrow reads it (read_metadata is for recordings)."""
    return dict(pq.read_metadata(path).metadata or {})


def reject(index: int, payload: bytes = b"\xff\xfe{not json") -> Reject:
    return Reject(
        topic=f"device/d{index}/telemetry",
        payload=payload,
        payload_size=len(payload) + 1000,
        reason=RejectReason.NOT_JSON if index % 2 else RejectReason.BAD_TOPIC,
        detail=f"detail {index}",
        received_ns=1_765_324_800_250_000_000 + index * 10**9,
    )


# --- write_frame ---------------------------------------------------------------------------


def _all_nan_values() -> pd.DataFrame:
    frame = make_frame(20)
    frame["value"] = np.nan
    return frame


def _no_units_or_text() -> pd.DataFrame:
    frame = make_frame(20)
    frame["unit"] = pd.Categorical([None] * 20)
    frame["value_text"] = pd.Categorical([None] * 20)
    return frame


def _special_floats() -> pd.DataFrame:
    frame = make_frame(5)
    frame["value"] = [np.inf, -np.inf, -0.0, 1e308, 5e-324]
    return frame


def _unicode_text() -> pd.DataFrame:
    frame = make_frame(4)
    frame["device_id"] = pd.Categorical(["เซนเซอร์-1", "dev/ä", "dev 2", "emoji-🌡"])
    frame["value_text"] = pd.Categorical(["สวัสดี", None, "", "a\nb"])
    return frame


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(make_frame(1), id="one-row"),
        pytest.param(make_frame(500), id="nan-values-none-units"),
        pytest.param(make_frame(3000, devices=1500, metrics=40), id="many-categories"),
        pytest.param(_all_nan_values(), id="all-nan"),
        pytest.param(_no_units_or_text(), id="no-units-or-text"),
        pytest.param(_special_floats(), id="special-floats"),
        pytest.param(_unicode_text(), id="unicode"),
    ],
)
def test_write_frame_round_trip(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = write_frame(frame, tmp_path / "out.parquet")
    assert path == tmp_path / "out.parquet"
    back = load_recording(path)
    assert_same_rows(back, frame)
    # Nanoseconds survive.
    assert (back["timestamp"].to_numpy() == frame["timestamp"].to_numpy()).all()


def test_written_file_has_the_one_schema_zstd_and_dictionaries(tmp_path: Path) -> None:
    path = write_frame(make_frame(100), tmp_path / "out.parquet")
    assert pq.read_schema(path).remove_metadata().equals(ARROW_SCHEMA)
    meta = pq.ParquetFile(path).metadata
    for group in range(meta.num_row_groups):
        for column in range(meta.num_columns):
            chunk = meta.row_group(group).column(column)
            assert chunk.compression == PARQUET_COMPRESSION.upper()
    device = meta.row_group(0).column(COLUMNS.index("device_id"))
    assert any("DICTIONARY" in encoding for encoding in device.encodings)


def test_write_frame_accepts_non_canonical_dtypes(tmp_path: Path) -> None:
    frame = make_frame(10)
    loose = plain(frame)
    loose["timestamp"] = loose["timestamp"].dt.tz_localize(None).astype("datetime64[us]")
    back = load_recording(write_frame(loose, tmp_path / "loose.parquet"))
    expected = frame.assign(timestamp=frame["timestamp"].dt.floor("us"))
    assert_same_rows(back, expected)


def test_write_frame_creates_parents_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.parquet"
    write_frame(make_frame(10), path)
    write_frame(make_frame(3), path)
    assert len(load_recording(path)) == 3
    assert leftovers(tmp_path) == []


def test_write_frame_metadata(tmp_path: Path) -> None:
    frame = make_frame(50)
    given_meta = {"source": "wss://mqtt.example:8085/mqtt", "tesaiot.note": "a b ✓", "empty": ""}
    path = write_frame(frame, tmp_path / "out.parquet", metadata=given_meta)
    raw = pq.read_metadata(path).metadata
    assert set(raw) - {b"ARROW:schema"} == {
        b"tesaiot." + key.encode()
        for key in ("source", "note", "empty", "rows", "start", "end", "version")
    }
    meta = read_metadata(path)
    assert meta["source"] == given_meta["source"]
    assert meta["note"] == "a b ✓"
    assert meta["empty"] == ""
    assert meta["rows"] == "50"
    assert datetime.fromisoformat(meta["start"]) == frame["received_at"].min().to_pydatetime()
    assert datetime.fromisoformat(meta["end"]) == frame["received_at"].max().to_pydatetime()
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", meta["version"])


def test_computed_metadata_wins_over_the_callers(tmp_path: Path) -> None:
    path = write_frame(make_frame(7), tmp_path / "out.parquet", metadata={"rows": "999"})
    assert read_metadata(path)["rows"] == "7"


def test_metadata_must_be_strings(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not str"):
        write_frame(make_frame(1), tmp_path / "out.parquet", metadata={"rows_ok": 3})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        Recorder(tmp_path / "rec.parquet", metadata={"n": 1})  # type: ignore[dict-item]


def test_empty_frame_round_trip(tmp_path: Path) -> None:
    path = write_frame(empty_frame(), tmp_path / "empty.parquet")
    back = load_recording(path)
    assert back.empty
    assert_same_rows(back, empty_frame())
    meta = read_metadata(path)
    assert meta["rows"] == "0"
    assert "start" not in meta


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=30),
    texts=st.lists(st.one_of(st.none(), st.text(max_size=8)), min_size=1, max_size=30),
)
def test_round_trip_property(tmp_path: Path, values: list[float], texts: list[str | None]) -> None:
    rows = len(values)
    frame = make_frame(rows)
    frame["value"] = values
    frame["value_text"] = pd.Categorical([texts[i % len(texts)] for i in range(rows)])
    frame["device_id"] = pd.Categorical([texts[i % len(texts)] or "-" for i in range(rows)])
    assert_same_rows(load_recording(write_frame(frame, tmp_path / "p.parquet")), frame)


# --- atomic writes -------------------------------------------------------------------------


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    from tesaiot_data import storage  # noqa: PLC0415  (the private helper under test)

    path = write_frame(make_frame(5), tmp_path / "out.parquet")

    def half_then_fail(sink: object) -> None:
        sink.write(b"PAR1 half a file")  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        storage._atomic_write(path, half_then_fail)
    assert len(load_recording(path)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


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
    first = recorder.stop()
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


def test_leftover_temp_files_are_ignored(tmp_path: Path) -> None:
    frame = make_frame(30)
    writer = DatasetWriter(tmp_path / "ds")
    writer.add(frame)
    (written,) = writer.flush()
    (written.parent / f".{written.name}.deadbeef.tmp").write_bytes(b"garbage")
    (tmp_path / "ds" / ".part-x.parquet.1234.tmp").write_bytes(b"garbage")
    assert_same_rows(load_recording(tmp_path / "ds"), frame)
    assert ds.dataset(tmp_path / "ds", format="parquet", partitioning="hive").count_rows() == 30


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
            written += writer.flush()
    written += writer.flush()
    assert writer.flush() == []
    assert writer.rows_written == len(frame)

    assert sorted(p.name for p in root.iterdir()) == ["date=2025-12-09", "date=2025-12-10"]
    pattern = re.compile(r"part-\d{8}T\d{12}-[0-9a-f]{8}\.parquet")
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


# --- filters, dedupe, missing paths -----------------------------------------------------------


@pytest.fixture(params=["file", "parts", "dataset"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    frame = make_frame(6000, start=T0, step_ns=1_000_000, devices=50, metrics=4)
    batches = np.array_split(np.arange(len(frame)), 5)
    if request.param == "file":
        return write_frame(frame, tmp_path / "all.parquet"), frame
    if request.param == "parts":
        recorder = Recorder(tmp_path / "rec.parquet")
        for chunk in batches:
            recorder.add(frame.iloc[chunk])
            recorder.flush()
        return recorder.parts_dir, frame
    writer = DatasetWriter(tmp_path / "ds")
    for chunk in batches:
        writer.add(frame.iloc[chunk])
        writer.flush()
    return tmp_path / "ds", frame


@pytest.mark.parametrize(
    ("options", "select"),
    [
        pytest.param({}, lambda f: f.index >= 0, id="none"),
        pytest.param(
            {"devices": ["dev-001", "dev-007", "nope"]},
            lambda f: f["device_id"].isin(["dev-001", "dev-007"]),
            id="devices",
        ),
        pytest.param(
            {"devices": "dev-003"}, lambda f: f["device_id"] == "dev-003", id="one-device"
        ),
        pytest.param(
            {"metrics": ("m1", "m3")}, lambda f: f["metric"].isin(["m1", "m3"]), id="metrics"
        ),
        pytest.param({"devices": []}, lambda f: f.index < 0, id="no-devices"),
        pytest.param(
            {"start": "2025-12-10 00:00:01", "end": "2025-12-10T00:00:02.5"},
            lambda f: (
                (f["timestamp"] >= pd.Timestamp("2025-12-10 00:00:01", tz="UTC"))
                & (f["timestamp"] < pd.Timestamp("2025-12-10 00:00:02.5", tz="UTC"))
            ),
            id="naive-strings-are-utc",
        ),
        pytest.param(
            {"start": datetime(2025, 12, 10, 7, 0, 0, tzinfo=timezone(timedelta(hours=7)))},
            lambda f: f["timestamp"] >= pd.Timestamp("2025-12-10 00:00:00", tz="UTC"),
            id="aware-datetime",
        ),
        pytest.param(
            {"end": pd.Timestamp("2025-12-09 19:00:00.5", tz="America/New_York")},
            lambda f: f["timestamp"] < pd.Timestamp("2025-12-10 00:00:00.5", tz="UTC"),
            id="timestamp-other-zone",
        ),
        pytest.param(
            {
                "start": T0 + pd.Timedelta(seconds=1),
                "end": T0 + pd.Timedelta(seconds=5),
                "devices": ["dev-010"],
                "metrics": ["m2"],
            },
            lambda f: (
                (f["timestamp"] >= T0 + pd.Timedelta(seconds=1))
                & (f["timestamp"] < T0 + pd.Timedelta(seconds=5))
                & (f["device_id"] == "dev-010")
                & (f["metric"] == "m2")
            ),
            id="all",
        ),
        pytest.param({"start": "2030-01-01"}, lambda f: f.index < 0, id="after-the-end"),
    ],
)
def test_filters_match_pandas(
    source: tuple[Path, pd.DataFrame], options: dict, select: Callable[[pd.DataFrame], pd.Series]
) -> None:
    path, frame = source
    expected = frame[select(frame)]
    back = load_recording(path, **options)
    if expected.empty:
        assert back.empty
        assert_same_rows(back, empty_frame())
    else:
        assert_same_rows(back, expected)


def test_bad_time_filter(tmp_path: Path) -> None:
    path = write_frame(make_frame(3), tmp_path / "f.parquet")
    with pytest.raises(ValueError, match="start"):
        load_recording(path, start="not a time")


def test_dedupe_keeps_first(tmp_path: Path) -> None:
    frame = make_frame(20)
    redelivered = frame.iloc[[3, 7, 3]].copy()  # row 7 has a NaN value: NaN repeats are repeats
    redelivered["received_at"] += pd.Timedelta(seconds=30)  # arrives later, same reading
    changed = frame.iloc[[5]].copy()
    changed["value"] += 1  # same key, other value: not a repeat
    data = pd.concat([plain(frame), plain(redelivered), plain(changed)], ignore_index=True)
    path = write_frame(data, tmp_path / "d.parquet")
    assert len(load_recording(path)) == 24
    back = load_recording(path, dedupe=True)
    assert_same_rows(back, pd.concat([plain(frame), plain(changed)], ignore_index=True))


def test_dedupe_across_parts(tmp_path: Path) -> None:
    frame = make_frame(10)
    with Recorder(tmp_path / "r.parquet") as recorder:
        recorder.add(frame)
        recorder.flush()
        recorder.add(frame.iloc[5:])
    assert len(load_recording(recorder.path)) == 15
    assert_same_rows(load_recording(recorder.path, dedupe=True), frame)


@pytest.mark.parametrize("reader", [load_recording, read_metadata, load_rejects])
def test_missing_path(tmp_path: Path, reader: Callable[[Path], object]) -> None:
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        reader(tmp_path / "nothing-here.parquet")


def test_empty_folders_load_as_empty_frames(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "r.parquet.parts").mkdir()
    for path in (tmp_path / "ds", tmp_path / "r.parquet.parts", tmp_path / "r.parquet"):
        back = load_recording(path)
        assert back.empty
        assert list(back.columns) == list(COLUMNS)


def test_load_rejects_when_none(tmp_path: Path) -> None:
    path = write_frame(make_frame(2), tmp_path / "f.parquet")
    back = load_rejects(path)
    assert back.empty
    assert list(back.columns) == [
        "received_at",
        "topic",
        "reason",
        "detail",
        "payload",
        "payload_size",
    ]


def test_write_rejects_and_reason_strings(tmp_path: Path) -> None:
    rejects = [reject(i) for i in range(3)]
    path = write_rejects(rejects, tmp_path / "x.rejects.parquet", metadata={"k": "v"})
    table = pq.read_table(path)
    assert table.schema.field("reason").type == pa.dictionary(pa.int32(), pa.string())
    assert table.schema.field("payload").type == pa.binary()
    meta = raw_metadata(path)
    assert meta[b"tesaiot.k"] == b"v"
    assert meta[b"tesaiot.rows"] == b"3"


def test_missing_device_id_is_refused(tmp_path: Path) -> None:
    frame = make_frame(4)
    frame["device_id"] = pd.Categorical(["a", None, "b", "c"])
    with pytest.raises(ValueError, match="device_id"):
        write_frame(frame, tmp_path / "bad.parquet")
    recorder = Recorder(tmp_path / "r.parquet")
    with pytest.raises(ValueError, match="device_id"):
        recorder.add(frame)
    assert recorder.rows == 0
    assert not (tmp_path / "bad.parquet").exists()


# --- files that are not recordings -----------------------------------------------------------


def _rejects_sidecar(folder: Path) -> Path:
    return write_rejects([reject(1), reject(2)], folder / "s.rejects.parquet")


def _renamed_sidecar(folder: Path) -> Path:
    return write_rejects([reject(1)], folder / "bad-messages.parquet")


def _csv(folder: Path) -> Path:
    path = folder / "s.csv"
    plain(make_frame(5)).to_csv(path, index=False)
    return path


def _half_copied(folder: Path) -> Path:
    whole = write_frame(make_frame(500), folder / "whole.parquet").read_bytes()
    path = folder / "copy.parquet"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def _empty_file(folder: Path) -> Path:
    path = folder / "empty.parquet"
    path.write_bytes(b"")
    return path


def _other_parquet(folder: Path) -> Path:
    path = folder / "other.parquet"
    pd.DataFrame({"city": ["Bangkok"], "population": [10_000_000]}).to_parquet(path)
    return path


def _text_in_value(folder: Path) -> Path:
    path = folder / "text-values.parquet"
    plain(make_frame(3)).assign(value=["a", "b", "c"]).to_parquet(path)
    return path


@pytest.mark.parametrize(
    ("make", "hint"),
    [
        pytest.param(_rejects_sidecar, r"use load_rejects\(\)", id="rejects-sidecar"),
        pytest.param(_renamed_sidecar, r"use load_rejects\(\)", id="renamed-sidecar"),
        pytest.param(_csv, "a recording is a Parquet file", id="csv"),
        pytest.param(_half_copied, "a recording is a Parquet file", id="truncated-parquet"),
        pytest.param(_empty_file, "a recording is a Parquet file", id="empty-file"),
        pytest.param(_other_parquet, "a recording is a Parquet file", id="other-columns"),
    ],
)
def test_a_file_that_is_not_a_recording_is_refused_with_a_hint(
    tmp_path: Path, make: Callable[[Path], Path], hint: str
) -> None:
    path = make(tmp_path)
    for reader in (load_recording, read_metadata):
        with pytest.raises(NotARecordingError, match=hint) as caught:
            reader(path)
        assert str(path) in str(caught.value)
        assert isinstance(caught.value, ValueError)


def test_columns_of_the_wrong_type_are_not_a_recording(tmp_path: Path) -> None:
    with pytest.raises(NotARecordingError, match="cannot be read as a recording"):
        load_recording(_text_in_value(tmp_path))


def test_a_stray_file_in_a_dataset_is_named(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "ds")
    writer.add(make_frame(10))
    (written,) = writer.flush()
    stray = written.with_name("part-zzz.parquet")
    _rejects_sidecar(tmp_path).replace(stray)
    for reader in (load_recording, read_metadata):
        with pytest.raises(NotARecordingError, match=re.escape("part-zzz.parquet")):
            reader(tmp_path / "ds")


def test_parquet_from_another_tool_with_the_columns_still_loads(tmp_path: Path) -> None:
    frame = make_frame(40)
    loose = plain(frame).drop(columns=["unit"])  # plain strings, microseconds, no unit column
    loose["timestamp"] = loose["timestamp"].astype("datetime64[us, UTC]")
    path = tmp_path / "pandas.parquet"
    loose.to_parquet(path)
    expected = frame.assign(
        timestamp=frame["timestamp"].dt.floor("us"), unit=pd.Categorical([None] * len(frame))
    )
    assert_same_rows(load_recording(path), expected)
    assert read_metadata(path) == {}


# --- mixed types, dedupe of text readings, unused categories ---------------------------------


@pytest.mark.parametrize(
    ("column", "values"),
    [
        ("device_id", ["dev-1", 7, "dev-2"]),
        ("value_text", ["open", 3, None]),
        ("unit", ["C", 2.5, None]),
        ("value", ["warm", 21.5, 22.0]),
        pytest.param(
            "timestamp",
            ["not a time", 1, 2],
            marks=pytest.mark.filterwarnings("ignore:Could not infer format"),
        ),
    ],
)
def test_a_column_of_mixed_types_is_a_value_error_naming_it(
    tmp_path: Path, column: str, values: list[object]
) -> None:
    frame = make_frame(3)
    frame[column] = pd.Series(values, dtype=object)
    with pytest.raises(ValueError, match=repr(column)):
        write_frame(frame, tmp_path / "mixed.parquet")
    with pytest.raises(ValueError, match=repr(column)):
        Recorder(tmp_path / "r.parquet").add(frame)
    assert not (tmp_path / "mixed.parquet").exists()


def test_dedupe_keeps_distinct_text_readings_of_one_second(tmp_path: Path) -> None:
    second = pd.Timestamp("2025-12-10T08:00:00", tz="UTC")
    rows = [
        # (timestamp, received after, metric, value_text)
        (second, 0.1, "ai_prediction", "person"),
        (second, 0.2, "ai_prediction", "glass_break"),
        (second, 0.3, "state", "open"),
        (second, 0.4, "state", "closed"),
        (second, 5.0, "ai_prediction", "person"),  # the one real redelivery, 5 s later
        (second + pd.Timedelta(seconds=1), 1.1, "state", "open"),
        (second + pd.Timedelta(seconds=1), 1.2, "state", "closed"),
    ]
    frame = pd.DataFrame(
        {
            "timestamp": pd.DatetimeIndex([r[0] for r in rows]).as_unit("ns"),
            "received_at": pd.DatetimeIndex(
                [second + pd.Timedelta(seconds=r[1]) for r in rows]
            ).as_unit("ns"),
            "device_id": pd.Categorical(["cam-1"] * len(rows)),
            "sensor_type": pd.Categorical(["camera"] * len(rows)),
            "metric": pd.Categorical([r[2] for r in rows]),
            "value": np.nan,
            "unit": pd.Categorical([None] * len(rows)),
            "value_text": pd.Categorical([r[3] for r in rows]),
        }
    )
    path = write_frame(frame, tmp_path / "text.parquet")
    back = load_recording(path, dedupe=True)
    assert len(back) == 6
    assert_same_rows(back, frame.drop(index=4))


def test_dedupe_keeps_rows_that_differ_only_in_unit_or_sensor_type(tmp_path: Path) -> None:
    frame = make_frame(1)
    frame["unit"] = pd.Categorical(["C"])
    other_unit = frame.assign(unit=pd.Categorical(["F"]))
    other_sensor = frame.assign(sensor_type=pd.Categorical(["backup"]))
    data = pd.concat([plain(frame), plain(other_unit), plain(other_sensor)], ignore_index=True)
    assert len(load_recording(write_frame(data, tmp_path / "d.parquet"), dedupe=True)) == 3


def _with_unused_categories(rows: int, unused: int) -> pd.DataFrame:
    """A frame whose string columns share a dictionary of `unused` strings the rows never use,
    like the rolling window's after many messages with unique text."""
    frame = make_frame(rows)
    extra = pd.Index([f"seen-long-ago-{i:06d}" for i in range(unused)])
    for name in CATEGORY_COLUMNS:
        column = frame[name].array
        categories = extra.append(column.categories)
        codes = np.where(column.codes >= 0, column.codes.astype(np.int64) + unused, -1)
        frame[name] = pd.Categorical.from_codes(codes, categories=categories)
    return frame


def test_files_carry_only_the_categories_their_rows_use(tmp_path: Path) -> None:
    frame = _with_unused_categories(20, 200_000)
    assert len(frame["value_text"].cat.categories) > 200_000
    lean = write_frame(make_frame(20), tmp_path / "lean.parquet")
    path = write_frame(frame, tmp_path / "snapshot.parquet")
    size = path.stat().st_size
    assert size < 20_000
    assert abs(size - lean.stat().st_size) < 1_000  # the size follows the rows, not the window
    back = load_recording(path)
    assert_same_rows(back, frame)
    for name in CATEGORY_COLUMNS:
        assert set(back[name].cat.categories) == set(frame[name].dropna().astype(str))

    with Recorder(tmp_path / "r.parquet") as recorder:
        recorder.add(frame)
        recorder.flush()
        assert recorder.parts_dir.joinpath("part-000001.parquet").stat().st_size < 20_000
        recorder.add(_with_unused_categories(20, 1_000))
    assert recorder.path.stat().st_size < 20_000
    assert_same_rows(load_recording(recorder.path), pd.concat([plain(frame)] * 2))


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


# --- recording failures ----------------------------------------------------------------------


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
    shutil.rmtree(recorder.parts_dir)  # a clean-up script, or the user, removes it
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


def test_a_full_disk_fails_the_flush_keeps_the_rows_and_a_later_flush_writes_them(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        filler = fill(disk, limit=96 * 1024)
        recorder = Recorder(disk / "r.parquet", flush_every=0)
        batches: list[pd.DataFrame] = []
        for index in range(100):
            batches.append(_batch(index))
            recorder.add(batches[-1])
            try:
                recorder.flush()
            except OSError as exc:
                full = exc
                break
        else:
            pytest.fail("the disk never filled up")
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
        batches: list[pd.DataFrame] = []
        for index in range(100):
            batches.append(_batch(index))
            writer.add(batches[-1])
            try:
                writer.flush()
            except OSError as exc:
                full = exc
                break
        else:
            pytest.fail("the disk never filled up")
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
