"""`query()` and `load_recording()` return the same rows and values, on any files.

Each source is a real folder of Parquet files written by the package, by pandas, by pyarrow
or by DuckDB itself; both readers and `read_metadata` must agree on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tesaiot_data import NotARecordingError, load_recording, query, read_metadata
from tesaiot_data.files.layout import recording_files
from tesaiot_data.files.parquet import write_frame
from tesaiot_data.schema import COLUMNS
from tesaiot_data.sinks.dataset import DatasetWriter
from tesaiot_data.sinks.recorder import Recorder
from tests.frames import assert_same_rows, make_frame, plain, reject
from tests.helpers import local

DAY = "date=2025-12-09"
T = pd.Timestamp("2025-12-09T10:00", tz="UTC")


def frame_at(rows: int, *, minutes: int = 0, prefix: str = "dev", seed: int = 0) -> pd.DataFrame:
    return make_frame(rows, start=T + pd.Timedelta(minutes=minutes), prefix=prefix, seed=seed)


def selected(source: Path) -> pd.DataFrame:
    return query(source, "select * from telemetry")


def assert_readers_agree(source: Path, expected: pd.DataFrame) -> None:
    """Both readers return `expected`; `read_metadata` counts its rows."""
    assert_same_rows(load_recording(source), expected)
    assert_same_rows(selected(source), expected)
    counted = query(source, "select count(*) as n, sum(value) as total from telemetry")
    assert counted["n"].tolist() == [len(expected)]
    assert counted["total"].iloc[0] == pytest.approx(expected["value"].sum())
    assert read_metadata(source)["rows"] == str(len(expected))


def foreign(frame: pd.DataFrame, path: Path, **types: str) -> Path:
    """Write `frame` as pandas does, plain strings and the given column dtypes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    plain(frame).astype(types).to_parquet(path)
    return path


def record(path: Path, frame: pd.DataFrame, *, finish: bool = True) -> Recorder:
    recorder = Recorder(path, flush_every=0)
    half = len(frame) // 2
    recorder.add(frame.iloc[:half], rejects=[reject(1)])
    recorder.flush()
    recorder.add(frame.iloc[half:])
    recorder.flush()
    if finish:
        recorder.close()
    return recorder


# --- 1. the files' types do not change the values ---------------------------------------------


def whole_numbers(rows: int) -> pd.DataFrame:
    frame = frame_at(rows)
    return frame.assign(
        value=np.arange(21.0, 21.0 + rows), value_text=pd.Categorical([None] * rows)
    )


@pytest.mark.parametrize(
    "value_type", ["int64", "int32", "Int64", "float32"], ids=lambda t: f"first-file-{t}"
)
def test_a_first_file_of_whole_numbers_does_not_round_the_others(
    tmp_path: Path, value_type: str
) -> None:
    root = tmp_path / "ds"
    backfill = whole_numbers(4)
    foreign(backfill, root / DAY / "backfill.parquet", value=value_type)
    live = frame_at(4, minutes=5, seed=1).assign(value=[21.7, 22.7, 23.7, 24.7])
    writer = DatasetWriter(root, flush_every=0)
    writer.add(live)
    writer.close()

    expected = pd.concat([backfill, live], ignore_index=True)
    assert_readers_agree(root, expected)
    assert selected(root)["value"].tolist()[4:] == [21.7, 22.7, 23.7, 24.7]


def test_a_first_file_of_microseconds_keeps_the_others_nanoseconds(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    early = frame_at(6)
    early = early.assign(**{c: early[c].dt.floor("us") for c in ("timestamp", "received_at")})
    foreign(early, root / DAY / "a-backfill.parquet", received_at="datetime64[us, UTC]")
    write_frame(frame_at(6, minutes=5, seed=1), root / DAY / "part-2.parquet")

    expected = pd.concat([early, frame_at(6, minutes=5, seed=1)], ignore_index=True)
    assert_readers_agree(root, expected)


def test_text_only_and_int_value_files_in_one_folder(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    texts = frame_at(5).assign(value=np.nan, value_text=pd.Categorical(["on", "off"] * 2 + ["on"]))
    # A text-only backfill without a value column at all, then whole numbers.
    (root / DAY).mkdir(parents=True)
    table = pa.Table.from_pandas(plain(texts).drop(columns=["value"]), preserve_index=False)
    pq.write_table(table, root / DAY / "a.parquet")
    foreign(whole_numbers(3), root / DAY / "b.parquet", value="int64")
    write_frame(frame_at(3, minutes=9), root / DAY / "c.parquet")

    expected = pd.concat([texts, whole_numbers(3), frame_at(3, minutes=9)], ignore_index=True)
    assert_readers_agree(root, expected)


# --- 2. the path given is the path read ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "neighbour"),
    [
        ("lab [A]", "lab A"),
        ("run?1", "runA1"),
        ("[ab]", "a"),
        ("star*", "star-x"),
        ("x{a,b}", "xa"),
    ],
)
@pytest.mark.parametrize("kind", ["file", "dataset", "parts"])
def test_query_reads_the_path_it_is_given_not_a_glob(
    tmp_path: Path, name: str, neighbour: str, kind: str
) -> None:
    mine, theirs = frame_at(3, prefix="mine"), frame_at(5, prefix="theirs", seed=1)
    sources = {}
    running = []
    for folder, frame in ((name, mine), (neighbour, theirs)):
        if kind == "file":
            sources[folder] = local(write_frame(frame, tmp_path / folder / "rec.parquet"))
        elif kind == "dataset":
            write_frame(frame, tmp_path / folder / DAY / "part-1.parquet")
            sources[folder] = tmp_path / folder
        else:
            running.append(record(tmp_path / folder / "rec.parquet", frame, finish=False))
            sources[folder] = local(running[-1].parts_dir)
    try:
        assert_readers_agree(sources[name], mine)
        assert_readers_agree(sources[neighbour], theirs)
    finally:
        for recorder in running:
            recorder.close()


# --- 3. files of other writers are read, or refused by name ------------------------------------


def duckdb_partitioned(root: Path, frame: pd.DataFrame) -> None:
    """What DuckDB's `COPY ... TO ... (FORMAT parquet, PARTITION_BY (date))` writes."""
    connection = duckdb.connect()
    source = plain(frame).assign(date=frame["received_at"].dt.date)
    connection.register("source", source)
    connection.execute(f"COPY source TO '{root}' (FORMAT parquet, PARTITION_BY (date))")
    connection.close()


def test_a_dataset_partitioned_by_duckdb_is_read(tmp_path: Path) -> None:
    root = tmp_path / "exported"
    # 23:59:58 plus 1 ms a row: two days, two date= folders.
    frame = make_frame(3_000, devices=3)
    duckdb_partitioned(root, frame)
    assert sorted(p.parent.name for p in root.rglob("data_*.parquet")) == [
        "date=2025-12-09",
        "date=2025-12-10",
    ]
    # DuckDB's threads may write a partition's rows in another order: compare in time order.
    loaded, selected_rows = (
        reader(root).sort_values("received_at", ignore_index=True)
        for reader in (load_recording, selected)
    )
    # DuckDB keeps microseconds.
    expected = frame.assign(**{c: frame[c].dt.floor("us") for c in ("timestamp", "received_at")})
    assert_same_rows(loaded, expected)
    assert_same_rows(selected_rows, expected)
    meta = read_metadata(root)
    assert meta["rows"] == str(len(frame))
    assert (meta["start"], meta["end"]) == (
        frame["received_at"].min().isoformat(timespec="microseconds"),
        frame["received_at"].max().isoformat(timespec="microseconds"),
    )


def test_a_backfill_copied_into_a_date_folder_is_counted(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    writer = DatasetWriter(root, flush_every=0)
    live = frame_at(40)
    writer.add(live)
    writer.close()
    backfill = frame_at(25, minutes=-60, prefix="old", seed=2)
    foreign(backfill, root / DAY / "backfill-2025-12-09.parquet")

    expected = pd.concat([backfill, live], ignore_index=True)  # name order: b < p
    assert_readers_agree(root, expected)


def test_spark_style_names_are_read_and_its_bookkeeping_passed_over(tmp_path: Path) -> None:
    root = tmp_path / "spark"
    frame = frame_at(30)
    write_frame(frame, root / DAY / "part-00000-1c2d3e4f-c000.snappy.parquet")
    (root / "_SUCCESS").write_bytes(b"")
    (root / DAY / ".part-00000-1c2d3e4f-c000.snappy.parquet.crc").write_bytes(b"crc")
    (root / "_temporary").mkdir()
    write_frame(frame_at(7, prefix="half"), root / "_temporary" / "part-0.parquet")
    assert_readers_agree(root, frame)


def other_columns(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"city": ["Bangkok"], "population": [10_000_000]}).to_parquet(path)
    return path


def text_in_value(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    plain(frame_at(3)).assign(value=["a", "b", "c"]).to_parquet(path)
    return path


@pytest.mark.parametrize("make", [other_columns, text_in_value])
def test_a_parquet_file_that_is_not_telemetry_is_refused_by_name(
    tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    root = tmp_path / "ds"
    write_frame(frame_at(10), root / DAY / "part-1.parquet")
    stray = make(root / DAY / "data_0.parquet")
    readers: list[Callable[[Path], object]] = [load_recording, read_metadata, selected]
    for reader in readers:
        with pytest.raises(NotARecordingError) as refused:
            reader(root)
        assert str(stray) in str(refused.value)


def test_files_left_out_of_a_dataset_are_named_in_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "ds"
    writer = DatasetWriter(root, flush_every=0)
    frame = frame_at(20)
    writer.add(frame)
    writer.close()
    write_frame(frame, root / "snapshot-20251209T100000.parquet")  # Collector.snapshot()
    (root / DAY / "notes.csv").write_text("a,b\n")

    with caplog.at_level(logging.WARNING, logger="tesaiot_data.files.layout"):
        assert_readers_agree(root, frame)  # the snapshot's rows are not counted twice
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("snapshot-20251209T100000.parquet" in w for w in warnings) == 1
    assert sum("notes.csv" in w and "not Parquet" in w for w in warnings) == 1
    assert "date=YYYY-MM-DD partitions" in caplog.text


# --- 4. a folder of recordings is one frame -----------------------------------------------------


def test_a_folder_of_finished_recordings_is_one_frame(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    first, second = frame_at(30), frame_at(20, minutes=30, prefix="b", seed=1)
    record(folder / "demo-20251209T100000.parquet", first)
    record(folder / "demo-20251209T103000.parquet", second)
    assert sorted(p.name for p in folder.iterdir()) == [
        "demo-20251209T100000.parquet",
        "demo-20251209T100000.rejects.parquet",
        "demo-20251209T103000.parquet",
        "demo-20251209T103000.rejects.parquet",
    ]
    assert_readers_agree(folder, pd.concat([first, second], ignore_index=True))
    assert [p.name for p in recording_files(folder)] == [
        "demo-20251209T100000.parquet",
        "demo-20251209T103000.parquet",
    ]


def test_a_running_recording_in_the_folder_adds_its_flushed_parts(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    first, running = frame_at(30), frame_at(12, minutes=30, prefix="now", seed=1)
    record(folder / "a.parquet", first)
    recorder = record(folder / "b.parquet", running, finish=False)
    try:
        assert (folder / "b.parquet.parts").is_dir()
        expected = pd.concat([first, running], ignore_index=True)
        assert_readers_agree(folder, expected)
        assert len(recording_files(folder)) == 3  # a.parquet and b's two parts
    finally:
        recorder.close()
    assert_readers_agree(folder, expected)  # finished: b.parquet instead of its parts


def test_a_leftover_parts_folder_beside_its_file_is_not_read_twice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "recordings"
    frame = frame_at(16)
    record(folder / "a.parquet", frame)
    # A crash after the merge, before the parts were removed: the parts are in the file.
    record(folder / "copy.parquet", frame, finish=False).close()
    leftover = folder / "a.parquet.parts"
    leftover.mkdir()
    write_frame(frame.iloc[:8], leftover / "part-000001.parquet")

    with caplog.at_level(logging.WARNING, logger="tesaiot_data.files.layout"):
        assert_readers_agree(folder, pd.concat([frame, frame], ignore_index=True))
    assert "a.parquet.parts" in caplog.text


def test_a_folder_of_sidecars_only_has_no_rows(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    record(folder / "a.parquet", frame_at(4)).path.unlink()  # the rejects sidecar stays
    assert [p.name for p in folder.iterdir()] == ["a.rejects.parquet"]
    result = selected(folder)
    assert result.empty
    assert list(result.columns) == list(COLUMNS)
    assert load_recording(folder).empty
    assert read_metadata(folder) == {}
