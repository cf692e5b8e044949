"""The command line on s3:// URLs: `record --dataset` as a service (also SIGKILLed), `inspect`,
`compact` and `query`, against a real S3 server and a real broker."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tesaiot_data import Collector, Settings
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.readers.disk import load_recording
from tesaiot_data.replay import replay
from tests.frames import assert_same_rows, plain
from tests.helpers import wait_for
from tests.s3_server import S3, s3, s3_server  # noqa: F401  (fixtures)

CLI = [sys.executable, "-m", "tesaiot_data.cli"]


def _rows(s3: S3, prefix: str) -> int:  # noqa: F811
    """Rows in the visible part objects under `prefix`, from their footers."""
    return sum(
        pq.read_metadata(f"{s3.bucket}/{key}", filesystem=s3.filesystem).num_rows
        for key in s3.objects(prefix)
        if key.rsplit("/", 1)[-1].startswith("part-")
    )


@pytest.mark.broker
def test_a_dataset_service_on_s3_killed_leaves_every_object_readable(
    broker: LocalBroker,
    fleet_factory: Callable[..., DeviceFleet],
    s3: S3,  # noqa: F811
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "MQTT_API_TOKEN": broker.token,
        "MQTT_BROKER_URL": broker.wss_url,
        "CA_CERT_PATH": str(broker.ca_file),
    }
    url = s3.url("telemetry")
    log = tmp_path / "service.err"
    with (tmp_path / "service.out").open("wb") as out, log.open("wb") as err:
        process = subprocess.Popen(
            [*CLI, "record", "--dataset", url, "--flush-every", "0.2s"],
            env=env,
            stdout=out,
            stderr=err,
        )
    try:
        wait_for(
            lambda: "to the dataset" in (tmp_path / "service.out").read_text(),
            timeout=30,
            message="the service did not subscribe",
        )
        fleet = fleet_factory(devices=3, qos=1, mixed_shapes=False)
        sent = fleet.publish(300)
        wait_for(lambda: _rows(s3, "telemetry") >= sent, timeout=30, message="rows not in S3")
        fleet.publish(200)  # unflushed or mid-upload when the kill lands
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    visible = [k for k in s3.objects("telemetry") if not k.rsplit("/", 1)[-1].startswith(".")]
    for key in visible:
        assert key.split("/")[1].startswith("date="), key
        pq.read_metadata(f"{s3.bucket}/{key}", filesystem=s3.filesystem)  # whole objects
    frame = load_recording(url)
    assert len(frame) >= 300  # the rows flushed before the kill are all there
    assert len(frame) == _rows(s3, "telemetry")

    inspect = subprocess.run([*CLI, "inspect", url], env=env, capture_output=True, text=True)
    assert inspect.returncode == 0, inspect.stderr
    assert f"folder:    {url} (" in inspect.stdout
    assert f"rows:      {len(frame)}" in inspect.stdout

    counted = subprocess.run(
        [*CLI, "query", url, "select count(*) as n from telemetry"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert counted.returncode == 0, counted.stderr
    assert str(len(frame)) in counted.stdout


def test_a_missing_bucket_on_the_command_line_is_one_error_line(s3: S3) -> None:  # noqa: F811
    result = subprocess.run(
        [*CLI, "inspect", "s3://no-such-bucket-here/telemetry"], capture_output=True, text=True
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: s3://no-such-bucket-here/telemetry")
    assert "does not exist" in lines[0]


@pytest.mark.broker
def test_a_collector_persists_records_and_snapshots_to_s3(
    settings: Settings,
    fleet_factory: Callable[..., DeviceFleet],
    s3: S3,  # noqa: F811
) -> None:
    base, step = time.time(), itertools.count()
    fleet = fleet_factory(
        devices=3, qos=1, mixed_shapes=False, clock=lambda: base + next(step) / 1000
    )
    collector = Collector(settings, dataset=s3.url("ds"), flush_every="0.2s", max_rows=40)
    collector.start()
    try:
        recording = collector.record(s3.url("truth.parquet"), flush_every=0.2)
        for _ in range(3):
            fleet.publish(100)
        wait_for(lambda: collector.stats.messages == 300, message="messages missing")
        history = collector.history()  # the dataset on S3 and the window, each row once
        truth = load_recording(recording.stop())
        assert len(truth) == collector.stats.rows_total
        assert collector.stats.rows_evicted > 0  # most rows are on S3 only
        assert_same_rows(history, truth)
        snapshot = collector.snapshot(s3.url("snap.parquet"))
        assert str(snapshot) == s3.url("snap.parquet")
        assert_same_rows(load_recording(snapshot), collector.frame())
    finally:
        collector.stop()
    assert_same_rows(load_recording(s3.url("ds")), truth)
    assert not (Path.cwd() / "s3:").exists()


@pytest.mark.broker
def test_a_recording_on_s3_replays_to_the_same_rows(
    broker: LocalBroker,
    settings: Settings,
    fleet_factory: Callable[..., DeviceFleet],
    s3: S3,  # noqa: F811
) -> None:
    base, step = time.time(), itertools.count()
    fleet = fleet_factory(
        devices=2, qos=1, mixed_shapes=False, clock=lambda: base + next(step) / 1000
    )
    url = s3.url("sessions/original.parquet")
    with Collector(settings, max_rows=1000) as first:
        recording = first.record(url, flush_every=0.2)
        fleet.publish(50)
        wait_for(lambda: first.stats.messages == 50, message="messages missing")
        recording.stop()
    original = load_recording(url)
    publisher = broker.publisher()
    with Collector(settings, max_rows=1000) as second:
        result = replay(
            url,
            settings=broker.settings(),
            broker_url=f"mqtt://{publisher.host}:{publisher.port}",
            username=publisher.username,
            password=publisher.password,
            max_speed=True,
            qos=1,
        )
        assert result.rows == len(original)
        wait_for(lambda: second.stats.rows_total >= len(original), message="rows missing")
        again = second.frame()
    data = ["timestamp", "device_id", "metric", "value"]
    pd.testing.assert_frame_equal(
        plain(again)[data].sort_values(data, ignore_index=True),
        plain(original)[data].sort_values(data, ignore_index=True),
    )
