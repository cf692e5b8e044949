"""The Collector against a real broker: rows, counts, Parquet, reconnects and floods."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tesaiot_data import AuthError, Collector, Settings, load_recording, load_rejects, read_metadata
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.demo.flood import fleet_packets, flood
from tesaiot_data.messages import RawMessage
from tesaiot_data.schema import COLUMNS
from tests.helpers import local, wait_for

pytestmark = pytest.mark.broker


def counts_add_up(collector: Collector) -> bool:
    """Once idle, every received message is a parsed message, a reject or a counted drop."""
    assert collector.wait_idle(10)
    s = collector.stats
    return s.pending == 0 and s.failed == 0 and s.received == s.messages + s.rejected + s.dropped


def test_start_collects_rows_with_the_canonical_dtypes(
    settings: Settings,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
) -> None:
    collector = collectors(settings).start()
    assert collector.running
    assert collector.stats.connected
    fleet = fleet_factory(devices=4, qos=1, seed=3)
    fleet.publish(200)
    wait_for(lambda: collector.stats.messages + collector.stats.rejected == 200)
    frame = collector.frame()
    assert tuple(frame.columns) == COLUMNS
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert frame["device_id"].dtype == "category"
    assert frame["value"].dtype == np.float64
    assert set(frame["device_id"].astype(str)) == set(fleet.device_ids)
    assert frame["received_at"].is_monotonic_increasing  # arrival order
    stats = collector.stats
    assert stats.received == 200
    assert stats.rows == stats.rows_total == len(frame) >= 200 - stats.rejected
    assert counts_add_up(collector)
    assert stats.last_message_at is not None


def test_filters_latest_and_a_cached_frame(
    settings: Settings,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
) -> None:
    collector = collectors(settings).start()
    fleet = fleet_factory(devices=3, qos=1, seed=4, mixed_shapes=False)
    fleet.publish(90)
    wait_for(lambda: collector.stats.rows == 90)
    device = fleet.device_ids[0]
    one = collector.frame(devices=device, metrics=["temperature"])
    assert set(one["device_id"].astype(str)) == {device}
    assert set(one["metric"].astype(str)) == {"temperature"}
    everything = collector.frame()
    expected = everything[
        (everything["device_id"] == device) & (everything["metric"] == "temperature")
    ]
    assert one["value"].tolist() == expected["value"].tolist()
    assert collector.frame(since="1h").shape == everything.shape
    assert collector.frame(since=pd.Timestamp.now(tz="UTC") + pd.Timedelta("1min")).empty

    latest = collector.latest()
    assert len(latest) == 3 * 5  # every device sent all five sensors
    for row in latest.itertuples():
        rows = everything[
            (everything["device_id"] == row.device_id) & (everything["metric"] == row.metric)
        ]
        assert row.value == rows["value"].iloc[-1]
    assert (latest["age_s"] >= 0).all()


def test_malformed_messages_become_counted_rejects_with_their_payload(
    settings: Settings,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
) -> None:
    collector = collectors(settings).start()
    fleet = fleet_factory(devices=2, qos=1, seed=5, malformed=0.3)
    fleet.publish(300)
    wait_for(lambda: collector.stats.messages + collector.stats.rejected == 300)
    stats = collector.stats
    assert stats.rejected == fleet.malformed_published > 0
    assert sum(stats.rejects_by_reason.values()) == stats.rejected
    rejects = collector.rejects()
    assert len(rejects) == stats.rejected
    assert set(rejects["reason"].astype(str)) == set(stats.rejects_by_reason)
    assert all(isinstance(p, bytes) for p in rejects["payload"])
    assert counts_add_up(collector)


def test_wrong_token_fails_start_with_auth_error(broker: LocalBroker) -> None:
    collector = Collector(broker.settings(token="tesa_mqtt_demo_" + "Z" * 32))
    with pytest.raises(AuthError):
        collector.start()
    assert not collector.running
    collector.stop()  # harmless


def test_max_rows_bounds_the_window_and_evicts_the_oldest(
    settings: Settings,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
) -> None:
    collector = collectors(settings, max_rows=100).start()
    fleet = fleet_factory(devices=2, qos=1, mixed_shapes=False)
    fleet.publish(350)
    wait_for(lambda: collector.stats.rows_total == 350)
    stats = collector.stats
    assert stats.rows == 100
    assert stats.rows_evicted == 250
    assert collector.frame()["received_at"].is_monotonic_increasing


def test_snapshot_writes_the_window_and_reads_back_equal(
    settings: Settings,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
    tmp_path: Path,
) -> None:
    collector = collectors(settings).start()
    fleet_factory(devices=3, qos=1).publish(120)
    wait_for(lambda: collector.stats.messages + collector.stats.rejected == 120)
    frame = collector.frame()
    path = local(collector.snapshot(tmp_path / "snap.parquet"))
    back = load_recording(path)
    pd.testing.assert_frame_equal(
        back.astype({c: str for c in ("device_id", "sensor_type", "metric", "unit", "value_text")}),
        frame.astype(
            {c: str for c in ("device_id", "sensor_type", "metric", "unit", "value_text")}
        ),
    )
    meta = read_metadata(path)
    assert meta["rows"] == str(len(frame))
    assert meta["topic"] == "device/+/telemetry/#"
    assert settings.token not in path.read_bytes().decode("latin-1")


def test_recording_keeps_every_row_beyond_the_window_and_the_rejects(
    settings: Settings,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
    tmp_path: Path,
) -> None:
    collector = collectors(settings, max_rows=50).start()
    fleet = fleet_factory(devices=3, qos=1, seed=8, mixed_shapes=False, malformed=0.1)
    fleet.publish(20)  # before the recording: not in it
    wait_for(lambda: collector.stats.messages + collector.stats.rejected == 20)
    rows_before, rejects_before = collector.stats.rows_total, collector.stats.rejected
    with collector.record(tmp_path / "session.parquet", flush_every=0.2) as recording:
        fleet.publish(400)
        wait_for(lambda: collector.stats.messages + collector.stats.rejected == 420)
    path = recording.stop()
    assert not recording.active
    frame = load_recording(path)
    assert len(frame) == recording.rows == collector.stats.rows_total - rows_before
    assert recording.rows > 50  # more than the window holds
    rejects = load_rejects(path)
    assert len(rejects) == recording.rejects == collector.stats.rejected - rejects_before
    assert recording.rows + recording.rejects == 400  # one row per well-formed message
    assert not Path(f"{path}.parts").exists()


def test_auto_persist_writes_every_row_exactly_once(
    settings: Settings,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
    tmp_path: Path,
) -> None:
    root = tmp_path / "dataset"
    collector = collectors(settings, dataset=root, flush_every="0.2s", max_rows=30).start()
    fleet = fleet_factory(devices=2, qos=1, seed=9)
    for _ in range(3):
        fleet.publish(100)
        wait_for(lambda: list(root.rglob("part-*.parquet")), message="no part written")
    wait_for(lambda: collector.stats.messages + collector.stats.rejected == 300)
    collector.stop()
    rows_total = collector.stats.rows_total
    assert len(list(root.rglob("part-*.parquet"))) >= 2
    assert len(load_recording(root)) == rows_total
    assert ds.dataset(root, partitioning="hive").count_rows() == rows_total


def test_frame_in_a_tight_loop_from_another_thread_while_ingesting(
    broker: LocalBroker, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(broker.settings(qos=0), max_rows=20_000).start()
    errors: list[BaseException] = []
    stop = threading.Event()
    frames = 0

    def read() -> None:
        nonlocal frames
        try:
            while not stop.is_set():
                frame = collector.frame()
                frames += 1
                assert list(frame.columns) == list(COLUMNS)
                assert not frame["device_id"].isna().any()
                assert frame["received_at"].is_monotonic_increasing
                # Without this a loop of cached frame() calls holds the GIL in 5 ms slices and
                # paho's thread, which gives it up at every socket call, crawls (a GIL convoy).
                time.sleep(0)
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    fleet = DeviceFleet(broker.publisher(), devices=20, mixed_shapes=False, seed=10)
    flood(broker.publisher(), fleet_packets(fleet, 30_000))
    wait_for(lambda: collector.stats.received == 30_000, timeout=30)
    assert collector.wait_idle(30)
    stop.set()
    reader.join()
    assert not errors, repr(errors[0])
    assert frames > 1
    assert collector.stats.rows == 20_000


@pytest.mark.slow
def test_a_flood_of_200k_messages_stays_bounded_and_counts_add_up(
    broker: LocalBroker, collectors: Callable[..., Collector]
) -> None:
    collector = collectors(broker.settings(qos=0), max_rows=50_000, window=None).start()
    fleet = DeviceFleet(broker.publisher(), devices=50, seed=11, malformed=0.01)
    flood(broker.publisher(), fleet_packets(fleet, 200_000))
    wait_for(lambda: collector.stats.received == 200_000, timeout=120, message="messages missing")
    assert collector.wait_idle(60)
    stats = collector.stats
    assert stats.messages + stats.rejected + stats.dropped == 200_000
    assert counts_add_up(collector)
    assert stats.rejected == fleet.malformed_published
    assert stats.rows == 50_000
    assert stats.rows_evicted == stats.rows_total - 50_000
    assert collector.memory_bytes <= 50_000 * 48  # bytes per row held, with the unsealed tail


def test_broker_restart_mid_stream_loses_nothing_with_a_persistent_session(
    fresh_broker: LocalBroker,
    collectors: Callable[..., Collector],
    fleet_factory: Callable[..., DeviceFleet],
) -> None:
    settings = fresh_broker.settings(client_id="collector-persistent", clean_session=False, qos=1)
    collector = collectors(settings).start()
    fleet = fleet_factory(fresh_broker, devices=3, qos=1, rate=200, mixed_shapes=False, seed=12)
    fleet.start()
    wait_for(lambda: collector.stats.rows > 100)
    fresh_broker.restart()
    wait_for(lambda: collector.stats.reconnects == 1, timeout=20, message="no reconnect")
    wait_for(lambda: collector.stats.rows > fleet.published // 2 + 100, timeout=10)
    fleet.stop()  # waits until the broker acknowledged every QoS 1 message
    published = fleet.published

    def unique() -> int:
        return len(collector.frame().drop_duplicates(["device_id", "metric", "timestamp", "value"]))

    wait_for(lambda: unique() == published, timeout=20, message="messages were lost")
    assert counts_add_up(collector)


def test_a_recording_killed_with_sigkill_keeps_what_it_flushed(
    broker: LocalBroker, fleet_factory: Callable[..., DeviceFleet], tmp_path: Path
) -> None:
    out = tmp_path / "crash.parquet"
    env = {
        **os.environ,
        "MQTT_API_TOKEN": broker.token,
        "MQTT_BROKER_URL": broker.settings().broker_url,
        "CA_CERT_PATH": str(broker.ca_file),
    }
    command = [
        sys.executable,
        "-m",
        "tesaiot_data.cli",
        "record",
        "--out",
        str(out),
        "--flush-every",
        "0.3s",
    ]
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        fleet = fleet_factory(devices=2, rate=500, mixed_shapes=False).start()
        parts = out.parent / f"{out.name}.parts"
        wait_for(
            lambda: len(list(parts.glob("part-*.parquet"))) >= 2, timeout=30, message="no flush"
        )
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    fleet.stop()
    flushed = load_recording(out)  # the file was never written: the parts are read
    assert len(flushed) > 0
    assert not out.exists()
    assert flushed["received_at"].is_monotonic_increasing


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.text(max_size=40), st.just("device/d/telemetry/t")),
            st.one_of(st.binary(max_size=200), st.just(b'{"value": 1}')),
        ),
        max_size=30,
    )
)
def test_the_batch_path_never_raises_and_accounts_for_every_message(
    messages: list[tuple[str, bytes]],
) -> None:
    settings = Settings(token="tesa_mqtt_demo_" + "H" * 32, broker_url="mqtt://127.0.0.1:1")
    collector = Collector(settings, max_rows=1_000, window=None)
    collector.ingest(
        [RawMessage(topic, payload, 1_765_276_245 * 10**9) for topic, payload in messages]
    )
    stats = collector.stats
    assert stats.messages + stats.rejected == len(messages)
    assert len(collector.frame()) == stats.rows_total
