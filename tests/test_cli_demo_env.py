"""`tesaiot-data demo --env-out`: other commands reach the running demo broker; `| head` works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CLI = [sys.executable, "-m", "tesaiot_data.cli"]


def test_commands_reach_the_demo_broker_through_its_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "demo.env"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "CA_CERT"))}
    demo = subprocess.Popen(
        [*CLI, "demo", "--duration", "120s", "--env-out", str(env_file), "--out", "demo.parquet"],
        cwd=tmp_path,
        env=clean,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(env_file.exists, timeout=60, message="the demo's env file")
        assert env_file.stat().st_mode & 0o077 == 0  # it holds a token: its owner's only
        assert "MQTT_API_TOKEN=tesa_mqtt_" in env_file.read_text()

        dataset = tmp_path / "data"
        options = ["--env-file", str(env_file), "--duration", "2s", "--flush-every", "1s"]
        record = subprocess.run(
            [*CLI, "record", "--dataset", str(dataset), *options],
            cwd=tmp_path,
            env=clean,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert record.returncode == 0, record.stderr
        assert sum(pq.read_metadata(p).num_rows for p in dataset.rglob("part-*.parquet")) > 0

        # `stream | head -1`: the reader closes the pipe; the command ends quietly with 0.
        stream = subprocess.Popen(
            [*CLI, "stream", "--env-file", str(env_file)],
            cwd=tmp_path,
            env=clean,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert stream.stdout is not None
        stream.stdout.readline()  # the "streaming ... from ..." line
        assert stream.stdout.readline()  # a message
        stream.stdout.close()
        _, errors = stream.communicate(timeout=30)
        assert stream.returncode == 0, errors
        assert "Traceback" not in errors
        assert "error:" not in errors
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)
        _, demo_errors = demo.communicate(timeout=60)
    assert "Traceback" not in demo_errors
    assert not env_file.exists()  # its token died with the broker


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_sigterm_and_sighup_end_the_demo_like_ctrl_c(sig: signal.Signals, tmp_path: Path) -> None:
    # `kill`, systemd, `docker stop` or a closed terminal: the recording is saved, the env file
    # and the broker's folder (both hold the token) are removed, the summary is printed.
    temp = tmp_path / "tmp"  # the broker's folder goes here (TMPDIR), to be looked at
    temp.mkdir()
    env_file = tmp_path / "demo.env"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "CA_CERT"))}
    demo = subprocess.Popen(
        [*CLI, "demo", "--duration", "120s", "--env-out", str(env_file), "--out", "demo.parquet"],
        cwd=tmp_path,
        env={**clean, "TMPDIR": str(temp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(env_file.exists, timeout=60, message="the demo's env file")
        folders = list(temp.glob("tesaiot-broker-*"))
        assert len(folders) == 1, folders
        demo.send_signal(sig)
        output, errors = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 0, errors
    assert "Traceback" not in errors
    assert "received" in output  # the summary
    assert pq.read_metadata(tmp_path / "demo.parquet").num_rows >= 0  # saved, and whole
    assert not env_file.exists()
    assert not folders[0].exists()
    assert list(temp.iterdir()) == []
