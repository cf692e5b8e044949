"""Compaction keeps `received_at` order whatever time unit the parts store.

A part written by pandas holds microseconds, one written by pyarrow or Spark may hold
milliseconds or seconds, DuckDB writes microseconds; the package's own parts hold
nanoseconds. The merged file interleaves them by their times, not by their raw integers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tesaiot_data import compact_dataset, load_recording, read_metadata
from tesaiot_data.files.metadata import iso_ns
from tesaiot_data.schema import epoch_ns
from tesaiot_data.sinks.dataset import DatasetWriter
from tests.frames import assert_same_rows, make_frame, plain, raw_metadata
from tests.helpers import local

DAY = "date=2025-12-09"
START = pd.Timestamp("2025-12-09T10:00", tz="UTC")
ROWS = 600


def floored(frame: pd.DataFrame, unit: str) -> pd.DataFrame:
    return frame.assign(**{c: frame[c].dt.floor(unit) for c in ("timestamp", "received_at")})


def by_pandas(frame: pd.DataFrame, path: Path, unit: str) -> None:
    times = {c: f"datetime64[{unit}, UTC]" for c in ("timestamp", "received_at")}
    plain(frame).astype(times).to_parquet(path)


def by_pyarrow(frame: pd.DataFrame, path: Path, unit: str) -> None:
    table = pa.Table.from_pandas(plain(frame), preserve_index=False)
    kind = pa.timestamp(unit, tz="UTC")
    for name in ("timestamp", "received_at"):
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, table.column(name).cast(kind))
    pq.write_table(table, path)


def by_duckdb(frame: pd.DataFrame, path: Path, unit: str) -> None:
    assert unit == "us"  # DuckDB's TIMESTAMPTZ
    connection = duckdb.connect()
    connection.register("source", plain(frame))
    connection.execute(f"COPY source TO '{path}' (FORMAT parquet)")
    connection.close()


WRITERS = [
    pytest.param(by_pandas, "us", id="pandas-us"),
    pytest.param(by_pandas, "ms", id="pandas-ms"),
    pytest.param(by_pandas, "s", id="pandas-s"),
    pytest.param(by_pyarrow, "ms", id="pyarrow-ms"),
    pytest.param(by_pyarrow, "ns", id="pyarrow-ns"),
    pytest.param(by_duckdb, "us", id="duckdb-us"),
]


def interleaved(
    root: Path, write: Callable[[pd.DataFrame, Path, str], None], unit: str
) -> pd.DataFrame:
    """A closed day: the package's parts hold the even seconds, another writer's the odd."""
    frame = floored(make_frame(ROWS, start=START, step_ns=10**9), unit)
    writer = DatasetWriter(root, flush_every=0)
    for rows in np.array_split(np.arange(0, ROWS, 2), 3):
        writer.add(frame.iloc[rows])
        writer.flush()
    writer.close()
    # Named as a part: the time unit is all that differs from the package's own parts.
    write(
        frame.iloc[1::2], root / DAY / "part-20251209T100000000000-pandas-1-0000beef.parquet", unit
    )
    return frame


@pytest.mark.parametrize(("write", "unit"), WRITERS)
def test_compaction_interleaves_parts_of_any_time_unit_in_received_at_order(
    tmp_path: Path, write: Callable[[pd.DataFrame, Path, str], None], unit: str
) -> None:
    root = tmp_path / "ds"
    frame = interleaved(root, write, unit)

    result = compact_dataset(root, before="2025-12-10")

    assert (result.partitions, result.parts, result.rows) == (1, 4, ROWS)
    (merged,) = map(local, result.files)
    received = epoch_ns(pq.read_table(merged, columns=["received_at"]).column(0))
    assert bool(np.all(np.diff(received) >= 0))
    assert sorted(p.name for p in (root / DAY).iterdir()) == [merged.name]
    assert_same_rows(load_recording(root), frame)
    meta = raw_metadata(merged)
    first, last = frame["received_at"].iloc[0].value, frame["received_at"].iloc[-1].value
    assert meta[b"tesaiot.start"].decode() == iso_ns(first)
    assert meta[b"tesaiot.end"].decode() == iso_ns(last)


@pytest.mark.parametrize(("write", "unit"), WRITERS[:4])
def test_read_metadata_spans_the_times_of_every_unit(
    tmp_path: Path, write: Callable[[pd.DataFrame, Path, str], None], unit: str
) -> None:
    root = tmp_path / "ds"
    frame = interleaved(root, write, unit)
    # The other writer's rows come first and last: its files set both ends.
    early = floored(make_frame(2, start=START - pd.Timedelta("1h")), unit)
    late = floored(make_frame(2, start=START + pd.Timedelta("2h")), unit)
    write(early, root / DAY / "a.parquet", unit)
    write(late, root / DAY / "z.parquet", unit)

    meta = read_metadata(root)

    assert meta["rows"] == str(ROWS + 4)
    assert meta["start"] == iso_ns(early["received_at"].iloc[0].value)
    assert meta["end"] == iso_ns(late["received_at"].iloc[-1].value)
    assert meta["start"] < iso_ns(frame["received_at"].iloc[0].value)


def test_compaction_merges_other_writers_files_the_readers_read(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    frame = interleaved(root, by_pandas, "us")
    (root / DAY / "part-20251209T100000000000-pandas-1-0000beef.parquet").rename(
        root / DAY / "data_0.parquet"  # as DuckDB's COPY ... PARTITION_BY names it
    )
    assert len(load_recording(root)) == ROWS

    result = compact_dataset(root, before="2025-12-10")

    assert (result.parts, result.rows) == (4, ROWS)
    assert [p.name for p in (root / DAY).iterdir()] == [result.files[0].name]
    assert_same_rows(load_recording(root), frame)
