"""The `tesaiot-data` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tesaiot_data import load_recording
from tesaiot_data.cli import build_parser, main
from tesaiot_data.cli.options import settings_from_args
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.files.parquet import write_frame, write_rejects
from tesaiot_data.messages import Reject, RejectReason
from tesaiot_data.sinks.recorder import Recorder
from tests.helpers import local, wait_for
from tests.small_disk import fill, small_disk

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


# --- errors: one line, exit 1, never a traceback ------------------------------------------------


def _not_a_recording(kind: str, folder: Path) -> Path:
    if kind == "rejects-sidecar":
        recording = write_frame(_frame(), folder / "s.parquet")
        return local(write_rejects([_reject()], recording.with_name("s.rejects.parquet")))
    if kind == "csv":
        path = folder / "s.csv"
        path.write_text("timestamp,device_id,value\n2025-12-10T00:00:00Z,dev-1,21.5\n")
        return path
    if kind == "truncated":
        whole = write_frame(_frame(), folder / "whole.parquet").read_bytes()
        path = folder / "half.parquet"
        path.write_bytes(whole[: len(whole) // 2])
        return path
    if kind == "missing":
        return folder / "nope.parquet"
    path = folder / "other.parquet"
    pd.DataFrame({"city": ["Bangkok"]}).to_parquet(path)
    return path


def _frame(rows: int = 50) -> pd.DataFrame:
    start = pd.Timestamp("2025-12-10", tz="UTC")
    times = start + pd.to_timedelta(np.arange(rows), unit="s")
    return pd.DataFrame(
        {
            "timestamp": times,
            "received_at": times,
            "device_id": pd.Categorical([f"dev-{i % 3}" for i in range(rows)]),
            "sensor_type": pd.Categorical(["env"] * rows),
            "metric": pd.Categorical(["temperature"] * rows),
            "value": np.linspace(20, 25, rows),
            "unit": pd.Categorical(["C"] * rows),
            "value_text": pd.Categorical([None] * rows),
        }
    )


def _reject() -> Reject:
    return Reject(
        topic="device/d1/telemetry",
        payload=b"{not json",
        payload_size=9,
        reason=RejectReason.NOT_JSON,
        detail="bad",
        received_ns=1_765_324_800 * 10**9,
    )


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("rejects-sidecar", "use load_rejects()"),
        ("csv", "a recording is a Parquet file"),
        ("truncated", "only part of one"),
        ("other-parquet", "it has no columns"),
        ("missing", "no recording at"),
    ],
)
def test_inspect_of_a_file_that_is_not_a_recording_prints_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, says: str
) -> None:
    path = _not_a_recording(kind, tmp_path)
    assert main(["inspect", str(path)], out=io.StringIO()) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert says in line
    assert str(path) in line


def test_inspect_of_a_half_copied_file_in_a_real_process(tmp_path: Path) -> None:
    path = _not_a_recording("truncated", tmp_path)
    result = subprocess.run(
        [*CLI, "inspect", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "hint: a recording is a Parquet file" in _one_error_line(result.stderr)
    assert result.stdout == ""


def test_inspect_of_an_unfinished_recording_describes_its_parts(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "crashed.parquet")
    recorder.add(_frame(30))
    recorder.flush()  # and then the process died: only the parts folder is there
    buffer = io.StringIO()
    assert main(["inspect", str(recorder.path)], out=buffer) == 0
    report = buffer.getvalue()
    assert f"folder:    {recorder.parts_dir} (1 Parquet file," in report
    assert "rows:      30" in report


def _record(broker: LocalBroker, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "record", "--out", str(out), *extra],
        env=broker_env(broker),
        cwd=out.parent if out.parent.is_dir() else None,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.broker
@pytest.mark.parametrize("where", ["parts-folder-exists", "under-a-file"])
def test_record_to_a_path_that_cannot_be_written_prints_one_error_line(
    broker: LocalBroker, tmp_path: Path, where: str
) -> None:
    if where == "parts-folder-exists":
        out = tmp_path / "session.parquet"
        (tmp_path / "session.parquet.parts").mkdir()  # another recording is writing there
        says = "already exists"
    else:
        (tmp_path / "a-file").write_text("")
        out = tmp_path / "a-file" / "session.parquet"
        says = "Not a directory"
    result = _record(broker, out, "--duration", "1s")
    assert result.returncode == 1, result.stderr
    assert says in _one_error_line(result.stderr)


@pytest.mark.broker
def test_record_onto_a_full_disk_prints_one_error_line_with_the_counts(
    broker: LocalBroker, fleet_factory: Callable[..., DeviceFleet], tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        fill(disk)
        fleet = fleet_factory(devices=2, rate=100, mixed_shapes=False).start()
        out = disk / "session.parquet"
        # No flush before stop: the rows are written (and fail) when the recording stops.
        result = _record(broker, out, "--duration", "1s", "--flush-every", "1h")
        fleet.stop()
        assert result.returncode == 1, result.stderr
        line = _one_error_line(result.stderr)
        assert f"error: recording to {out} failed: [Errno 28] No space left on device" in line
        assert re.search(r"; 0 rows reached disk, \d+ rows were lost \(hint: free disk space", line)
        assert not out.exists()


TOKEN = "tesa_mqtt_demo_" + "C" * 32


@pytest.fixture
def token_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """A token in the environment, none of the session variables; the flags for no .env file."""
    monkeypatch.setenv("MQTT_API_TOKEN", TOKEN)
    for name in ("MQTT_CLIENT_ID", "MQTT_SESSION_EXPIRY", "MQTT_PROTOCOL"):
        monkeypatch.delenv(name, raising=False)
    return ["--env-file", str(tmp_path / "none.env")]


@pytest.mark.parametrize("command", [["stream"], ["record", "--dataset", "data"]])
@pytest.mark.parametrize(
    ("flags", "says", "hint"),
    [
        (["--session-expiry", "1h"], "needs a fixed client id", "MQTT_CLIENT_ID"),
        (["--session-expiry", "soon", "--client-id", "r1"], "is not a duration", "7d"),
        (["--session-expiry=-1h", "--client-id", "r1"], "is negative", "7d"),
        (["--protocol", "6"], "MQTT_PROTOCOL='6' is not an MQTT version", "3.1.1"),
    ],
    ids=["no-client-id", "not-a-duration", "negative", "unknown-protocol"],
)
def test_bad_session_flags_print_one_error_line_and_exit_1(
    token_only: list[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    flags: list[str],
    says: str,
    hint: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*command, *token_only, *flags], out=io.StringIO()) == 1  # before connecting
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    assert error[0].startswith("error: ")
    assert says in error[0]
    assert hint in error[0]  # the hint is on the line


def test_the_session_flags_reach_the_settings_and_win_over_the_environment(
    token_only: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = build_parser()
    flags = ["--client-id", "line-7", "--session-expiry", "7d", "--protocol", "5"]
    args = parser.parse_args(["record", "--dataset", "data", *token_only, *flags])
    settings = settings_from_args(args)
    assert (settings.client_id, settings.session_expiry, settings.protocol) == (
        "line-7",
        7 * 86_400,
        "5",
    )
    assert settings.persistent_session
    # From the environment without flags; `--session-expiry 0` makes it clean again.
    monkeypatch.setenv("MQTT_SESSION_EXPIRY", "1h")
    monkeypatch.setenv("MQTT_CLIENT_ID", "line-7")
    from_env = settings_from_args(parser.parse_args(["stream", *token_only]))
    assert (from_env.session_expiry, from_env.protocol) == (3600, "3.1.1")
    clean = settings_from_args(parser.parse_args(["stream", *token_only, "--session-expiry", "0"]))
    assert not clean.persistent_session
    help_text = subprocess.run(
        [*CLI, "record", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--session-expiry" in help_text
    assert "--protocol" in help_text


def test_a_ca_file_that_is_not_pem_and_credentials_in_the_url_are_one_error_line(
    token_only: list[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    url = ["--broker-url", "wss://127.0.0.1:9/mqtt"]
    assert main(["stream", *token_only, *url, "--ca-certs", str(garbage)], out=io.StringIO()) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    assert error[0].startswith("error: the CA file ")
    assert str(garbage) in error[0]
    assert "CA_CERT_PATH" in error[0]

    secret_url = f"wss://user:{TOKEN}@127.0.0.1:9/mqtt"
    assert main(["stream", *token_only, "--broker-url", secret_url], out=io.StringIO()) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    assert "holds a user name or password" in error[0]
    assert TOKEN[len("tesa_mqtt_demo_") :] not in error[0]
