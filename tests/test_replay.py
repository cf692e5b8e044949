"""Replaying recordings to a real broker: rows round-trip, pace, filters, CLI and demo."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tesaiot_data import demo, load_recording
from tesaiot_data.cli import main
from tesaiot_data.collector.collector import Collector
from tesaiot_data.demo.broker import LocalBroker, PublisherConfig, free_port
from tesaiot_data.errors import AuthError, ConfigError, ConnectError, NotARecordingError
from tesaiot_data.files.parquet import write_frame
from tesaiot_data.messages import RawMessage
from tesaiot_data.parse.encode import MAX_TOPIC_BYTES, SKIP_REASONS, MessagePlan
from tesaiot_data.parse.rows import parse_batch
from tesaiot_data.replay import Replayer, ReplayResult, messages_of, replay
from tesaiot_data.schema import to_canonical
from tesaiot_data.settings import Settings
from tests.helpers import new_paho_client, wait_for

pytestmark = pytest.mark.broker

ROW_COLUMNS = ["timestamp", "device_id", "sensor_type", "metric", "value", "unit", "value_text"]
T0 = pd.Timestamp("2025-12-09T10:30:45.123456789Z").value


def tcp_url(publisher: PublisherConfig) -> str:
    return f"mqtt://{publisher.host}:{publisher.port}"


def as_publisher(broker: LocalBroker) -> dict[str, Any]:
    """replay() keywords that publish as the broker's publisher account over plain MQTT."""
    publisher = broker.publisher()
    return {
        "settings": broker.settings(),
        "broker_url": tcp_url(publisher),
        "username": publisher.username,
        "password": publisher.password,
    }


def rows_of(frame: pd.DataFrame, devices: set[str] | None = None) -> pd.DataFrame:
    """The data columns, as plain objects, in one order: comparable across recordings."""
    if devices is not None:
        frame = frame[frame["device_id"].isin(devices)]
    out = frame[ROW_COLUMNS].astype(
        {name: object for name in ROW_COLUMNS if name not in ("timestamp", "value")}
    )
    return out.sort_values(ROW_COLUMNS, na_position="first").reset_index(drop=True)


def synthetic(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A canonical frame of rows given as dicts (timestamp/received_at in epoch ns)."""
    frame = pd.DataFrame(rows)
    for name in ("timestamp", "received_at"):
        frame[name] = pd.to_datetime(frame[name], unit="ns", utc=True)
    for name in ("unit", "value_text"):
        if name not in frame:
            frame[name] = None
    return to_canonical(frame)


def spaced(devices: list[str], *, step_ns: int, count: int) -> pd.DataFrame:
    """`count` flat two-metric messages per device, `step_ns` apart in both times."""
    rows = []
    for index in range(count):
        for device in devices:
            for metric, value in (("temperature", 20.0 + index), ("humidity", 50.5)):
                rows.append(
                    {
                        "timestamp": T0 + index * step_ns,
                        "received_at": T0 + 1_000 + index * step_ns,
                        "device_id": device,
                        "sensor_type": "env",
                        "metric": metric,
                        "value": value,
                        "unit": "celsius" if metric == "temperature" else "percent",
                    }
                )
    return synthetic(rows)


class Capture:
    """A collector recording to a file, on the session broker."""

    def __init__(self, collector: Collector, path: Path) -> None:
        self.collector = collector.start()
        self.recording = collector.record(path)

    def stop_when(self, rows: int) -> pd.DataFrame:
        wait_for(lambda: self.recording.rows >= rows, message=f"fewer than {rows} rows arrived")
        return load_recording(self.recording.stop())


@pytest.fixture
def capture(
    settings: Settings, collectors: Callable[..., Collector], tmp_path: Path
) -> Callable[[str], Capture]:
    def make(name: str) -> Capture:
        return Capture(
            collectors(settings.replace(client_id=f"cap-{name}-{uuid.uuid4().hex[:6]}")),
            tmp_path / f"{name}.parquet",
        )

    return make


def publish_raw(broker: LocalBroker, messages: list[tuple[str, bytes]]) -> None:
    """Publish as a device would, QoS 1, and wait for every acknowledgement."""
    publisher = broker.publisher()
    client = new_paho_client(f"dev-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(publisher.username, publisher.password)
    client.connect(publisher.host, publisher.port, keepalive=30)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def device_messages(a: str, b: str) -> list[tuple[str, bytes]]:
    """Payload shapes from the platform and odd ones: every way the parser makes rows."""
    return [
        (
            f"device/{a}/telemetry/temperature",
            b'{"value": 25.5, "unit": "celsius", "timestamp": "2025-12-09T10:30:45.123456789Z"}',
        ),
        (
            f"device/{a}/telemetry/env",
            b'{"timestamp": 1765276245123, "temperature": 25.1, "humidity": 60, '
            b'"ai_prediction": "normal"}',
        ),
        (
            f"device/{a}/telemetry",
            b'{"timestamp": 1765276245123, "sensor_type": "DPS368", '
            b'"data": {"pressure": 1013.2, "accel": {"x": 1, "y": true}}}',
        ),
        (f"device/{b}/telemetry/x", b'{"value": NaN, "unit": "u", "timestamp": 1765276245.5}'),
        (
            f"device/{b}/telemetry/x",
            b'{"value": -Infinity, "data": {"data": {"value": 3, "unit": "m"}, "unit": "k"}, '
            b'"t2": {"value": -1e300, "unit": "q"}, "timestamp": "2025-12-09T10:30:46Z"}',
        ),
        (f"device/{b}/telemetry/unit", b'{"value": 5, "unit": "V", "other": 2, "ts": 1765276247}'),
        (
            f"device/{b}/telemetry/a/b",
            b'[{"ts": 1765276248, "v": 1}, {"ts": 1765276249, "v": "t\\u00e9xt \\"q\\""}, '
            b'{"ts": 1765276249, "w": 3}]',
        ),
        (f"device/{b}/telemetry", b'{"sensor_type": "a+b", "x": 1, "value": 2, "time": 1.7e9}'),
        (
            f"device/{b}/telemetry/s",
            b'{"timestamp": "1999-12-31T23:59:59.5+07:00", "list": [1, 2, {"k": "v"}]}',
        ),
        (f"device/{b}/telemetry/s", b'"just text"'),
    ]


# --- payloads, without a broker -----------------------------------------------------------


def test_messages_of_give_back_every_row_when_parsed() -> None:
    messages = device_messages("a", "b")
    batch = parse_batch(
        [RawMessage(t, p, T0 + i * 1_000_000, False) for i, (t, p) in enumerate(messages)]
    )
    original = batch_frame(batch)
    again = list(messages_of(original))
    replayed = parse_batch([RawMessage(m.topic, m.payload, m.received_ns, False) for m in again])
    assert not replayed.rejects
    assert sum(m.rows for m in again) == len(original)
    pd.testing.assert_frame_equal(rows_of(batch_frame(replayed)), rows_of(original))
    # one recorded message, one replayed message, except the array (3 elements, 2 stamps)
    assert len(again) == len(messages) + 1


def batch_frame(batch: Any) -> pd.DataFrame:
    return synthetic(
        [
            {
                "timestamp": batch.timestamp_ns[i],
                "received_at": batch.received_ns[i],
                "device_id": batch.device_id[i],
                "sensor_type": batch.sensor_type[i],
                "metric": batch.metric[i],
                "value": batch.value[i],
                "unit": batch.unit[i],
                "value_text": batch.value_text[i],
            }
            for i in range(len(batch.metric))
        ]
    )


def test_rows_no_payload_can_carry_are_counted_not_sent_wrongly(
    broker: LocalBroker, tmp_path: Path
) -> None:
    base = {"timestamp": T0, "received_at": T0, "sensor_type": "s"}
    frame = synthetic(
        [
            {**base, "device_id": "d", "metric": "unit", "value": 1.0},  # a reserved key
            {**base, "device_id": "d", "metric": "ok", "value": 2.0},
            {**base, "device_id": "d/e", "metric": "ok", "value": 3.0},  # no topic level
        ]
    )
    plan_messages = list(messages_of(frame))
    assert [(m.topic, m.rows) for m in plan_messages] == [("device/d/telemetry/s", 1)]
    path = write_frame(frame, tmp_path / "odd.parquet")
    result = replay(path, max_speed=True, **as_publisher(broker))
    assert (result.messages, result.rows, result.skipped_rows) == (1, 1, 2)
    assert result.skipped_by_reason == {"reserved_metric": 1, "wildcard_or_slash": 1}


def test_bad_options_and_files_fail_before_connecting(tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("timestamp,value\n1,2\n")
    with pytest.raises(NotARecordingError):
        replay(csv, broker_url="mqtt://127.0.0.1:1")
    with pytest.raises(FileNotFoundError):
        replay(tmp_path / "missing.parquet", broker_url="mqtt://127.0.0.1:1")
    with pytest.raises(ConfigError):
        Replayer(csv, speed=0)
    with pytest.raises(ConfigError):
        Replayer(csv, qos=3)


# --- against the broker -------------------------------------------------------------------


def test_record_replay_record_gives_the_same_rows(
    broker: LocalBroker, settings: Settings, capture: Callable[[str], Capture]
) -> None:
    a, b = f"rt-{uuid.uuid4().hex[:8]}", f"rt-{uuid.uuid4().hex[:8]}"
    messages = device_messages(a, b)
    first = capture("first")
    publish_raw(broker, messages)
    expected_rows = len(
        batch_frame(parse_batch([RawMessage(t, p, T0, False) for t, p in messages]))
    )
    original = first.stop_when(expected_rows)
    assert len(original) == expected_rows

    second = capture("second")
    # Over WSS with TLS verified against the broker's CA, as the collector connects.
    publisher = broker.publisher()
    result = replay(
        first.recording.path,
        settings=settings,
        username=publisher.username,
        password=publisher.password,
        max_speed=True,
        qos=1,
    )
    assert result.rows == expected_rows
    assert result.skipped_rows == 0
    assert result.messages == len(messages) + 1
    again = second.stop_when(expected_rows)
    pd.testing.assert_frame_equal(rows_of(again, {a, b}), rows_of(original, {a, b}))


def test_speed_divides_the_recorded_spacing(
    broker: LocalBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_frame(spaced(["speed-a"], step_ns=100_000_000, count=21), tmp_path / "s.parquet")
    started = time.monotonic()
    result = replay(path, speed=10, qos=1, progress=True, **as_publisher(broker))
    elapsed = time.monotonic() - started
    assert result.span == pytest.approx(2.0)
    assert result.messages == 21
    # The last message is due 2 s / 10 after the first: never earlier (timing noise only
    # makes it later); the upper bound is loose, and still well under the unscaled 2 s.
    assert result.seconds >= result.span / 10
    assert elapsed < 1.5, f"took {elapsed:.2f} s (recorded span 2 s at speed 10)"
    assert "replay: 42/42 rows" in capsys.readouterr().err


def test_max_speed_ignores_the_recorded_pace(broker: LocalBroker, tmp_path: Path) -> None:
    hour = write_frame(spaced(["max-a"], step_ns=60 * 10**9, count=61), tmp_path / "h.parquet")
    result = replay(hour, max_speed=True, qos=1, **as_publisher(broker))
    assert result.span == pytest.approx(3600.0)
    assert result.speed is None
    assert result.messages == 61
    assert result.seconds < 10


def test_devices_and_metrics_filter_what_is_sent(
    broker: LocalBroker, tmp_path: Path, capture: Callable[[str], Capture]
) -> None:
    a, b = f"f-{uuid.uuid4().hex[:8]}", f"f-{uuid.uuid4().hex[:8]}"
    path = write_frame(spaced([a, b], step_ns=10**6, count=5), tmp_path / "f.parquet")
    received = capture("filtered")
    result = replay(
        path, max_speed=True, qos=1, devices=[a], metrics=["humidity"], **as_publisher(broker)
    )
    assert (result.rows, result.messages) == (5, 5)
    frame = received.stop_when(5)
    frame = frame[frame["device_id"].isin({a, b})]
    assert set(frame["device_id"]) == {a}
    assert set(frame["metric"]) == {"humidity"}
    assert len(frame) == 5


def test_shift_to_now_moves_timestamps_and_keeps_their_spacing(
    broker: LocalBroker, tmp_path: Path, capture: Callable[[str], Capture]
) -> None:
    device = f"shift-{uuid.uuid4().hex[:8]}"
    original = spaced([device], step_ns=1_500_000_123, count=4)
    path = write_frame(original, tmp_path / "old.parquet")
    received = capture("shifted")
    before = time.time_ns()
    replay(path, max_speed=True, qos=1, shift_to_now=True, **as_publisher(broker))
    after = time.time_ns()
    frame = received.stop_when(8)
    frame = frame[frame["device_id"] == device]
    stamps = np.sort(frame["timestamp"].array.asi8)
    old = np.sort(original["timestamp"].array.asi8)
    assert before <= stamps[0] <= after
    np.testing.assert_array_equal(stamps - stamps[0], old - old[0])


def test_refused_credentials_and_closed_ports_are_typed_errors(
    broker: LocalBroker, tmp_path: Path
) -> None:
    path = write_frame(spaced(["err"], step_ns=10**6, count=1), tmp_path / "e.parquet")
    publisher = broker.publisher()
    token = broker.settings()
    with pytest.raises(AuthError, match="refused the account publisher"):
        replay(path, settings=token, broker_url=tcp_url(publisher), username="publisher",
               password="wrong")  # fmt: skip
    with pytest.raises(ConnectError, match="refused the connection"):
        replay(path, settings=token, broker_url=f"mqtt://127.0.0.1:{free_port()}")


def test_a_background_replay_stops_when_asked(broker: LocalBroker, tmp_path: Path) -> None:
    hour = write_frame(spaced(["bg"], step_ns=10**9, count=3600), tmp_path / "long.parquet")
    replayer = Replayer(hour, **as_publisher(broker)).start()
    assert replayer.running
    result = replayer.stop()
    assert isinstance(result, ReplayResult)
    assert result.stopped
    assert result.messages < 3600
    assert not replayer.running


def test_cli_replays_and_prints_a_summary(
    broker: LocalBroker,
    tmp_path: Path,
    capture: Callable[[str], Capture],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    device = f"cli-{uuid.uuid4().hex[:8]}"
    path = write_frame(spaced([device], step_ns=10**6, count=3), tmp_path / "c.parquet")
    publisher = broker.publisher()
    monkeypatch.setenv("MQTT_API_TOKEN", broker.token)
    monkeypatch.setenv("MQTT_PASSWORD", publisher.password)
    received = capture("cli")
    out = io.StringIO()
    argv = ["replay", str(path), "--broker-url", tcp_url(publisher), "--username", "publisher"]
    code = main([*argv, "--max-speed", "--qos", "1", "--env-file", str(tmp_path / "none")], out=out)
    assert code == 0
    assert out.getvalue().startswith("replayed 6 rows in 3 messages to mqtt://")
    assert len(received.stop_when(6).query("device_id == @device")) == 6

    code = main(["replay", str(tmp_path / "missing.parquet"), "--broker-url", tcp_url(publisher)])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: no recording at")


def test_demo_replays_a_recording_to_a_collector(
    tmp_path: Path, collectors: Callable[..., Collector]
) -> None:
    device = f"demo-{uuid.uuid4().hex[:8]}"
    original = spaced([device], step_ns=100_000_000, count=5)
    path = write_frame(original, tmp_path / "yesterday.parquet")
    settings = demo.start(replay=path, speed=10, shift_to_now=False)
    try:
        environment = demo.current()
        assert environment is not None
        assert environment.fleet is None
        replayer = environment.replayer
        assert replayer is not None
        assert replayer.running
        collector = collectors(settings).start()
        want = set(map(tuple, rows_of(original).itertuples(index=False)))

        def all_rows_arrived() -> bool:
            got = set(map(tuple, rows_of(collector.frame()).itertuples(index=False)))
            return want <= got

        # The replay loops, so the whole recording arrives whenever the collector joined.
        wait_for(all_rows_arrived, message="the replayed rows did not all arrive")
    finally:
        demo.stop()
    assert demo.current() is None
    assert not replayer.running


def test_an_account_publishes_without_a_platform_token(
    broker: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MQTT_API_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    hour = write_frame(spaced(["acct-a"], step_ns=60 * 10**9, count=3), tmp_path / "h.parquet")
    publisher = broker.publisher()
    result = replay(
        hour,
        max_speed=True,
        qos=1,
        broker_url=tcp_url(publisher),
        username=publisher.username,
        password=publisher.password,
    )
    assert result.messages == 3


def test_cli_says_so_when_the_account_may_not_publish(
    broker: LocalBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_frame(spaced(["ro-a"], step_ns=10**6, count=50), tmp_path / "r.parquet")
    monkeypatch.delenv("MQTT_API_TOKEN", raising=False)
    monkeypatch.delenv("MQTT_PASSWORD", raising=False)
    # The demo broker's token, like the platform's, may only read.
    argv = ["replay", str(path), "--broker-url", broker.wss_url, "--ca-certs", str(broker.ca_file)]
    monkeypatch.setenv("MQTT_API_TOKEN", broker.token)
    code = main([*argv, "--max-speed", "--env-file", str(tmp_path / "none")], out=io.StringIO())
    assert code == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ")
    assert "--username" in error


def test_cli_publishes_as_an_account_without_a_platform_token(
    broker: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_frame(spaced(["acct-cli"], step_ns=10**6, count=3), tmp_path / "a.parquet")
    publisher = broker.publisher()
    monkeypatch.delenv("MQTT_API_TOKEN", raising=False)
    monkeypatch.setenv("MQTT_PASSWORD", publisher.password)
    out = io.StringIO()
    argv = ["replay", str(path), "--broker-url", tcp_url(publisher), "--username", "publisher"]
    code = main([*argv, "--max-speed", "--qos", "1", "--env-file", str(tmp_path / "none")], out=out)
    assert code == 0, out.getvalue()
    assert out.getvalue().startswith("replayed 6 rows in 3 messages")


# Device ids no broker takes in a topic, by the reason the replay counts them under.
REFUSED_DEVICE_IDS = {
    "control_character": ["ctl\x01", "del\x7f", "c1\x85", "nul\x00", "tab\t"],
    "non_character": ["nc\uffff", "nc\ufdd0", "nc\ufdef", "nc\U0001fffe", "nc\U0010ffff"],
    # 65,536 bytes; and 32,760 characters that are 65,520 bytes of UTF-8, 65,537 as a topic
    "topic_too_long": ["x" * 65_536, "\u00e9" * 32_760],
    "wildcard_or_slash": ["a+b", "a#", "a/b"],
}
# Sensor types no broker takes in a topic: they travel in the payload and come back.
ODD_SENSOR_TYPES = ["env", "s\x01t", "s\uffff", "L" * 65_600]


def refused_among_good(tag: str) -> tuple[pd.DataFrame, set[str], dict[str, int]]:
    """100 one-row messages: every 4th from a device id no topic can hold."""
    refused = [(why, f"{tag}{device}") for why, ids in REFUSED_DEVICE_IDS.items() for device in ids]
    # The second good device's topic is exactly 65,535 bytes: the longest a broker takes.
    good = [f"good-{tag}", f"edge-{tag}".ljust(65_535 - len("device//telemetry"), "y")]
    rows, expected = [], dict.fromkeys(REFUSED_DEVICE_IDS, 0)
    for i in range(100):
        if i % 4 == 0:
            why, device = refused[(i // 4) % len(refused)]
            expected[why] += 1
        else:
            device = good[i % 2]
        rows.append(
            {
                "timestamp": T0 + i,
                "received_at": T0 + i * 1_000,
                "device_id": device,
                "sensor_type": ODD_SENSOR_TYPES[(i // 4) % len(ODD_SENSOR_TYPES)],
                "metric": "temperature",
                "value": float(i),
            }
        )
    return synthetic(rows), set(good), expected


def test_device_ids_no_topic_can_hold_are_skipped_by_reason_and_the_rest_arrive(
    broker: LocalBroker,
    tmp_path: Path,
    collectors: Callable[..., Collector],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frame, good, expected = refused_among_good(uuid.uuid4().hex[:8])
    path = write_frame(frame, tmp_path / "odd-names.parquet")
    sent = rows_of(frame, good)
    assert len(sent) == 75

    def capture(name: str) -> Capture:
        # Over TCP: Mosquitto's WebSocket listener sends a 64 KiB message at ~40 KB/s.
        url = f"mqtt://127.0.0.1:{broker.tcp_port}"
        settings = broker.settings(broker_url=url, ca_certs=None, client_id=f"cap-{name}")
        return Capture(collectors(settings), tmp_path / f"{name}.parquet")

    def arrived(received: Capture) -> pd.DataFrame:
        return rows_of(received.collector.frame(devices=sorted(good)))

    # QoS 1: each refused topic would close the connection and stall the drain for 30 s.
    first = capture(f"odd-qos1-{uuid.uuid4().hex[:6]}")
    result = replay(path, max_speed=True, qos=1, **as_publisher(broker))
    assert result.skipped_by_reason == expected
    assert (result.rows, result.messages, result.skipped_rows, result.dropped) == (75, 75, 25, 0)
    assert result.seconds < 10
    wait_for(lambda: len(arrived(first)) == 75, message="the good rows did not all arrive")
    pd.testing.assert_frame_equal(arrived(first), sent)

    # QoS 0 from the command line: the summary counts what was sent, and all of it arrives.
    publisher = broker.publisher()
    monkeypatch.setenv("MQTT_API_TOKEN", broker.token)
    monkeypatch.setenv("MQTT_PASSWORD", publisher.password)
    second = capture(f"odd-qos0-{uuid.uuid4().hex[:6]}")
    out = io.StringIO()
    argv = ["replay", str(path), "--broker-url", tcp_url(publisher), "--username", "publisher"]
    code = main([*argv, "--max-speed", "--qos", "0", "--env-file", str(tmp_path / "none")], out=out)
    assert code == 0, out.getvalue()
    assert out.getvalue().startswith("replayed 75 rows in 75 messages")
    assert "25 rows skipped" in out.getvalue()
    wait_for(lambda: len(arrived(second)) == 75, message="the good rows did not all arrive")
    pd.testing.assert_frame_equal(arrived(second), sent)


def test_odd_topic_levels_are_classified_without_a_broker() -> None:
    frame, good, expected = refused_among_good("t")
    skipped: dict[str, int] = {}
    messages = list(MessagePlan(frame).messages(skipped=skipped))
    assert skipped == expected
    assert all(len(m.topic.encode()) <= MAX_TOPIC_BYTES for m in messages)
    assert set(skipped) <= set(SKIP_REASONS)
    again = parse_batch([RawMessage(m.topic, m.payload, m.received_ns, False) for m in messages])
    assert not again.rejects
    pd.testing.assert_frame_equal(rows_of(batch_frame(again)), rows_of(frame, good))


@pytest.mark.parametrize(
    ("qos", "how"), [(0, "written to the connection"), (1, "acknowledged by the broker")]
)
def test_cli_summary_names_each_skip_reason_and_counts_what_was_delivered(
    broker: LocalBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    qos: int,
    how: str,
) -> None:
    frame, _good, expected = refused_among_good(uuid.uuid4().hex[:8])
    path = write_frame(frame, tmp_path / "odd-names.parquet")
    publisher = broker.publisher()
    monkeypatch.setenv("MQTT_API_TOKEN", broker.token)
    monkeypatch.setenv("MQTT_PASSWORD", publisher.password)
    out = io.StringIO()
    argv = ["replay", str(path), "--broker-url", tcp_url(publisher), "--username", "publisher"]
    options = ["--max-speed", "--qos", str(qos), "--env-file", str(tmp_path / "none")]
    assert main([*argv, *options], out=out) == 0, out.getvalue()
    line = out.getvalue().strip()
    assert line.startswith("replayed 75 rows in 75 messages to ")
    assert f" s; {how}); " in line
    reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(expected.items()))
    assert f"; 25 rows skipped ({reasons}), 0 messages dropped" in line
