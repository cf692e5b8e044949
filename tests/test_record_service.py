"""`tesaiot-data record --dataset DIR`: a long-running recorder, run as a service runs it.

A real subprocess against the session broker, stdout and stderr in files (not a terminal, as
under systemd), stopped by SIGTERM or Ctrl-C; the dataset is read back and every published
message must be in it exactly once.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tesaiot_data import load_recording
from tesaiot_data.cli import main
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.demo.fleet import DeviceFleet
from tests.helpers import wait_for

CLI = [sys.executable, "-m", "tesaiot_data.cli"]
# part-<UTC stamp>-<host>-<pid>-<8 hex>.parquet
PART_NAME = re.compile(r"part-\d{8}T\d{12}-[A-Za-z0-9_-]+-(?P<pid>\d+)-[0-9a-f]{8}\.parquet")


def broker_env(broker: LocalBroker) -> dict[str, str]:
    return {
        **os.environ,
        "MQTT_API_TOKEN": broker.token,
        "MQTT_BROKER_URL": broker.wss_url,
        "CA_CERT_PATH": str(broker.ca_file),
    }


def rows_on_disk(root: Path) -> int:
    """Rows in the dataset's part files, from their footers (cheap enough to poll)."""
    return sum(pq.read_metadata(part).num_rows for part in root.rglob("part-*.parquet"))


def disk_holds(root: Path, rows: int) -> Callable[[], bool]:
    """A `wait_for` predicate: the dataset holds at least `rows` rows."""
    return lambda: rows_on_disk(root) >= rows


def unique_clock(start_s: int) -> Callable[[], float]:
    """A fleet clock one millisecond later at every call: each message its own timestamp."""
    ticks = itertools.count()
    return lambda: start_s + next(ticks) / 1000


@dataclass
class Service:
    """A `record --dataset` subprocess and its output files."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text()

    def log(self) -> str:
        return self.stderr.read_text()

    def says(self, text: str) -> Callable[[], bool]:
        """A `wait_for` predicate: `text` is on its stdout."""
        return lambda: text in self.output()


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start `tesaiot-data record --dataset ...` subprocesses; each is killed after the test."""
    started: list[Service] = []

    def start(broker: LocalBroker, *args: str) -> Service:
        number = len(started)
        stdout, stderr = tmp_path / f"service-{number}.out", tmp_path / f"service-{number}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [*CLI, "record", *args], env=broker_env(broker), stdout=out, stderr=err
            )
        service = Service(process, stdout, stderr)
        started.append(service)
        return service

    yield start
    for service in started:
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait()


@pytest.mark.broker
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_dataset_service_keeps_every_message_once_and_stops_cleanly(
    broker: LocalBroker,
    fleet_factory: Callable[..., DeviceFleet],
    start_service: Callable[..., Service],
    tmp_path: Path,
    stop_signal: signal.Signals,
) -> None:
    root = tmp_path / "dataset"
    service = start_service(
        broker, "--dataset", str(root), "--flush-every", "0.2s", "--status-every", "0.3s"
    )
    wait_for(
        lambda: "recording device/+/telemetry/# to the dataset" in service.output(),
        timeout=30,
        message=f"the service did not subscribe: {service.log()}",
    )
    start_s = int(time.time())
    fleet = fleet_factory(devices=4, qos=1, mixed_shapes=False, clock=unique_clock(start_s))
    count = 0
    for burst in (300, 500, 200):  # rows reach disk between bursts, by flushes
        count += fleet.publish(burst)
        wait_for(disk_holds(root, count), timeout=20, message="rows not on disk")
    wait_for(
        lambda: "rows since the start" in service.log(), timeout=10, message="no summary logged"
    )

    service.process.send_signal(stop_signal)
    assert service.process.wait(30) == 0, service.log()

    frame = load_recording(root)
    identities = list(
        zip(
            frame["device_id"].astype(str),
            frame["timestamp"].astype("int64") // 1_000_000,
            strict=True,
        )
    )
    published = {
        (fleet.device_ids[i % len(fleet.device_ids)], start_s * 1000 + i) for i in range(count)
    }
    assert len(identities) == count  # nothing twice: no reconnect, so no QoS 1 redelivery
    assert set(identities) == published
    assert set(frame["metric"].astype(str)) <= {
        "temperature",
        "humidity",
        "pressure",
        "motion",
        "battery",
    }
    # Hive partitions, and every part named by this process.
    parts = sorted(root.rglob("*.parquet"))
    assert parts, "no part files"
    for part in parts:
        assert part.parent.name.startswith("date="), part
        match = PART_NAME.fullmatch(part.name)
        assert match is not None, part.name
        assert int(match["pid"]) == service.process.pid

    # Not a terminal: no status line on stdout, only what it does; the summaries are logged.
    lines = service.output().splitlines()
    assert len(lines) == 2, lines
    assert lines[1] == (
        f"recorded {count:,} rows from {count:,} messages to {root} (0 rejected, 0 dropped)"
    )
    log = service.log()
    assert re.search(r"INFO tesaiot_data\.cli\.streaming: connected \| \d+ msg/s \|", log), log
    if stop_signal == signal.SIGTERM:
        assert "SIGTERM received: writing the last rows and stopping" in log
    assert broker.token not in log + service.output()


@pytest.mark.broker
@pytest.mark.slow
def test_a_service_appends_to_the_dataset_it_finds(
    broker: LocalBroker,
    fleet_factory: Callable[..., DeviceFleet],
    start_service: Callable[..., Service],
    tmp_path: Path,
) -> None:
    # A restart (systemd Restart=, a deploy) adds files to the dataset; nothing is replaced.
    root = tmp_path / "dataset"
    fleet = fleet_factory(devices=2, qos=1, mixed_shapes=False)
    pids = []
    for _run in range(2):
        service = start_service(broker, "--dataset", str(root), "--flush-every", "0.2s")
        wait_for(service.says("recording"), timeout=30, message="the service did not start")
        expected = rows_on_disk(root) + 100
        fleet.publish(100)
        wait_for(disk_holds(root, expected), timeout=20, message="rows not on disk")
        assert rows_on_disk(root) == expected
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(30) == 0, service.log()
        pids.append(service.process.pid)
    frame = load_recording(root)
    assert len(frame) == 200
    writers = {
        int(match["pid"])
        for part in root.rglob("*.parquet")
        if (match := PART_NAME.fullmatch(part.name))
    }
    assert writers == set(pids)


def test_out_and_dataset_are_exclusive(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["record", "--out", str(tmp_path / "a.parquet"), "--dataset", str(tmp_path / "d")])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["record"])
    assert exit_info.value.code == 2
    assert "one of the arguments --out --dataset is required" in capsys.readouterr().err


def test_a_dataset_path_that_is_a_file_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("MQTT_API_TOKEN", "tesa_mqtt_test_" + "x" * 24)  # options pass first
    # Checked before connecting: no broker needed, and no half-started service.
    assert main(["record", "--dataset", str(blocker)], out=io.StringIO()) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert error[0].startswith("error: ")
    assert "File exists" in error[0]
