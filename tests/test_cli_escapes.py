"""`inspect` and `query` print control characters from a recording escaped, never raw."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tesaiot_data.cli.files import printable
from tesaiot_data.files.parquet import write_frame
from tests.frames import make_frame

RED = "\x1b[31m"
EVIL_DEVICE = f"dev{RED}red\nforged line"
EVIL_METRIC = "temp\x1b]0;pwned\x07\r\u202eerutarepmet"


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    frame = make_frame(6, devices=2, metrics=2)
    frame["device_id"] = pd.Categorical([EVIL_DEVICE, "plain"] * 3)
    frame["metric"] = pd.Categorical([EVIL_METRIC, "humidity"] * 3)
    frame["unit"] = pd.Categorical(["\x1b[2J", "C"] * 3)
    frame["value_text"] = pd.Categorical(["on\x9b31m", None] * 3)
    return write_frame(frame, tmp_path / "evil.parquet", metadata={"topic": f"device/{RED}/#"})


def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tesaiot_data.cli", *args], capture_output=True, check=False
    )


def assert_no_controls(output: bytes) -> None:
    text = output.decode()
    for line in text.splitlines():
        assert not line.startswith("forged"), text
    assert "\x1b" not in text
    assert "\r" not in text
    assert "\x07" not in text
    assert "\x9b" not in text
    assert "\u202e" not in text


def test_inspect_escapes_device_ids_metrics_and_metadata(recording: Path) -> None:
    result = cli("inspect", str(recording))
    assert result.returncode == 0, result.stderr
    assert_no_controls(result.stdout)
    text = result.stdout.decode()
    assert "temp\\x1b]0;pwned\\x07\\r\\u202eerutarepmet" in text  # the metrics line and table
    assert "topic:     device/\\x1b[31m/#" in text


def test_query_escapes_values_and_column_names(recording: Path) -> None:
    sql = (
        'select device_id, metric, unit, value_text, device_id as "a\nb\x1b[0m" '
        "from telemetry order by device_id"
    )
    result = cli("query", str(recording), sql)
    assert result.returncode == 0, result.stderr
    assert_no_controls(result.stdout)
    text = result.stdout.decode()
    assert "dev\\x1b[31mred\\nforged line" in text
    assert "\\x1b[2J" in text
    assert "on\\x9b31m" in text
    assert "a\\nb\\x1b[0m" in text.splitlines()[0]
    # A result with no rows names its columns escaped too.
    empty = cli("query", str(recording), 'select 1 as "x\x1b[5m" from telemetry where false')
    assert empty.returncode == 0, empty.stderr
    assert_no_controls(empty.stdout)
    assert "x\\x1b[5m" in empty.stdout.decode()


def test_printable_keeps_other_text_as_it_is() -> None:
    assert printable("température 温度 🌡") == "température 温度 🌡"
    assert printable("a\tb\x00c\x7f") == "a\\tb\\x00c\\x7f"
    assert printable("\u2028\udcff") == "\\u2028\\udcff"
