"""File names that are not UTF-8: skipped with a warning that names them, the rest read.

pyarrow and DuckDB open only UTF-8 paths; Python shows such a name's bytes as surrogates
(b"part-\\xff.parquet" is "part-\\udcff.parquet"), which used to end every reader in a
UnicodeEncodeError and made a whole dataset unreadable.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tesaiot_data import (
    NotARecordingError,
    compact_dataset,
    load_recording,
    load_rejects,
    query,
)
from tesaiot_data.files.parquet import write_frame, write_rejects
from tests.frames import make_frame, reject

DAY = "date=2025-12-09"
T = pd.Timestamp("2025-12-09T10:00", tz="UTC")
ODD = b"part-\xff.parquet"
SHOWN = "part-\\xff.parquet"  # how warnings and errors name it


def plant(folder: Path, name: bytes, content: bytes) -> Path:
    """Create `folder/name` through a bytes path, as a file copied from another system is."""
    try:
        fd = os.open(os.fsencode(folder) + b"/" + name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except OSError as exc:  # a file system that refuses names that are not UTF-8 (macOS)
        pytest.skip(f"this file system refuses names that are not UTF-8: {exc}")
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    return folder / os.fsdecode(name)


def cli(*args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tesaiot_data.cli", *args], capture_output=True, check=False
    )


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A dataset of two readable parts (8 rows) and one part named with a 0xff byte."""
    root = tmp_path / "ds"
    write_frame(make_frame(5, start=T), root / DAY / "part-20251209T1-h-1-a.parquet")
    write_frame(make_frame(3, start=T, prefix="b"), root / DAY / "part-20251209T2-h-1-b.parquet")
    plant(root / DAY, ODD, (root / DAY / "part-20251209T1-h-1-a.parquet").read_bytes())
    return root


@pytest.fixture
def parts(tmp_path: Path) -> Path:
    """An unfinished recording's parts folder: one readable part (5 rows), one not UTF-8."""
    folder = tmp_path / "rec.parquet.parts"
    write_frame(make_frame(5, start=T), folder / "part-000001.parquet")
    plant(folder, b"part-00000\xff.parquet", (folder / "part-000001.parquet").read_bytes())
    write_rejects([reject(1)], folder / "rejects-000001.parquet")
    plant(folder, b"rejects-\xff.parquet", (folder / "rejects-000001.parquet").read_bytes())
    return folder


def test_load_recording_and_query_read_the_rest_of_a_dataset(
    dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert len(load_recording(dataset)) == 8
    assert SHOWN in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert query(dataset, "select count(*) as n from telemetry")["n"].tolist() == [8]
    assert SHOWN in caplog.text


def test_load_recording_and_query_read_the_rest_of_a_parts_folder(
    parts: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert len(load_recording(parts)) == 5
        assert len(load_recording(parts.with_suffix(""))) == 5  # the file the parts are of
        assert query(parts, "select count(*) as n from telemetry")["n"].tolist() == [5]
        assert len(load_rejects(parts)) == 1
    assert "part-00000\\xff.parquet" in caplog.text
    assert "rejects-\\xff.parquet" in caplog.text


def test_compact_merges_the_rest_and_leaves_the_odd_file(
    dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    odd = dataset / DAY / os.fsdecode(ODD)
    before = hashlib.sha256(odd.read_bytes()).hexdigest()
    with caplog.at_level(logging.WARNING):
        result = compact_dataset(dataset)
    assert (result.partitions, result.parts, result.rows) == (1, 2, 8)
    assert hashlib.sha256(odd.read_bytes()).hexdigest() == before
    assert SHOWN in caplog.text
    assert len(load_recording(dataset)) == 8


def test_a_path_that_is_not_utf8_is_a_one_line_error(tmp_path: Path) -> None:
    good = write_frame(make_frame(5, start=T), tmp_path / "good.parquet")
    odd = plant(tmp_path, b"\xff.parquet", good.read_bytes())
    for read in (load_recording, lambda p: query(p, "select 1"), load_rejects):
        with pytest.raises(NotARecordingError, match="not UTF-8") as error:
            read(odd)
        assert "\\xff.parquet" in str(error.value)
    folder = tmp_path / os.fsdecode(b"data-\xff")
    folder.mkdir()
    with pytest.raises(NotARecordingError, match="not UTF-8"):
        compact_dataset(folder)
    commands: list[list[str | Path]] = [
        ["inspect", odd],
        ["query", odd, "select 1"],
        ["compact", folder],
    ]
    for command in commands:
        result = cli(*(os.fsencode(arg) for arg in command))
        assert result.returncode == 1
        assert result.stderr.startswith(b"error: "), result.stderr
        assert b"not UTF-8" in result.stderr
        assert b"Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_the_cli_reads_the_rest_and_names_the_file(dataset: Path, parts: Path) -> None:
    for command in (
        ["inspect", str(dataset)],
        ["inspect", str(parts)],
        ["query", str(dataset), "select count(*) as n from telemetry"],
        ["query", str(parts), "select count(*) as n from telemetry"],
        ["compact", str(dataset)],
    ):
        result = cli(*command)
        assert result.returncode == 0, result.stderr
        assert b"Traceback" not in result.stderr
        assert b"\\xff.parquet: its name is not UTF-8" in result.stderr, command
    assert cli("query", str(dataset), "select count(*) as n from telemetry").stdout.split() == [
        b"n",
        b"8",
    ]
