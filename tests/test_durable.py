"""Acknowledgement after the disk: the durable inbox, and a service SIGKILLed that loses nothing.

The inbox's own rules are tested on real files (torn tails, releases, the lock); the
service is the real `tesaiot-data record --dataset` in a subprocess against a real
Mosquitto, killed with SIGKILL under a QoS 1 stream and started again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tesaiot_data import ConfigError, load_recording
from tesaiot_data.collector.durability import inbox_folder
from tesaiot_data.demo.broker import LocalBroker, PublisherConfig
from tesaiot_data.messages import RawMessage
from tesaiot_data.mqtt._paho import PAHO_V2
from tesaiot_data.mqtt.inbox import AckAfterDisk, DurableInbox
from tests.helpers import new_paho_client, wait_for

CLI = [sys.executable, "-m", "tesaiot_data.cli"]
START_MS = 1_765_000_000_000  # device time of reading 0; reading n is n ms later


def message(n: int) -> RawMessage:
    return RawMessage(f"device/d{n % 3}/telemetry/t", b'{"value": %d}' % n, 1_000 + n, n % 5 == 0)


def values(messages: list[RawMessage]) -> list[int]:
    return [int(json.loads(m.payload)["value"]) for m in messages]


def recovered(folder: Path) -> list[RawMessage]:
    inbox = DurableInbox(folder)
    try:
        return [m for _, batch in inbox.recover() for m in batch]
    finally:
        inbox.close()


# --- the inbox on real files -------------------------------------------------------------


def test_what_was_appended_and_not_released_comes_back_in_order_with_every_field(
    tmp_path: Path,
) -> None:
    inbox = DurableInbox(tmp_path)
    assert inbox.next_seq == 1
    assert inbox.append([message(n) for n in range(5)]) == 5
    assert inbox.append([message(n) for n in range(5, 12)]) == 12
    inbox.release(4)  # rows 1..4 are in a Parquet part
    inbox.close()
    back = recovered(tmp_path)
    assert back == [message(n) for n in range(4, 12)]  # topic, payload, time, retain
    again = DurableInbox(tmp_path)
    list(again.recover())
    assert again.next_seq == 13  # numbers go on, never reused
    again.close()


def test_a_record_cut_short_by_a_crash_ends_the_log_and_is_cut_off(tmp_path: Path) -> None:
    inbox = DurableInbox(tmp_path)
    inbox.append([message(n) for n in range(3)])
    inbox.close()
    (segment,) = tmp_path.glob("*.seg")
    whole = segment.stat().st_size
    with segment.open("ab") as file:  # half a record: written, never fsynced nor acked
        file.write(b"\x40\x00\x00\x00\x01\x02")
    assert values(recovered(tmp_path)) == [0, 1, 2]
    assert segment.stat().st_size == whole  # cut, so the next append follows the good ones


def test_a_record_whose_checksum_does_not_match_ends_its_segment(tmp_path: Path) -> None:
    inbox = DurableInbox(tmp_path)
    inbox.append([message(n) for n in range(3)])
    inbox.close()
    (segment,) = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    data[-2] ^= 0xFF  # a flipped byte in the last record's payload
    segment.write_bytes(bytes(data))
    assert values(recovered(tmp_path)) == [0, 1]


def test_a_release_deletes_whole_segments_only_and_is_kept_across_a_restart(
    tmp_path: Path,
) -> None:
    inbox = DurableInbox(tmp_path)
    inbox.append([message(0)])
    inbox.release(1)  # the only segment is all released: gone
    assert list(tmp_path.glob("*.seg")) == []
    inbox.append([message(1), message(2)])
    inbox.release(2)  # half of the new segment: it stays, the mark says where
    assert len(list(tmp_path.glob("*.seg"))) == 1
    inbox.close()
    assert values(recovered(tmp_path)) == [2]
    assert (tmp_path / "released").read_text() == "2"


def test_a_segment_released_before_a_crash_is_deleted_at_recovery(tmp_path: Path) -> None:
    inbox = DurableInbox(tmp_path)
    inbox.append([message(0), message(1)])
    inbox.release(2)  # the segment is all released, then the process dies ...
    inbox.append([message(2)])
    inbox.close()
    (tmp_path / "released").write_text("3")  # ... after its last rows were released too
    assert recovered(tmp_path) == []
    assert list(tmp_path.glob("*.seg")) == []


def test_a_second_process_cannot_open_the_same_inbox(tmp_path: Path) -> None:
    first = DurableInbox(tmp_path)
    code = (
        "import sys\n"
        "from tesaiot_data.mqtt.inbox import DurableInbox\n"
        "from tesaiot_data.errors import ConfigError\n"
        "try:\n"
        f"    DurableInbox({str(tmp_path)!r})\n"
        "except ConfigError as exc:\n"
        "    print(exc.hint); sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    assert "MQTT_CLIENT_ID" in done.stdout
    first.close()
    DurableInbox(tmp_path).close()  # free again once closed


def test_an_inbox_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot open the durable inbox"):
        DurableInbox(tmp_path / "file" / "inbox")


def test_client_ids_become_one_safe_folder_name(tmp_path: Path) -> None:
    assert inbox_folder(tmp_path, "../line 7/\u00e9").parent == tmp_path / ".inbox"
    assert "/" not in inbox_folder(tmp_path, "../line 7/\u00e9").name


# --- the committer: acks after the fsync, in arrival order ----------------------------


def test_acks_follow_the_fsync_in_arrival_order_and_redeliveries_are_not_stored_twice(
    tmp_path: Path,
) -> None:
    inbox = DurableInbox(tmp_path)
    inbox.append([message(n) for n in range(3)])  # a previous run made these durable ...
    inbox.close()  # ... and was killed before it acknowledged them
    inbox = DurableInbox(tmp_path)
    assert values([m for _, b in inbox.recover() for m in b]) == [0, 1, 2]
    delivered: list[RawMessage] = []
    acks: list[tuple[int, int]] = []
    committer = AckAfterDisk(
        inbox,
        deliver=delivered.extend,
        ack=lambda mid, qos: acks.append((mid, qos)),
        can_take=lambda: True,
    )
    committer.arrive(message(2), mid=7, qos=1, dup=True)  # resent by the broker
    committer.arrive(message(3), mid=8, qos=1, dup=False)
    committer.arrive(message(1), mid=9, qos=0, dup=False)  # QoS 0: no ack; not a resend
    assert acks == []  # nothing is acked before the disk
    assert committer.waiting == 3
    assert committer.commit() == 3
    assert acks == [(7, 1), (8, 1)]
    assert values(delivered) == [3, 1]
    assert committer.redelivered == 1
    inbox.close()
    assert values(recovered(tmp_path)) == [0, 1, 2, 3, 1]


def test_what_arrived_on_a_lost_connection_is_kept_but_never_acked_on_the_next(
    tmp_path: Path,
) -> None:
    inbox = DurableInbox(tmp_path)
    delivered: list[RawMessage] = []
    acks: list[int] = []
    committer = AckAfterDisk(
        inbox,
        deliver=delivered.extend,
        ack=lambda mid, _qos: acks.append(mid),
        can_take=lambda: True,
    )
    committer.arrive(message(0), mid=1, qos=1, dup=False)
    committer.arrive(message(1), mid=2, qos=1, dup=False)
    committer.connection_lost()  # mids 1 and 2 belonged to the old connection
    assert acks == []
    assert values(delivered) == [0, 1]
    # the resumed session resends both (DUP) under new ids: acked, not stored again
    committer.arrive(message(0), mid=1, qos=1, dup=True)
    committer.arrive(message(1), mid=5, qos=1, dup=True)
    committer.commit()
    assert acks == [1, 5]
    assert values(delivered) == [0, 1]
    assert committer.redelivered == 2
    inbox.close()


def test_a_full_inbox_holds_the_acks_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = DurableInbox(tmp_path, max_bytes=1)
    acks: list[int] = []
    committer = AckAfterDisk(
        inbox,
        deliver=lambda _: None,
        ack=lambda mid, _qos: acks.append(mid),
        can_take=lambda: True,
    )
    committer.arrive(message(0), mid=1, qos=1, dup=False)
    assert committer.commit() == 1  # empty until now
    for n in range(3):
        committer.arrive(message(n + 1), mid=n + 2, qos=1, dup=False)
        assert committer.commit() == 0
    assert acks == [1]
    assert committer.held
    assert committer.waiting == 3
    assert caplog.text.count("holding") == 1
    inbox.release(1)  # the dataset wrote it: room again
    assert committer.commit() == 3
    assert acks == [1, 2, 3, 4]
    assert not committer.held
    inbox.close()


def readings_in(root: Path) -> set[int]:
    """The reading numbers (`value`) in the dataset at `root` so far."""
    if not any(root.rglob("part-*.parquet")):
        return set()
    return {int(v) for v in load_recording(root)["value"]}


# --- the service, SIGKILLed under a QoS 1 stream -------------------------------------------


class Stream:
    """Publishes QoS 1 readings 0..count-1 with device times at about `rate` a second.

    paho's own loop thread reconnects after a broker restart and sends what was queued.
    """

    def __init__(
        self, publisher: PublisherConfig, *, count: int, rate: float, persistent: bool = False
    ) -> None:
        self.count, self.rate, self.published = count, rate, 0
        # persistent: the publisher's own session survives a broker restart (paho resends
        # what the broker had not acknowledged), so every reading reaches the broker once
        self._client = new_paho_client(
            f"test-stream-{os.getpid()}-{time.monotonic_ns()}", clean_session=not persistent
        )
        self._client.username_pw_set(publisher.username, publisher.password)
        self.acknowledged = 0  # PUBACKs from the broker (on paho's thread)
        self._client.on_publish = self._on_publish
        self._client.connect(publisher.host, publisher.port, keepalive=30)
        self._client.loop_start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        for n in range(self.count):
            due = started + n / self.rate
            if (delay := due - time.monotonic()) > 0 and self._stop.wait(delay):  # pacing
                return
            body = {"value": n, "timestamp": START_MS + n}
            # while the broker is away, paho keeps the message and sends it on reconnect
            self._client.publish("device/line7/telemetry/n", json.dumps(body), qos=1)
            self.published = n + 1

    def finish(self) -> None:
        self._thread.join(timeout=self.count / self.rate + 30)
        wait_for(
            lambda: self.acknowledged >= self.count,
            timeout=60,
            message=f"the broker acknowledged {self.acknowledged} of {self.count}",
        )
        self._client.disconnect()
        self._client.loop_stop()

    def _on_publish(self, *_args: object) -> None:
        self.acknowledged += 1

    def close(self) -> None:
        self._stop.set()
        self._client.loop_stop()


@pytest.mark.broker
@pytest.mark.skipif(not PAHO_V2, reason="paho-mqtt 1.6 cannot hold an acknowledgement")
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_service_sigkilled_three_times_under_a_qos1_stream_loses_no_reading(
    fresh_broker: LocalBroker,
    services: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
    protocol: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    count, rate = 4_000, 300.0
    root = tmp_path / "dataset"
    args = [
        "--dataset",
        str(root),
        "--flush-every",
        "1s",
        "--client-id",
        f"line7-{protocol}",
        "--session-expiry",
        "1h",
        "--protocol",
        protocol,
    ]
    rng = random.Random(f"sigkill-{protocol}")
    running = services(fresh_broker, *args)
    stream = Stream(fresh_broker.publisher(), count=count, rate=rate)
    try:
        for at in sorted(rng.uniform(0.1, 0.8) for _ in range(3)):
            kill_at = at * count
            wait_for(lambda: stream.published >= kill_at, timeout=60)  # noqa: B023
            running.kill()  # SIGKILL: no handler runs, nothing is flushed
            running.wait()
            down_until = min(stream.published + int(rng.uniform(1, 3) * rate), count)  # 1-3 s
            wait_for(lambda: stream.published >= down_until, timeout=60)  # noqa: B023
            running = services(fresh_broker, *args)
        stream.finish()
    finally:
        stream.close()

    wait_for(
        lambda: len(readings_in(root)) >= count,
        timeout=60,
        message=f"readings missing: {count - len(readings_in(root))} of {count}",
    )
    running.send_signal(signal.SIGTERM)
    assert running.wait(30) == 0, running.out.read_text()  # type: ignore[attr-defined]
    everything = load_recording(root)
    once = load_recording(root, dedupe=True)
    assert sorted(int(v) for v in once["value"]) == list(range(count))  # each exactly once
    twice = len(everything) - len(once)
    with capsys.disabled():
        print(
            f"\n[{protocol}] {count} readings, 3 SIGKILLs: 0 lost, {twice} stored twice "
            "(removed by dedupe=True)"
        )
    assert twice < count // 4  # a kill repeats at most the rows of the flush it cut
    assert not list(inbox_folder(root, f"line7-{protocol}").glob("*.seg"))  # all released


# --- a share group with a frozen member, and a broker restart -------------------------------

MEMBER = """
import signal, sys, threading
from tesaiot_data import Collector, Settings
settings = Settings.from_env(None).replace(keepalive=5)
collector = Collector(settings, dataset=sys.argv[1], flush_every=0.5, window="1min").start()
print("member ready", flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
collector.stop()
print("member stopped", flush=True)
"""


@pytest.fixture
def members(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start collector processes (`MEMBER`) that write a dataset; killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(broker: LocalBroker, dataset: Path, **env: str) -> subprocess.Popen[bytes]:
        out = tmp_path / f"member-{len(started)}.out"
        with out.open("wb") as stdout:
            process = subprocess.Popen(
                [sys.executable, "-c", MEMBER, str(dataset)],
                env={
                    **os.environ,
                    "MQTT_API_TOKEN": broker.token,
                    "MQTT_BROKER_URL": broker.wss_url,
                    "CA_CERT_PATH": str(broker.ca_file),
                    **env,
                },
                stdout=stdout,
                stderr=subprocess.STDOUT,
            )
        process.out = out  # type: ignore[attr-defined]
        started.append(process)
        wait_for(
            lambda: "member ready" in out.read_text() or process.poll() is not None,
            timeout=60,
            message="the member did not start",
        )
        assert process.poll() is None, out.read_text()
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait()


def stop_member(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0, process.out.read_text()  # type: ignore[attr-defined]


@pytest.mark.broker
@pytest.mark.skipif(not PAHO_V2, reason="paho-mqtt 1.6 cannot hold an acknowledgement")
def test_a_share_group_member_frozen_past_its_keepalive_loses_nothing_with_persistent_sessions(
    fresh_broker: LocalBroker,
    members: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    count, rate = 6_000, 250.0
    roots = [tmp_path / "a", tmp_path / "b"]
    group = {"MQTT_SHARE_GROUP": "recorders", "MQTT_SESSION_EXPIRY": "1h"}
    a = members(fresh_broker, roots[0], MQTT_CLIENT_ID="member-a", **group)
    b = members(fresh_broker, roots[1], MQTT_CLIENT_ID="member-b", **group)
    stream = Stream(fresh_broker.publisher(), count=count, rate=rate)
    try:
        wait_for(lambda: stream.published >= count // 5, timeout=60)
        b.send_signal(signal.SIGSTOP)  # frozen: no keepalive, no acks, socket still open
        frozen_at = stream.published
        wait_for(lambda: stream.published >= frozen_at + 15 * rate, timeout=60)  # ~15 s
        b.send_signal(signal.SIGCONT)
        stream.finish()
    finally:
        stream.close()

    def union() -> list[int]:
        found = [r for r in roots if any(r.rglob("part-*.parquet"))]
        return sorted(int(v) for r in found for v in load_recording(r)["value"])

    wait_for(
        lambda: len(set(union())) >= count,
        timeout=90,
        message=f"readings in no member's data: {count - len(set(union()))}",
    )
    stop_member(a)
    stop_member(b)
    assert union() == list(range(count))  # each exactly once, in one member's data
    assert "lost; reconnecting" in b.out.read_text()  # type: ignore[attr-defined]  # it was cut off


@pytest.mark.broker
@pytest.mark.skipif(not PAHO_V2, reason="paho-mqtt 1.6 cannot hold an acknowledgement")
def test_a_service_keeps_every_reading_across_a_broker_restart_with_persistence(
    fresh_broker: LocalBroker,
    services: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    count, rate = 3_000, 250.0
    root = tmp_path / "dataset"
    args = [
        "--dataset",
        str(root),
        "--flush-every",
        "1s",
        "--client-id",
        "line7-restart",
        "--session-expiry",
        "1h",
    ]
    running = services(fresh_broker, *args)
    stream = Stream(fresh_broker.publisher(), count=count, rate=rate, persistent=True)
    try:
        wait_for(lambda: stream.published >= count // 3, timeout=60)
        fresh_broker.restart()  # SIGTERM: Mosquitto saves sessions and queues, comes back
        stream.finish()
    finally:
        stream.close()

    wait_for(
        lambda: len(readings_in(root)) >= count,
        timeout=90,
        message=f"readings missing: {count - len(readings_in(root))} of {count}",
    )
    running.send_signal(signal.SIGTERM)
    assert running.wait(30) == 0, running.out.read_text()  # type: ignore[attr-defined]
    once = load_recording(root, dedupe=True)
    assert sorted(int(v) for v in once["value"]) == list(range(count))


def test_a_wrong_session_option_makes_no_dataset_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tesaiot_data.cli import main  # noqa: PLC0415

    monkeypatch.setenv("MQTT_API_TOKEN", "tesa_mqtt_test_" + "x" * 24)
    monkeypatch.delenv("MQTT_CLIENT_ID", raising=False)
    root = tmp_path / "never"
    code = main(["record", "--dataset", str(root), "--session-expiry", "1h"])
    assert code == 1
    assert "MQTT_CLIENT_ID" in capsys.readouterr().err
    assert not root.exists()  # the check of the options came first
