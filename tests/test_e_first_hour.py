"""The first hour on the command line: the demo's counts, hints that name flags and schemes,
and a replay with a read-only token that fails before it publishes.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tesaiot_data import load_recording
from tesaiot_data.cli import main
from tesaiot_data.collector.collector import Collector
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.errors import AuthError
from tesaiot_data.files.parquet import write_frame
from tesaiot_data.mqtt.probe import port_scheme
from tesaiot_data.readers.disk import load_rejects
from tesaiot_data.replay import replay
from tesaiot_data.schema import to_canonical
from tesaiot_data.settings import Settings, mask_token
from tests.helpers import wait_for

pytestmark = pytest.mark.broker

CLI = [sys.executable, "-m", "tesaiot_data.cli"]
T0 = pd.Timestamp("2025-12-09T10:30:45Z").value


def spaced(device: str, *, step_ns: int, count: int) -> pd.DataFrame:
    rows = [
        {
            "timestamp": T0 + index * step_ns,
            "received_at": T0 + index * step_ns,
            "device_id": device,
            "sensor_type": "temperature",
            "metric": "temperature",
            "value": 20.0 + index,
            "unit": "celsius",
            "value_text": None,
        }
        for index in range(count)
    ]
    frame = pd.DataFrame(rows)
    for name in ("timestamp", "received_at"):
        frame[name] = pd.to_datetime(frame[name], unit="ns", utc=True)
    return to_canonical(frame)


@pytest.fixture
def no_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No MQTT_* or CA_CERT_PATH from the environment; returns a dotenv path that is absent."""
    for name in list(os.environ):
        if name.startswith(("MQTT_", "CA_CERT")):
            monkeypatch.delenv(name)
    return tmp_path / "no.env"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue(), capsys.readouterr().err


# --- 2. the demo's summary counts are its file's --------------------------------------------


@pytest.mark.slow
def test_demo_summary_counts_agree_with_its_file(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "CA_CERT"))}
    done = subprocess.run(
        [*CLI, "demo", "--duration", "4s", "--rate", "100", "--out", "demo.parquet"],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    output = done.stdout
    assert "{" not in output, output  # no dict reprs
    found = re.search(
        r"received ([\d,]+) messages?, none before the recording started or after it stopped: "
        r"([\d,]+) parsed into ([\d,]+) rows?, all ([\d,]+) in the recording; ([\d,]+) rejected",
        output,
    )
    assert found, output
    received, parsed, rows, in_file, rejected = (int(g.replace(",", "")) for g in found.groups())
    path = tmp_path / "demo.parquet"
    assert rows == in_file == len(load_recording(path)) > 0
    assert rejected == len(load_rejects(path))
    assert received == parsed + rejected
    assert f"rows:      {rows:,}" in output
    assert "load_recording('" in output
    assert "demo.parquet')" in output


# --- 3. hints name the command line's flags and the scheme that fits --------------------------


@pytest.mark.parametrize("command", ["record", "replay"])
def test_an_unverified_certificate_names_the_ca_certs_and_insecure_flags(
    broker: LocalBroker,
    tmp_path: Path,
    no_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    monkeypatch.setenv("MQTT_API_TOKEN", broker.token)
    connection = ["--broker-url", broker.wss_url, "--env-file", str(no_environment)]
    if command == "record":
        argv = ["record", "--out", str(tmp_path / "r.parquet"), "--duration", "1s", *connection]
    else:
        path = write_frame(spaced("tls-x", step_ns=10**6, count=2), tmp_path / "x.parquet")
        argv = ["replay", str(path), *connection]
    code, _, error = run_cli(argv, capsys)  # the demo CA is in no system store
    assert code == 1
    assert error.startswith("error: ")
    assert "could not be verified" in error
    for name in ("--ca-certs", "--insecure", "CA_CERT_PATH", "MQTT_INSECURE"):
        assert name in error, error


def test_a_missing_ca_file_names_the_ca_certs_flag(
    broker: LocalBroker,
    tmp_path: Path,
    no_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MQTT_API_TOKEN", broker.token)
    argv = ["record", "--out", str(tmp_path / "r.parquet"), "--duration", "1s"]
    argv += ["--broker-url", broker.wss_url, "--ca-certs", str(tmp_path / "missing-ca.pem")]
    code, _, error = run_cli([*argv, "--env-file", str(no_environment)], capsys)
    assert code == 1
    assert "--ca-certs" in error
    assert "CA_CERT_PATH" in error


# (scheme given, the port it is pointed at, the scheme that port serves)
MIX_UPS = [
    ("mqtts", "wss_port", "wss"),
    ("ws", "wss_port", "wss"),
    ("mqtt", "wss_port", "wss"),
    ("wss", "tcp_port", "mqtt"),
    ("mqtts", "tcp_port", "mqtt"),
    ("ws", "tcp_port", "mqtt"),
    ("wss", "ws_port", "ws"),
    ("mqtts", "ws_port", "ws"),
    ("mqtt", "ws_port", "ws"),
]


@pytest.mark.parametrize(("scheme", "port_name", "right"), MIX_UPS)
@pytest.mark.parametrize("command", ["record", "replay"])
def test_a_scheme_that_does_not_fit_the_port_gets_a_hint_naming_the_right_one(
    broker: LocalBroker,
    tmp_path: Path,
    no_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    scheme: str,
    port_name: str,
    right: str,
) -> None:
    port = getattr(broker, port_name)
    path = "/mqtt" if scheme in ("ws", "wss") else ""
    url = f"{scheme}://{broker.host}:{port}{path}"
    monkeypatch.setenv("MQTT_API_TOKEN", broker.token)
    connection = ["--broker-url", url, "--ca-certs", str(broker.ca_file)]
    connection += ["--env-file", str(no_environment)]
    if command == "record":
        argv = ["record", "--out", str(tmp_path / "r.parquet"), "--duration", "1s", *connection]
    else:
        recording = write_frame(spaced("mix", step_ns=10**6, count=2), tmp_path / "m.parquet")
        argv = ["replay", str(recording), *connection]
    started = time.monotonic()
    code, _, error = run_cli(argv, capsys)
    assert code == 1
    assert error.startswith("error: ")
    wanted = f"use {right}://{broker.host}:{port}{'/mqtt' if right in ('ws', 'wss') else ''}"
    assert wanted in error, error
    assert "--broker-url" in error
    assert time.monotonic() - started < 15


def test_the_probe_tells_each_listener_of_the_local_broker(broker: LocalBroker) -> None:
    assert port_scheme(broker.host, broker.wss_port) == "wss"
    assert port_scheme(broker.host, broker.tcp_port) == "mqtt"
    assert broker.ws_port is not None
    assert port_scheme(broker.host, broker.ws_port) == "ws"


# --- 4. a read-only token fails before anything is published -----------------------------------


def test_cli_replay_with_a_read_only_token_fails_before_publishing(
    broker: LocalBroker,
    tmp_path: Path,
    no_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A minute at the recorded pace: before the fix it ran the whole minute into nothing
    # (MQTT 3.1.1 brokers drop what the ACL denies without a word) and then exited 0.
    path = write_frame(spaced("ro", step_ns=10**9, count=61), tmp_path / "minute.parquet")
    monkeypatch.setenv("MQTT_API_TOKEN", broker.token)
    argv = ["replay", str(path), "--broker-url", broker.wss_url, "--ca-certs", str(broker.ca_file)]
    started = time.monotonic()
    code, out, error = run_cli([*argv, "--env-file", str(no_environment)], capsys)
    assert time.monotonic() - started < 15
    assert code == 1
    assert out == ""
    assert error.startswith("error: ")
    assert "read-only" in error
    assert mask_token(broker.token) in error
    assert broker.token not in error
    assert "--username" in error
    assert "MQTT_PASSWORD" in error


@pytest.mark.parametrize("qos", [0, 1])
def test_replay_with_a_read_only_token_raises_and_delivers_nothing(
    broker: LocalBroker,
    settings: Settings,
    collectors: Callable[..., Collector],
    tmp_path: Path,
    qos: int,
) -> None:
    device = f"ro-{uuid.uuid4().hex[:8]}"
    path = write_frame(spaced(device, step_ns=10**9, count=30), tmp_path / "ro.parquet")
    watcher = collectors(settings).start()
    with pytest.raises(AuthError, match="read-only") as info:
        replay(path, settings=broker.settings(), qos=qos, shift_to_now=True)
    assert broker.token not in str(info.value)
    assert watcher.wait_idle()
    assert (watcher.frame()["device_id"] == device).sum() == 0


def test_an_account_that_may_publish_gets_its_first_message_delivered_once(
    broker: LocalBroker,
    settings: Settings,
    collectors: Callable[..., Collector],
    tmp_path: Path,
) -> None:
    # The check publishes the first message for real: it must not come twice, or go missing.
    device = f"ok-{uuid.uuid4().hex[:8]}"
    path = write_frame(spaced(device, step_ns=50_000_000, count=5), tmp_path / "ok.parquet")
    watcher = collectors(settings.replace(client_id=f"w-{uuid.uuid4().hex[:8]}")).start()
    publisher = broker.publisher()
    result = replay(
        path,
        settings=broker.settings(),
        broker_url=f"mqtt://{publisher.host}:{publisher.port}",
        username=publisher.username,
        password=publisher.password,
        qos=0,
    )
    assert (result.messages, result.rows) == (5, 5)

    def rows() -> int:
        return int((watcher.frame()["device_id"] == device).sum())

    wait_for(lambda: rows() >= 5, message="the replayed rows did not arrive")
    assert watcher.wait_idle()
    frame = watcher.frame()
    values = sorted(frame.loc[frame["device_id"] == device, "value"])
    assert values == [20.0, 21.0, 22.0, 23.0, 24.0]
