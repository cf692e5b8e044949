"""What the user reads: the status line, `print(collector.stats)`, the latest values' units,
the dashboard's file names and the notebooks' messages and temporary folders.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

from tesaiot_data import Collector, Settings
from tesaiot_data.collector.stats import plural, stats_summary, status_line
from tesaiot_data.dashboard.format import (
    RECORDINGS_DIR,
    default_recording_path,
    latest_table_html,
)
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.messages import RawMessage
from tests.helpers import wait_for

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def offline_collector() -> Collector:
    """A collector that is never started: tests feed it through `ingest` as the client would."""
    settings = Settings(token="tesa_mqtt_demo_" + "D" * 32, broker_url="mqtt://127.0.0.1:1")
    return Collector(settings, window="15min")


def raw(topic: str, payload: object, *, seconds_ago: float = 0.0) -> RawMessage:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return RawMessage(topic, body, time.time_ns() - int(seconds_ago * 1e9))


def now_iso(seconds_ago: float = 0.0) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat()


# ------------------------------------------------------------------ status


def test_plural_agrees_with_the_count() -> None:
    assert plural(0, "reject") == "0 rejects"
    assert plural(1, "reject") == "1 reject"
    assert plural(2, "alert") == "2 alerts"
    assert plural(1_000, "row") == "1,000 rows"
    assert plural(1, "entry", "entries") == "1 entry"
    assert plural(3, "entry", "entries") == "3 entries"


def test_status_line_says_one_reject_and_one_reconnect() -> None:
    collector = offline_collector()
    collector.ingest([raw("device/d1/telemetry/temperature", b"not json")])
    stats = dataclasses.replace(collector.stats, rows=1, reconnects=1)
    assert stats.rejected == 1
    assert status_line(stats, running=False) == (
        "stopped | 1 row in window | 1 reject | 1 reconnect"
    )
    more = dataclasses.replace(stats, rows=2_000, rejected=2, reconnects=0)
    assert status_line(more, running=False) == (
        "stopped | 2,000 rows in window | 2 rejects | 0 reconnects"
    )


@pytest.mark.broker
def test_a_stopped_collector_shows_no_rate(
    settings: Settings,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
) -> None:
    collector = collectors(settings, window="1min").start()
    fleet_factory(devices=2, rate=40, seed=5).start()
    wait_for(lambda: collector.stats.rate > 0, message="a measured rate")
    assert " msg/s | " in status_line(collector.stats, running=collector.running)
    assert "msg/s now" in str(collector.stats)

    collector.stop()
    line = status_line(collector.stats, running=collector.running)
    assert line.startswith("stopped | ")
    assert "msg/s" not in line
    summary = str(collector.stats)
    assert "msg/s now" not in summary
    assert "msg/s on average; not connected" in summary


def test_print_stats_gives_a_readable_summary() -> None:
    collector = offline_collector()
    collector.ingest(
        [
            raw("device/d1/telemetry/temperature", {"value": 21.5, "unit": "celsius"}),
            raw("device/d1/telemetry/env", {"humidity": 60, "timestamp": "1970-01-01T00:00:00Z"}),
            raw("device/d1/telemetry/temperature", b"{broken"),
        ]
    )
    text = str(collector.stats)
    assert "CollectorStats(" not in text
    assert text == stats_summary(collector.stats)
    lines = text.splitlines()
    assert lines[0] == (
        "received 0 messages: 2 parsed, 1 rejected (not_json: 1), 0 dropped"
    )  # nothing came from a network: `received` counts the client's messages
    assert lines[1].startswith("rows: 2 in window, 2 since the start; ")
    assert "1 without a readable timestamp" in lines[1]
    assert "1 with a far-off device clock" in lines[1]
    assert "late" not in text  # a zero counter of trouble is not shown
    assert lines[2] == "rate: 0.0 msg/s on average; not connected, 0 reconnects"
    assert repr(collector.stats).startswith("CollectorStats(received=0,")  # every field


# ------------------------------------------------------------ latest values


def test_latest_keeps_the_last_unit_a_reading_had() -> None:
    collector = offline_collector()
    topic = "device/d1/telemetry/temperature"
    collector.ingest(
        [
            raw(topic, {"value": 21.0, "unit": "celsius", "timestamp": now_iso(3)}, seconds_ago=3),
            raw(topic, {"value": 22.0, "unit": "kelvin", "timestamp": now_iso(2)}, seconds_ago=2),
            # The same reading from a flat payload, which carries no unit: it is the newest.
            raw(topic, {"temperature": 23.0, "timestamp": now_iso(1)}, seconds_ago=1),
            raw("device/d1/telemetry/env", {"humidity": 60.0, "timestamp": now_iso(1)}),
            raw("device/d2/telemetry/temperature", {"value": 5.0, "unit": "celsius"}),
        ]
    )
    latest = collector.latest()
    assert list(latest.columns) == [*collector.frame().columns, "age_s"]
    rows = {
        (str(d), str(m)): (value, unit)
        for d, m, value, unit in latest[["device_id", "metric", "value", "unit"]].itertuples(
            index=False
        )
    }
    assert rows[("d1", "temperature")] == (23.0, "kelvin")  # the value is new, the unit kept
    assert rows[("d2", "temperature")] == (5.0, "celsius")
    assert pd.isna(rows[("d1", "humidity")][1])  # never had one
    assert latest["unit"].dtype == "category"
    assert latest["age_s"].dtype == np.float64
    assert "<td>kelvin</td>" in latest_table_html(latest)


# ------------------------------------------------------------ dashboard text


def test_the_table_counts_one_more_row_in_the_singular() -> None:
    latest = pd.DataFrame(
        {
            "device_id": pd.Categorical([f"device-{i:03d}" for i in range(61)]),
            "metric": pd.Categorical(["temperature"] * 61),
            "value": np.arange(61, dtype=float),
            "unit": pd.Categorical(["celsius"] * 61),
            "value_text": pd.Categorical([None] * 61),
            "age_s": np.zeros(61),
        }
    )
    assert "<i>+1 more row</i>" in latest_table_html(latest, max_rows=60)
    assert "<i>+2 more rows</i>" in latest_table_html(latest, max_rows=59)


def test_record_and_snapshot_names_are_stamped_when_clicked_in_one_folder() -> None:
    click = datetime(2025, 12, 9, 10, 30, 45, tzinfo=timezone.utc)
    session = default_recording_path("session", click)
    snapshot = default_recording_path("snapshot", click + timedelta(seconds=75))
    assert session == Path("recordings/session-20251209T103045.parquet")
    assert snapshot == Path("recordings/snapshot-20251209T103200.parquet")
    assert session.parent == snapshot.parent == RECORDINGS_DIR
    assert not session.is_absolute()
    bangkok = timezone(timedelta(hours=7))
    assert default_recording_path("session", click.astimezone(bangkok)) == session
    assert default_recording_path("session", click.replace(tzinfo=None)) == session  # UTC
    assert default_recording_path("snapshot", click, folder="/data/x") == Path(
        "/data/x/snapshot-20251209T103045.parquet"
    )
    for bad in ("", "a/b", "..\\x"):
        with pytest.raises(ValueError, match="one word"):
            default_recording_path(bad, click)


# ---------------------------------------------------------------- notebooks


def _code_cell(notebook: str, cell_id: str) -> str:
    cells = nbformat.read(NOTEBOOKS / notebook, as_version=4).cells  # type: ignore[no-untyped-call]
    return str(next(cell.source for cell in cells if cell.get("id") == cell_id))


def test_the_notebooks_platform_cell_explains_a_missing_token_plainly(tmp_path: Path) -> None:
    # The imports cell and the platform cell of notebook 01, run where no token is set.
    notebook = "01_live_quickstart.ipynb"
    code = _code_cell(notebook, "nb01-01") + "\n" + _code_cell(notebook, "nb01-20")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MQTT_") and k != "CI"}
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(NOTEBOOKS.parent)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    message = run.stdout.strip()
    assert message.startswith("skipped: no MQTT token is set. To stream from the platform, ")
    assert "MQTT_API_TOKEN" in message
    depth = deepest = 0
    for char in message:
        depth += {"(": 1, ")": -1}.get(char, 0)
        deepest = max(deepest, depth)
    assert deepest <= 1, message


@pytest.mark.parametrize(
    "notebook",
    [
        pytest.param("02_offline_analysis.ipynb", marks=pytest.mark.slow),
        pytest.param("01_live_quickstart.ipynb", marks=[pytest.mark.slow, pytest.mark.broker]),
    ],
)
def test_a_notebook_leaves_no_temporary_folder_behind(notebook: str, tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)  # type: ignore[no-untyped-call]
    env = {**os.environ, "TMPDIR": str(temp), "MPLBACKEND": "Agg"}
    env = {k: v for k, v in env.items() if not k.startswith("MQTT_")}
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute(env=env)
    assert sorted(p.name for p in temp.iterdir()) == []
