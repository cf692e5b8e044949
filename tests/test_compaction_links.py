"""Compaction never follows a symbolic link out of the dataset to delete or write there."""

from __future__ import annotations

import hashlib
import io
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tesaiot_data import NotARecordingError, compact_dataset, load_recording
from tesaiot_data.cli import main
from tesaiot_data.files.parquet import write_frame
from tests.frames import make_frame

DAY = "date=2025-12-09"
T = pd.Timestamp("2025-12-09T10:00", tz="UTC")


def digest(root: Path) -> dict[str, str]:
    """Every file under `root` by its bytes (links not followed)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def outside_parts(folder: Path, parts: int = 3) -> Path:
    for number in range(parts):
        frame = make_frame(10, start=T + pd.Timedelta(minutes=number), prefix=f"out{number}")
        write_frame(frame, folder / f"part-2025120{number}T0-h-1-0000000{number}.parquet")
    return folder


def test_a_partition_folder_that_is_a_link_outside_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = outside_parts(tmp_path / "elsewhere")
    before = digest(outside)
    root = tmp_path / "ds"
    root.mkdir()
    (root / DAY).symlink_to(outside, target_is_directory=True)
    # A real partition beside it is still compacted.
    for number in range(2):
        frame = make_frame(5, start=pd.Timestamp("2025-12-08T10:00", tz="UTC"), seed=number)
        write_frame(frame, root / "date=2025-12-08" / f"part-2025120{number}-h-1-a{number}.parquet")

    with caplog.at_level(logging.WARNING, logger="tesaiot_data.files.compaction"):
        result = compact_dataset(root)

    assert result.partitions == 1
    assert [p.parent.name for p in result.files] == ["date=2025-12-08"]
    assert digest(outside) == before  # nothing deleted, nothing written there
    assert sorted(p.name for p in outside.iterdir()) == sorted(before)
    assert f"{root / DAY} is a symbolic link" in caplog.text


def test_a_part_that_is_a_link_outside_is_neither_merged_nor_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = outside_parts(tmp_path / "elsewhere", parts=1)
    target = next(outside.iterdir())
    before = digest(outside)
    folder = tmp_path / "ds" / DAY
    for number in range(2):
        frame = make_frame(5, start=T + pd.Timedelta(hours=1), seed=number, prefix=f"in{number}")
        write_frame(frame, folder / f"part-2025120{number}T1-h-1-b{number}.parquet")
    link = folder / "part-20251209T2-h-1-link.parquet"
    link.symlink_to(target)
    rows = len(load_recording(tmp_path / "ds"))

    with caplog.at_level(logging.WARNING, logger="tesaiot_data.files.compaction"):
        result = compact_dataset(tmp_path / "ds")

    assert result.parts == 2  # the two real parts only
    assert link.is_symlink()
    assert digest(outside) == before
    assert f"{link.name} is a symbolic link" in caplog.text
    # The linked part is read beside the merged file: every row once.
    assert len(load_recording(tmp_path / "ds")) == rows
    assert compact_dataset(tmp_path / "ds").partitions == 0  # and again changes nothing
    assert digest(outside) == before


def test_a_planted_lock_link_is_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_frame(make_frame(5, start=T), root / DAY / "part-1-h-1-a.parquet")
    victim = tmp_path / "victim.txt"
    (root / ".compact.lock").symlink_to(victim)
    with pytest.raises(NotARecordingError, match="symbolic link"):
        compact_dataset(root)
    assert not victim.exists()
    # The command line says it in one line.
    assert main(["compact", str(root)], out=io.StringIO()) == 1
    assert not victim.exists()


def test_the_cli_warns_and_leaves_the_linked_folder(tmp_path: Path) -> None:
    outside = outside_parts(tmp_path / "elsewhere")
    before = digest(outside)
    root = tmp_path / "ds"
    root.mkdir()
    (root / DAY).symlink_to(outside, target_is_directory=True)
    result = subprocess.run(
        [sys.executable, "-m", "tesaiot_data.cli", "compact", str(root)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "is a symbolic link" in result.stderr
    assert "Traceback" not in result.stderr
    assert digest(outside) == before
