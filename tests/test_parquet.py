"""Parquet files: real files written and read back (write_frame, write_batches, the readers)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tesaiot_data.errors import NotARecordingError
from tesaiot_data.files.parquet import (
    PARQUET_COMPRESSION,
    atomic_write,
    write_batches,
    write_frame,
    write_rejects,
)
from tesaiot_data.messages import RawMessage
from tesaiot_data.parse.rows import parse_batch
from tesaiot_data.readers.disk import load_recording, load_rejects, read_metadata
from tesaiot_data.schema import ARROW_SCHEMA, CATEGORY_COLUMNS, COLUMNS, empty_frame, to_canonical
from tesaiot_data.sinks.dataset import DatasetWriter
from tesaiot_data.sinks.recorder import Recorder
from tesaiot_data.window.rolling import RollingWindow
from tests.frames import (
    T0,
    assert_same_rows,
    leftovers,
    make_frame,
    plain,
    raw_metadata,
    reject,
    with_unused_categories,
)
from tests.helpers import local

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


def _window(batches: int = 4, rows: int = 50) -> RollingWindow:
    """A window of `rows`-message batches: 5 devices, text and numeric metrics."""
    window = RollingWindow(window_ns=None, max_rows=10_000)
    for k in range(batches):
        messages = [
            RawMessage(
                f"device/dev-{i % 5}/telemetry/{'state' if i % 7 == 0 else 'temperature'}",
                (b'{"value": "open"}' if i % 7 == 0 else b'{"value": %d, "unit": "C"}' % i),
                T0.value + i * 1_000_000,
            )
            for i in range(k * rows, (k + 1) * rows)
        ]
        window.append(parse_batch(messages))
    return window


def test_write_batches_of_a_window_is_write_frame_of_its_frame(tmp_path: Path) -> None:
    window = _window()
    path = write_batches(window.batches(), tmp_path / "b.parquet", metadata={"who": "test"})
    assert pq.read_schema(path).remove_metadata().equals(ARROW_SCHEMA)
    frame = window.frame()
    assert_same_rows(load_recording(path), frame)
    meta = read_metadata(path)
    same = read_metadata(write_frame(frame, tmp_path / "f.parquet", metadata={"who": "test"}))
    assert meta == same
    assert meta["rows"] == "200"


def test_write_batches_of_several_generations_and_of_none(tmp_path: Path) -> None:
    window = _window()
    chunk = window.append(parse_batch([RawMessage("device/x/telemetry/t", b"1", T0.value)]))
    assert chunk is not None
    batches = [*window.batches(), chunk.to_arrow()]  # two dictionaries for device_id
    back = load_recording(write_batches(batches, tmp_path / "two.parquet"))
    assert back["device_id"].astype(str).tolist()[-2:] == ["x", "x"]
    empty = write_batches([], tmp_path / "none.parquet")
    assert_same_rows(load_recording(empty), empty_frame())
    assert read_metadata(empty)["rows"] == "0"


def test_write_batches_refuses_a_batch_of_another_schema(tmp_path: Path) -> None:
    (batch,) = _window(1).batches()
    loose = pa.RecordBatch.from_arrays(
        [batch.column(i).cast(pa.string()) if i == 2 else batch.column(i) for i in range(8)],
        names=batch.schema.names,
    )
    with pytest.raises(ValueError, match=r"'device_id' of the batch is string, not dict.*hint"):
        write_batches([batch, loose], tmp_path / "loose.parquet")
    fewer = pa.RecordBatch.from_arrays(batch.columns[:7], names=batch.schema.names[:7])
    with pytest.raises(ValueError, match="has the columns"):
        write_batches([fewer], tmp_path / "fewer.parquet")
    with pytest.raises(ValueError, match="not DataFrame"):
        write_batches([_window(1).frame()], tmp_path / "frame.parquet")
    assert not list(tmp_path.iterdir())
    # The right columns with pyarrow's default nullable flags: accepted as they are.
    relaxed = pa.RecordBatch.from_arrays(batch.columns, names=batch.schema.names)
    assert not relaxed.schema.equals(ARROW_SCHEMA)
    path = write_batches([relaxed], tmp_path / "relaxed.parquet")
    assert pq.read_schema(path).remove_metadata().equals(ARROW_SCHEMA)
    assert len(load_recording(path)) == batch.num_rows


# --- atomic writes -------------------------------------------------------------------------


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    path = write_frame(make_frame(5), tmp_path / "out.parquet")

    def half_then_fail(sink: object) -> None:
        sink.write(b"PAR1 half a file")  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert len(load_recording(path)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


def test_leftover_temp_files_are_ignored(tmp_path: Path) -> None:
    frame = make_frame(30)
    writer = DatasetWriter(tmp_path / "ds")
    writer.add(frame)
    (written,) = map(local, writer.flush())
    (written.parent / f".{written.name}.deadbeef.tmp").write_bytes(b"garbage")
    (tmp_path / "ds" / ".part-x.parquet.1234.tmp").write_bytes(b"garbage")
    assert_same_rows(load_recording(tmp_path / "ds"), frame)
    assert ds.dataset(tmp_path / "ds", format="parquet", partitioning="hive").count_rows() == 30


# --- filters, dedupe, missing paths --------------------------------------------------------


@pytest.fixture(params=["file", "parts", "dataset"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    frame = make_frame(6000, start=T0, step_ns=1_000_000, devices=50, metrics=4)
    batches = np.array_split(np.arange(len(frame)), 5)
    if request.param == "file":
        return local(write_frame(frame, tmp_path / "all.parquet")), frame
    if request.param == "parts":
        recorder = Recorder(tmp_path / "rec.parquet")
        for chunk in batches:
            recorder.add(frame.iloc[chunk])
            recorder.flush()
        return local(recorder.parts_dir), frame
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
    source: tuple[Path, pd.DataFrame],
    options: dict[str, Any],
    select: Callable[[pd.DataFrame], pd.Series],
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
    path = local(write_rejects(rejects, tmp_path / "x.rejects.parquet", metadata={"k": "v"}))
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


# --- files that are not recordings ---------------------------------------------------------


def _rejects_sidecar(folder: Path) -> Path:
    return local(write_rejects([reject(1), reject(2)], folder / "s.rejects.parquet"))


def _renamed_sidecar(folder: Path) -> Path:
    return local(write_rejects([reject(1)], folder / "bad-messages.parquet"))


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
    (written,) = map(local, writer.flush())
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


# --- mixed types, dedupe of text readings, unused categories -------------------------------


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


def test_files_carry_only_the_categories_their_rows_use(tmp_path: Path) -> None:
    frame = with_unused_categories(20, 200_000)
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
        assert local(recorder.parts_dir).joinpath("part-000001.parquet").stat().st_size < 20_000
        recorder.add(with_unused_categories(20, 1_000))
    assert recorder.path.stat().st_size < 20_000
    assert_same_rows(load_recording(recorder.path), pd.concat([plain(frame)] * 2))


def test_live_frames_and_files_hold_one_category_dtype_and_concatenate(tmp_path: Path) -> None:
    window = RollingWindow(window_ns=None, max_rows=100)
    window.append(
        parse_batch(
            [
                RawMessage("device/d1/telemetry/env", b'{"temperature": 21.5, "state": "ok"}', 1),
                RawMessage("device/d2/telemetry/t", b'{"value": 3, "unit": "V"}', 2),
            ]
        )
    )
    live = window.frame()
    stored = load_recording(write_frame(live, tmp_path / "live.parquet"))
    empty = empty_frame()
    canonical = to_canonical(live.astype({name: object for name in CATEGORY_COLUMNS}))
    expected = pd.Index(["x"], dtype=str).dtype  # pandas' default string dtype
    for frame in (live, stored, empty, canonical):
        for name in CATEGORY_COLUMNS:
            assert frame[name].cat.categories.dtype == expected, name
    # Equal category sets: the concatenation stays categorical; different sets give `str`.
    both = pd.concat([live, stored], ignore_index=True)
    for name in CATEGORY_COLUMNS:
        assert isinstance(both[name].dtype, pd.CategoricalDtype), name
    mixed = pd.concat([window.frame(devices=["d2"]), stored], ignore_index=True)
    assert mixed["device_id"].dtype == expected
    assert mixed["device_id"].tolist() == ["d2", "d1", "d1", "d2"]
