"""Compaction of a dataset's closed days, with readers running at the same time."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tesaiot_data import compact_dataset, load_recording, read_metadata
from tesaiot_data.cli import main
from tesaiot_data.files.compaction import STEP_DELETED, STEP_WRITTEN
from tesaiot_data.files.layout import read_consistent
from tesaiot_data.schema import ARROW_SCHEMA
from tesaiot_data.sinks.dataset import DatasetWriter
from tests.frames import assert_same_rows, leftovers, make_frame, raw_metadata
from tests.helpers import local, wait_for

TOPIC = {"topic": "device/+/telemetry/#"}
# T0 (2025-12-09T23:59:58) plus 4,000 rows 1 ms apart: two closed days, split at midnight.
ROWS = 4_000


def write_parts(root: Path, frame: pd.DataFrame, parts: int) -> int:
    """Write `frame` as a DatasetWriter does, in `parts` flushes; return the files written."""
    writer = DatasetWriter(root, flush_every=0, metadata=TOPIC)
    written = 0
    for rows in np.array_split(np.arange(len(frame)), parts):
        writer.add(frame.iloc[rows])
        written += len(writer.flush())
    return written


def files_of(root: Path) -> dict[str, int]:
    """Every Parquet file under `root` (relative name) and its modification time in ns."""
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*.parquet")}


def today_frame(rows: int = 50) -> pd.DataFrame:
    return make_frame(rows, start=pd.Timestamp.now(tz="UTC").floor("D"), prefix="today")


def test_each_closed_day_becomes_one_file_with_the_same_rows_in_time_order(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ds"
    frame = make_frame(ROWS)
    written = write_parts(root, frame, 30)
    before_bytes = sum(p.stat().st_size for p in root.rglob("*.parquet"))

    result = compact_dataset(root)

    assert result.partitions == 2
    assert result.parts == written == 31  # one flush spans midnight: two files
    assert result.rows == ROWS
    assert result.bytes_before == before_bytes
    assert 0 < result.bytes_after < result.bytes_before
    assert [p.parent.name for p in result.files] == ["date=2025-12-09", "date=2025-12-10"]
    assert sorted(files_of(root)) == sorted(
        local(p).relative_to(root).as_posix() for p in result.files
    )
    assert all(p.name.startswith("compacted-") for p in result.files)
    assert leftovers(root) == []
    back = load_recording(root)
    assert_same_rows(back, frame)
    assert back["received_at"].is_monotonic_increasing
    for file in map(local, result.files):
        assert pq.read_schema(file).remove_metadata().equals(ARROW_SCHEMA)
        meta = read_metadata(file)
        assert meta["topic"] == TOPIC["topic"]
        assert int(meta["rows"]) == pq.read_metadata(file).num_rows
        assert meta["version"]
        assert len(json.loads(raw_metadata(file)[b"tesaiot.replaces"])) > 1
        received = pq.read_metadata(file).row_group(0).column(1)
        assert received.path_in_schema == "received_at"
        assert "DELTA_BINARY_PACKED" in received.encodings
    meta = read_metadata(root)
    assert meta["rows"] == str(ROWS)
    assert meta["start"] == "2025-12-09T23:59:58.000000+00:00"
    assert "replaces" not in meta
    # Tools that do not know the replaces list see the same rows once it is done.
    assert ds.dataset(root, format="parquet", partitioning="hive").count_rows() == ROWS


def test_today_and_days_after_before_stay_open_and_untouched(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_parts(root, make_frame(ROWS), 10)
    write_parts(root, today_frame(), 3)
    today = pd.Timestamp.now(tz="UTC").strftime("date=%Y-%m-%d")
    open_files = {k: v for k, v in files_of(root).items() if k.startswith(today)}
    assert len(open_files) == 3

    first = compact_dataset(root, before="2025-12-10")  # only 2025-12-09 has ended
    assert [p.parent.name for p in first.files] == ["date=2025-12-09"]
    assert len([k for k in files_of(root) if k.startswith("date=2025-12-10")]) == 5

    second = compact_dataset(root)  # default: every day before today
    assert [p.parent.name for p in second.files] == ["date=2025-12-10"]
    assert {k: v for k, v in files_of(root).items() if k.startswith(today)} == open_files
    assert len(load_recording(root)) == ROWS + 50


def test_compacting_again_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_parts(root, make_frame(ROWS), 8)
    compact_dataset(root)
    files = files_of(root)

    again = compact_dataset(root)

    assert again.partitions == again.parts == again.rows == 0
    assert again.files == ()
    assert files_of(root) == files


def test_late_parts_are_read_beside_the_compacted_file_and_merged_in_time_order(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ds"
    frame = make_frame(ROWS)
    early, late = frame.iloc[::2], frame.iloc[1::2]  # the late rows fall between the others
    write_parts(root, early, 6)
    (merged,) = [p for p in compact_dataset(root).files if "2025-12-09" in str(p)]

    write_parts(root, late, 4)  # a late writer, after the day was compacted
    assert len(load_recording(root)) == ROWS  # parts beside a compacted file count
    result = compact_dataset(root)

    assert result.partitions == 2
    assert not merged.exists()
    names = sorted(files_of(root))
    assert len(names) == 2
    assert all("/compacted-" in name for name in names)
    back = load_recording(root)
    assert_same_rows(back, frame)  # time order restored: early and late interleaved again


def test_a_reader_during_compaction_sees_every_row_exactly_once(tmp_path: Path) -> None:
    seen_counts: list[int] = []
    errors: list[BaseException] = []
    iterations = 0
    rounds = 3
    for round_ in range(rounds):
        root = tmp_path / f"ds{round_}"
        frame = make_frame(ROWS, seed=round_)
        write_parts(root, frame, 20)
        stop = threading.Event()

        def read_forever(root: Path = root, stop: threading.Event = stop) -> None:
            nonlocal iterations
            while not stop.is_set():
                try:
                    back = load_recording(root)
                except BaseException as exc:  # the test thread reports it
                    errors.append(exc)
                    return
                seen_counts.append(len(back) if back["received_at"].is_unique else -1)
                iterations += 1

        reader = threading.Thread(target=read_forever, daemon=True)
        reader.start()
        wait_for(lambda: iterations > 0 or errors, message="the reader did not read")
        steps: list[str] = []

        def on_step(step: str, merged: Path, root: Path = root, steps: list[str] = steps) -> None:
            steps.append(step)
            # Deterministic checks at both states, and the reader made to run through them.
            assert len(load_recording(root)) == ROWS
            assert int(read_metadata(root)["rows"]) == ROWS
            target = iterations + 2
            wait_for(lambda: iterations >= target or errors, message="the reader stalled")

        try:
            result = compact_dataset(root, on_step=on_step)
        finally:
            stop.set()
            reader.join(timeout=30)
        assert not errors, errors
        assert result.partitions == 2
        assert steps == [STEP_WRITTEN, STEP_DELETED] * 2
    assert iterations >= rounds * 2 * 2 * 2  # at least 2 reads at each of 2 steps of 2 days
    assert set(seen_counts) == {ROWS}


def test_a_read_whose_parts_vanish_starts_again_and_reads_the_compacted_file(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ds"
    write_parts(root, make_frame(ROWS), 12)
    calls: list[list[Path]] = []

    def read(files: list[Path]) -> int:
        calls.append(files)
        if len(calls) == 1:  # a compaction runs between this reader's listing and its read
            compact_dataset(root)
        return sum(pq.read_metadata(file).num_rows for file in files)

    assert read_consistent(root, read) == ROWS
    assert len(calls) == 2
    assert len(calls[0]) == 13
    assert [file.name.startswith("compacted-") for file in calls[1]] == [True, True]


def test_a_compaction_stopped_before_deleting_leaves_readers_whole_and_is_finished_later(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ds"
    frame = make_frame(ROWS)
    write_parts(root, frame, 9)

    def crash(step: str, merged: Path) -> None:
        if step == STEP_WRITTEN:
            raise KeyboardInterrupt  # as if the process died with both kinds of files there

    with pytest.raises(KeyboardInterrupt):
        compact_dataset(root, on_step=crash)
    names = files_of(root)
    assert any("compacted-" in name for name in names)
    assert sum("/part-" in name for name in names) == 10
    assert_same_rows(load_recording(root), frame)  # the parts the compacted file lists: skipped
    assert read_metadata(root)["rows"] == str(ROWS)

    compact_dataset(root)

    assert sum("/part-" in name for name in files_of(root)) == 0
    assert len(files_of(root)) == 2
    assert_same_rows(load_recording(root), frame)


def test_two_compactions_of_one_dataset_at_once_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_parts(root, make_frame(ROWS), 4)
    refused: list[BaseException] = []

    def second(step: str, merged: Path) -> None:
        if step == STEP_WRITTEN and not refused:
            with pytest.raises(BlockingIOError, match="another compaction") as info:
                compact_dataset(root)
            refused.append(info.value)

    compact_dataset(root, on_step=second)

    assert refused
    assert len(load_recording(root)) == ROWS


def test_cli_compact_prints_one_line_and_exits_0(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_parts(root, make_frame(ROWS), 5)
    out = io.StringIO()

    assert main(["compact", str(root)], out=out) == 0

    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"compacted 2 partitions of {root}: 6 files -> 2, 4,000 rows, ")
    out = io.StringIO()
    assert main(["compact", str(root), "--before", "7 days"], out=out) == 0
    assert out.getvalue().startswith("nothing to compact")


def test_cli_compact_of_a_missing_folder_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compact", str(tmp_path / "nope")], out=io.StringIO()) == 1
    assert capsys.readouterr().err.startswith(f"error: no dataset folder at {tmp_path / 'nope'}")

    assert main(["compact", str(tmp_path), "--before", "someday"], out=io.StringIO()) == 1
    assert "before='someday' is neither a duration nor a time" in capsys.readouterr().err

    file = tmp_path / "file.parquet"
    file.write_bytes(b"x")
    assert main(["compact", str(file)], out=io.StringIO()) == 1
    assert "is not a dataset folder" in capsys.readouterr().err
