"""A dataset folder that cannot be written fails when the writer starts, not a flush later."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tesaiot_data import Collector, RecordingError, Settings
from tesaiot_data.sinks.dataset import DatasetWriter
from tests.small_disk import small_disk

TOKEN = "tesa_mqtt_demo_" + "D" * 32
CLI = [sys.executable, "-m", "tesaiot_data.cli"]


@pytest.fixture(params=["read-only mount", "path through a file"])
def unwritable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A dataset path in which no file can be made, root or not."""
    if request.param == "read-only mount":
        with small_disk(tmp_path / "ro", read_only=True) as disk:
            yield disk / "data"
    else:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder\n")
        yield blocker / "data"


def test_a_dataset_writer_refuses_a_folder_it_cannot_write(unwritable: Path) -> None:
    with pytest.raises(RecordingError, match="cannot write to the dataset folder") as caught:
        DatasetWriter(unwritable)
    assert str(unwritable) in str(caught.value)
    assert caught.value.hint is not None


def test_a_collector_with_such_a_dataset_fails_at_start_before_connecting(
    unwritable: Path,
) -> None:
    # Nothing listens on port 9: had it tried to connect first, this would be a ConnectError.
    settings = Settings(token=TOKEN, broker_url="mqtt://127.0.0.1:9", connect_timeout=2)
    collector = Collector(settings, dataset=unwritable)
    with pytest.raises(RecordingError, match="cannot write to the dataset folder"):
        collector.start()
    assert not collector.running


def test_record_dataset_into_such_a_folder_is_one_error_line_at_once(
    unwritable: Path, tmp_path: Path
) -> None:
    env = {"MQTT_API_TOKEN": TOKEN, "MQTT_BROKER_URL": "mqtt://127.0.0.1:9", "PATH": "/usr/bin"}
    result = subprocess.run(
        [*CLI, "record", "--dataset", str(unwritable), "--env-file", str(tmp_path / "no.env")],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    # Refused before connecting: nothing listens on port 9, so a later refusal would be a
    # connection error instead.
    assert lines[0].startswith(f"error: cannot write to the dataset folder {unwritable}")
    assert "Traceback" not in result.stderr
