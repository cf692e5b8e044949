"""The `tesaiot-data` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tesaiot_data import load_recording
from tesaiot_data.cli import main
from tesaiot_data.fleet import DeviceFleet
from tesaiot_data.localbroker import LocalBroker
from tests.helpers import wait_for

CLI = [sys.executable, "-m", "tesaiot_data.cli"]


def broker_env(broker: LocalBroker, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "MQTT_API_TOKEN": broker.token,
        "MQTT_BROKER_URL": broker.settings().broker_url,
        "CA_CERT_PATH": str(broker.ca_file),
        **extra,
    }


def test_help_lists_every_command() -> None:
    result = subprocess.run([*CLI, "--help"], capture_output=True, text=True, check=True)
    for command in ("stream", "record", "inspect", "demo"):
        assert command in result.stdout
    stream_help = subprocess.run(
        [*CLI, "stream", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--broker-url", "--topic", "--ca-certs", "--insecure", "--env-file"):
        assert flag in stream_help


@pytest.mark.broker
def test_stream_prints_each_message_and_stops_cleanly_on_ctrl_c(
    broker: LocalBroker, fleet_factory: Callable[..., DeviceFleet], tmp_path: Path
) -> None:
    log = tmp_path / "stream.out"
    with log.open("w") as out:
        process = subprocess.Popen(
            [*CLI, "stream"], env=broker_env(broker), cwd=tmp_path, stdout=out, stderr=out
        )
    try:
        fleet = fleet_factory(devices=1, qos=1, mixed_shapes=False)

        def printed_a_message() -> bool:
            fleet.publish(1)  # until the subscription is up, messages go nowhere
            return fleet.device_ids[0] in log.read_text()

        wait_for(printed_a_message, timeout=20, period=0.1, message="no message printed")
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(15)
    text = log.read_text()
    assert code == 0, text
    assert fleet.device_ids[0] in text
    assert '"value"' in text or "'value'" in text
    assert "received" in text  # the summary printed on the way out
    assert broker.token not in text


@pytest.mark.broker
def test_a_bad_token_exits_non_zero_with_the_typed_message_and_no_token(
    broker: LocalBroker, tmp_path: Path
) -> None:
    wrong = "tesa_mqtt_demo_" + "Q" * 32
    result = subprocess.run(
        [*CLI, "stream"],
        env=broker_env(broker, MQTT_API_TOKEN=wrong),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "refused token" in result.stderr
    assert "MQTT_API_TOKEN" in result.stderr
    assert wrong not in result.stderr + result.stdout


def test_a_bad_url_flag_exits_with_a_config_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "stream", "--broker-url", "http://example"],
        env={**os.environ, "MQTT_API_TOKEN": "tesa_mqtt_demo_" + "U" * 32},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "wss://" in result.stderr


@pytest.mark.broker
def test_record_with_a_duration_then_inspect(
    broker: LocalBroker, fleet_factory: Callable[..., DeviceFleet], tmp_path: Path
) -> None:
    fleet = fleet_factory(devices=3, rate=200, mixed_shapes=False).start()
    out = tmp_path / "session.parquet"
    result = subprocess.run(
        [*CLI, "record", "--out", str(out), "--duration", "2s"],
        env=broker_env(broker),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    fleet.stop()
    assert result.returncode == 0, result.stderr
    frame = load_recording(out)
    assert len(frame) > 0
    assert set(frame["device_id"].astype(str)) <= set(fleet.device_ids)
    buffer = io.StringIO()
    assert main(["inspect", str(out)], out=buffer) == 0
    report = buffer.getvalue()
    assert f"rows:      {len(frame)}" in report
    assert "devices:   3" in report
    assert "temperature" in report


def test_inspect_of_a_missing_file_fails_cleanly(tmp_path: Path) -> None:
    assert main(["inspect", str(tmp_path / "nope.parquet")], out=io.StringIO()) == 1


@pytest.mark.broker
@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo.parquet"
    result = subprocess.run(
        [*CLI, "demo", "--duration", "3s", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    frame = load_recording(out)
    assert frame["device_id"].nunique() == 5
    assert "jupyter lab notebooks/" in result.stdout
    assert "rejected" in result.stdout
