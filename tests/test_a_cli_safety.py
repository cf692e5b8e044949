r"""The command line never prints control characters raw, says its version, and a
`record --dataset` service whose disk turns read-only keeps a bounded number of rows.

Run as a user runs it: subprocesses against the session's real Mosquitto and real files.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tesaiot_data import __version__, load_recording
from tesaiot_data.cli.console import one_line, printable
from tesaiot_data.cli.files import printable as printable_from_files
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.demo.fleet import DeviceFleet
from tests.helpers import publish_acknowledged, wait_for
from tests.small_disk import small_disk

CLI = [sys.executable, "-m", "tesaiot_data.cli"]
RED = "\x1b[31m"


def broker_env(broker: LocalBroker) -> dict[str, str]:
    return {
        **os.environ,
        "MQTT_API_TOKEN": broker.token,
        "MQTT_BROKER_URL": broker.settings().broker_url,
        "CA_CERT_PATH": str(broker.ca_file),
    }


def assert_no_controls(text: str) -> None:
    assert "\x1b" not in text, repr(text)
    assert "\u202e" not in text, repr(text)
    for line in text.splitlines():
        assert not line.startswith("forged"), repr(text)


def test_version_prints_the_package_version_and_exits_0() -> None:
    result = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tesaiot-data {__version__}"


def test_printable_has_one_home_and_the_old_import_still_works() -> None:
    assert printable_from_files is printable
    assert printable(f"a{RED}b\nc") == "a\\x1b[31mb\\nc"
    assert one_line(OSError(f"bad {RED}path\nforged")) == "bad \\x1b[31mpath forged"


@pytest.mark.parametrize("command", ["inspect", "compact", "replay"])
def test_the_error_line_escapes_a_path_with_escape_sequences(command: str, tmp_path: Path) -> None:
    evil = tmp_path / f"x{RED}red\nforged line"
    extra = ["--env-file", str(tmp_path / "none.env")] if command == "replay" else []
    env = {**os.environ, "MQTT_API_TOKEN": "tesa_mqtt_demo_" + "E" * 32}
    result = subprocess.run(
        [*CLI, command, str(evil), *extra], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert_no_controls(result.stderr + result.stdout)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert "x\\x1b[31mred" in lines[0]


@pytest.mark.broker
def test_stream_escapes_device_ids_and_values_from_the_broker(
    broker: LocalBroker, tmp_path: Path
) -> None:
    # Mosquitto refuses C0 controls in a topic, but not a bidirectional override; a payload
    # carries anything.
    device = f"dev-{uuid.uuid4().hex[:6]}\u202eevil"
    log = tmp_path / "stream.out"
    with log.open("w") as out:
        process = subprocess.Popen(
            [*CLI, "stream", "--env-file", str(tmp_path / "none.env")],
            env=broker_env(broker),
            stdout=out,
            stderr=out,
        )
    try:
        topic = f"device/{device}/telemetry/{RED[1:]}"

        def printed() -> bool:
            publish_acknowledged(broker.publisher(), [(topic, f"{RED}red\nforged line")])
            return "forged line" in log.read_text()

        wait_for(printed, timeout=30, period=0.2, message=f"nothing printed: {log.read_text()}")
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(15)
    text = log.read_text()
    assert code == 0, text
    assert_no_controls(text)
    assert "\\u202eevil" in text
    assert "\\x1b[31mred\\nforged line" in text


def rows_on_disk(root: Path) -> int:
    return sum(pq.read_metadata(part).num_rows for part in root.rglob("part-*.parquet"))


def remount(folder: Path, mode: str) -> bool:
    """Remount a small disk `ro` or `rw`; False while a file is open for writing (busy)."""
    result = subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], capture_output=True)
    return result.returncode == 0


@pytest.mark.broker
def test_a_dataset_service_on_a_disk_made_read_only_keeps_at_most_the_bound(
    broker: LocalBroker, fleet_factory: Callable[..., DeviceFleet], tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", size="8m") as disk:
        root = disk / "data"
        stdout, stderr = tmp_path / "service.out", tmp_path / "service.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [
                    *CLI,
                    "record",
                    "--dataset",
                    str(root),
                    "--flush-every",
                    "0.2s",
                    "--status-every",
                    "0.3s",
                    "--max-pending-rows",
                    "50",
                    "--env-file",
                    str(tmp_path / "none.env"),
                ],
                env=broker_env(broker),
                stdout=out,
                stderr=err,
            )
        try:
            wait_for(
                lambda: "to the dataset" in stdout.read_text(),
                timeout=30,
                message=f"the service did not start: {stderr.read_text()}",
            )
            fleet = fleet_factory(devices=2, qos=1, mixed_shapes=False)
            sent = fleet.publish(40)
            wait_for(lambda: rows_on_disk(root) >= sent, timeout=20, message="rows not on disk")
            wait_for(lambda: remount(disk, "ro"), timeout=10, message="cannot remount read-only")
            lost = fleet.publish(200)  # 200 rows while nothing can be written
            wait_for(
                lambda: re.search(r"\| 150 rows dropped unwritten \|", stderr.read_text()),
                timeout=20,
                message=f"no drop in the status line: {stderr.read_text()}",
            )
            assert rows_on_disk(root) == sent
            wait_for(lambda: remount(disk, "rw"), timeout=10, message="cannot remount rw")
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0, stderr.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        frame = load_recording(root)
        assert len(frame) == sent + 50  # the first rows and the newest 50 of the outage
        log = stderr.read_text()
        assert log.count("dropped from now on") == 1, log
        assert log.count("dropped 150 rows received from") == 1, log
        last = stdout.read_text().strip().splitlines()[-1]
        assert last.startswith(f"recorded {sent + lost:,} rows")
        assert last.endswith(
            "; 150 rows dropped unwritten while the folder could not be written (see the log)"
        )
