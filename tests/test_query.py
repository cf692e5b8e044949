"""SQL over recordings with DuckDB: files written by the package's own writers, read back."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tesaiot_data import (
    ConfigError,
    MissingExtraError,
    NotARecordingError,
    QueryError,
    load_recording,
    query,
)
from tesaiot_data.cli import main
from tesaiot_data.files.compaction import STEP_WRITTEN, compact_dataset
from tesaiot_data.files.parquet import write_frame, write_rejects
from tesaiot_data.files.store import Location
from tesaiot_data.schema import CATEGORY_COLUMNS, COLUMNS
from tesaiot_data.sinks.dataset import DatasetWriter
from tesaiot_data.sinks.recorder import Recorder
from tests.frames import UTC_NS, assert_same_rows, make_frame, reject
from tests.helpers import local

pytest.importorskip("duckdb", reason="DuckDB, the sql extra, is not installed")

HOURLY = """
    select device_id, metric, date_trunc('hour', timestamp) as hour,
           avg(value) as mean, min(value) as low, max(value) as high, count(*) as rows
    from telemetry
    group by all
    order by device_id, metric, hour
"""


def hourly_in_pandas(frame: pd.DataFrame) -> pd.DataFrame:
    """The HOURLY query done by pandas on a loaded frame."""
    frame = frame.assign(hour=frame["timestamp"].dt.floor("h"))
    out = (
        frame.groupby(["device_id", "metric", "hour"], observed=True)
        .agg(
            mean=("value", "mean"),
            low=("value", "min"),
            high=("value", "max"),
            rows=("value", "size"),
        )
        .reset_index()
        .sort_values(["device_id", "metric", "hour"], ignore_index=True)
    )
    out["rows"] = out["rows"].astype("int64")
    return out


def loaded(source: Location) -> pd.DataFrame:
    """`load_recording(source)` at the precision DuckDB reads the times with.

    DuckDB 2 reads Parquet's UTC nanosecond times as TIMESTAMPTZ_NS; 1.x truncates them to
    the microseconds of its TIMESTAMPTZ.
    """
    frame = load_recording(source)
    kind = query(source, "select typeof(timestamp) as kind from telemetry limit 1")["kind"]
    if len(kind) and kind[0] != "TIMESTAMPTZ_NS":
        for name in ("timestamp", "received_at"):
            frame[name] = frame[name].dt.floor("us")
    return frame


def assert_same_aggregate(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(actual.columns) == list(expected.columns)
    for name in ("device_id", "metric"):
        assert isinstance(actual[name].dtype, pd.CategoricalDtype)
        actual[name] = actual[name].astype(str)
        expected[name] = expected[name].astype(str)
    pd.testing.assert_frame_equal(actual, expected, check_exact=False, rtol=1e-12)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A hive dataset over two UTC dates, written in two flushes by the DatasetWriter."""
    writer = DatasetWriter(tmp_path / "ds", flush_every=0)
    # 23:59:58 plus 1 ms a row: 2,000 rows on 2025-12-09, the rest on 2025-12-10.
    writer.add(make_frame(3_000, devices=7, metrics=3))
    writer.flush()
    writer.add(make_frame(1_000, start=pd.Timestamp("2025-12-10T01:30", tz="UTC"), seed=1))
    writer.close()
    return local(writer.root)


def test_select_star_over_a_file_is_load_recording(tmp_path: Path) -> None:
    path = write_frame(make_frame(500), tmp_path / "session.parquet")
    result = query(path, "select * from telemetry")
    assert_same_rows(result, loaded(path))


def test_the_view_has_load_recordings_columns_and_types(tmp_path: Path) -> None:
    path = write_frame(make_frame(20), tmp_path / "session.parquet")
    described = query(path, "describe telemetry")
    assert list(described["column_name"]) == list(COLUMNS)
    types = dict(zip(described["column_name"], described["column_type"], strict=True))
    assert types["timestamp"].startswith("TIMESTAMP WITH TIME ZONE") or types[
        "timestamp"
    ].startswith("TIMESTAMPTZ")
    assert types["value"] == "DOUBLE"
    assert {types[name] for name in CATEGORY_COLUMNS} == {"VARCHAR"}

    result = query(path, "select * from telemetry limit 0")
    assert list(result.columns) == list(COLUMNS)
    assert result["timestamp"].dtype == UTC_NS
    assert result["received_at"].dtype == UTC_NS
    assert result["value"].dtype == "float64"
    for name in CATEGORY_COLUMNS:
        assert isinstance(result[name].dtype, pd.CategoricalDtype), name


def test_an_unfinished_recordings_parts_folder(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "crashed.parquet", flush_every=0)
    recorder.add(make_frame(300))
    recorder.flush()
    recorder.add(make_frame(200, start=pd.Timestamp("2025-12-10T05:00", tz="UTC"), seed=2))
    recorder.flush()  # and then the process died: two parts and no file
    assert len(list(recorder.parts_dir.glob("part-*.parquet"))) == 2

    for source in (recorder.parts_dir, recorder.path):
        counted = query(source, "select count(*) as rows, max(timestamp) as last from telemetry")
        assert counted["rows"].tolist() == [500]
        assert counted["last"].dtype == UTC_NS
        assert counted["last"][0] == loaded(source)["timestamp"].max()
    assert_same_rows(
        query(recorder.parts_dir, "select * from telemetry"), loaded(recorder.parts_dir)
    )


def test_a_dataset_with_two_partitions(dataset: Path) -> None:
    assert sorted(p.name for p in dataset.iterdir()) == ["date=2025-12-09", "date=2025-12-10"]
    by_date = query(
        dataset,
        "select cast(received_at as date) as day, count(*) as rows "
        "from telemetry group by 1 order by 1",
    )
    assert by_date["rows"].tolist() == [2_000, 2_000]
    # The hive partition column is not one of the view's columns, as in load_recording.
    columns = query(dataset, "select * from telemetry limit 1").columns
    assert list(columns) == list(COLUMNS)


def test_an_hourly_per_device_aggregate_equals_pandas(dataset: Path) -> None:
    expected = hourly_in_pandas(load_recording(dataset))
    actual = query(dataset, HOURLY, memory_limit="256MB", threads=1)
    assert actual["hour"].dtype == UTC_NS
    assert len(actual) == len(expected) > 7 * 3  # two hours or more per device and metric
    assert_same_aggregate(actual, expected)


def test_a_dataset_being_compacted_counts_every_row_once(dataset: Path) -> None:
    expected = hourly_in_pandas(load_recording(dataset))
    during: list[pd.DataFrame] = []

    def on_step(step: str, merged: Path) -> None:
        if step == STEP_WRITTEN:  # the compacted file is in place, the parts it replaces too
            assert len(list(merged.parent.glob("part-*.parquet"))) == 2
            during.append(query(dataset, HOURLY))

    assert compact_dataset(dataset, on_step=on_step).partitions == 1
    assert len(during) == 1
    assert_same_aggregate(during[0], expected.copy())
    assert_same_aggregate(query(dataset, HOURLY), expected.copy())


def test_a_folder_of_files_with_and_without_the_optional_columns(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_frame(make_frame(50), folder / "date=2025-12-09" / "part-1.parquet")
    # Another tool's file: only the required columns and value, no unit or value_text.
    frame = make_frame(30, start=pd.Timestamp("2025-12-09T12:00", tz="UTC"))
    table = pa.Table.from_pandas(
        frame[["timestamp", "received_at", "device_id", "sensor_type", "metric", "value"]],
        preserve_index=False,
    )
    pq.write_table(table, folder / "date=2025-12-09" / "part-2.parquet")
    result = query(folder, "select * from telemetry")
    assert_same_rows(result, loaded(folder))
    assert result["unit"].iloc[50:].isna().all()


def test_an_empty_dataset_gives_an_empty_frame_with_the_columns(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = query(tmp_path / "empty", "select * from telemetry")
    assert result.empty
    assert list(result.columns) == list(COLUMNS)
    assert query(tmp_path / "empty", "select count(*) as n from telemetry")["n"].tolist() == [0]


def test_a_sql_error_is_a_query_error_with_duckdbs_message(tmp_path: Path) -> None:
    path = write_frame(make_frame(10), tmp_path / "s.parquet")
    with pytest.raises(QueryError, match="syntax error") as syntax:
        query(path, "selec * from telemetry")
    assert syntax.value.kind == "ParserException"
    with pytest.raises(QueryError, match="nope") as column:
        query(path, "select nope from telemetry")
    assert column.value.kind == "BinderException"
    assert "telemetry" in str(column.value.hint)


def test_a_query_beyond_the_memory_limit_is_a_query_error(tmp_path: Path) -> None:
    path = write_frame(make_frame(10), tmp_path / "s.parquet")
    # An exact count of distinct values holds them all (80 MB here) under a 4 MB limit.
    sql = "select count(distinct v) from (select random() as v from range(10000000))"
    with pytest.raises(QueryError, match="Out of Memory") as error:
        query(path, sql, memory_limit="4MB", threads=1)
    assert error.value.kind == "OutOfMemoryException"
    assert "memory_limit" in str(error.value.hint)


def test_paths_that_are_not_recordings(tmp_path: Path) -> None:
    csv = tmp_path / "data.parquet"
    csv.write_text("timestamp,value\n2025-12-09,1\n")
    with pytest.raises(NotARecordingError, match="not a Parquet file"):
        query(csv, "select * from telemetry")
    sidecar = write_rejects([reject(1)], tmp_path / "s.rejects.parquet")
    with pytest.raises(NotARecordingError, match="rejected messages"):
        query(sidecar, "select * from telemetry")
    text_values = tmp_path / "text.parquet"
    frame = make_frame(5).assign(value=["a", "b", "c", "d", "e"])
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), text_values)
    with pytest.raises(NotARecordingError, match="'value'"):
        query(text_values, "select * from telemetry")
    with pytest.raises(FileNotFoundError):
        query(tmp_path / "nothing.parquet", "select 1")


def test_bad_memory_limit_or_threads_are_config_errors(tmp_path: Path) -> None:
    path = write_frame(make_frame(10), tmp_path / "s.parquet")
    for limit in ("lots", "2", "-1GB", 0):
        with pytest.raises(ConfigError, match="memory_limit"):
            query(path, "select 1", memory_limit=limit)
    with pytest.raises(ConfigError, match="threads"):
        query(path, "select 1", threads=0)
    assert query(path, "select count(*) as n from telemetry", memory_limit=64 * 2**20)[
        "n"
    ].tolist() == [10]


def test_a_missing_duckdb_is_a_missing_extra_error_with_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_frame(make_frame(10), tmp_path / "s.parquet")
    monkeypatch.setitem(sys.modules, "duckdb", None)  # as if not installed: import fails
    with pytest.raises(MissingExtraError, match=r"tesaiot-data\[sql\]") as missing:
        query(path, "select 1")
    assert isinstance(missing.value, ImportError)
    assert missing.value.extra == "sql"


def test_importing_the_package_does_not_import_duckdb() -> None:
    code = (
        "import sys, tesaiot_data.readers.sql; import tesaiot_data as t; "
        "assert callable(t.query), t.query; "
        "assert 'duckdb' not in sys.modules; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cli_prints_the_result_as_a_table(tmp_path: Path) -> None:
    path = write_frame(make_frame(1_000, devices=4, metrics=2), tmp_path / "s.parquet")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tesaiot_data.cli",
            "query",
            str(path),
            "select device_id, count(*) as rows from telemetry group by 1 order by 1",
            "--memory-limit",
            "256MB",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["device_id", "rows"]
    assert [line.split() for line in lines[1:]] == [[f"dev-{i:03d}", "250"] for i in range(4)]


def test_cli_bounds_the_rows_it_prints(tmp_path: Path) -> None:
    path = write_frame(make_frame(100), tmp_path / "s.parquet")
    buffer = io.StringIO()
    sql = "select value from telemetry where value is not null"
    assert main(["query", str(path), sql, "--max-rows", "5"], out=buffer) == 0
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1 + 5 + 1
    expected = int(np.count_nonzero(load_recording(path)["value"].notna()))
    assert (
        lines[-1] == f"... {expected - 5:,} more rows ({expected:,} in all; --max-rows shows more)"
    )


def test_cli_errors_print_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_frame(make_frame(10), tmp_path / "s.parquet")
    assert main(["query", str(path), "selec 1"], out=io.StringIO()) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: the query over")
    assert "syntax error" in error
    assert len(error.strip().splitlines()) == 1
    assert main(["query", str(tmp_path / "nope.parquet"), "select 1"], out=io.StringIO()) == 1
    assert capsys.readouterr().err.startswith("error: no recording at")
