"""Benchmark acknowledgement after the disk against acknowledgement on receipt (issue 16).

Run with `python benchmarks/ack_after_disk.py [--quick] [--messages N] [--repeat R]
[--protocol 3.1.1|5] [--dir PATH]` (see README.md beside this file). One `LocalBroker` with
its defaults (Mosquitto's `max_inflight_messages` 20: at most 20 QoS 1 messages unacknowledged
per client). For each round and mode, a client with a persistent session of its own
subscribes once and leaves; N QoS 1 messages (standard payloads, 10 devices) are published
and queued by the broker; then the client connects again with a collector's full ingest path
(parse, window) as its batch handler, and the time from `connect()` to the moment all N are
handled gives the rate. Mode "receipt": paho acknowledges each message when it arrives (the
non-durable path). Mode "disk": a `DurableInbox` in `--dir` (default: a temporary folder)
takes each group first, fsyncs it, and only then are the group's messages acknowledged.
Modes run interleaved, in alternating order, so that load from other programs spreads over
both; the ratio is quoted per round. The machine's own `fdatasync` of a small append is
measured in the same folder first. Nothing is asserted.

`--soak N` instead runs one durable collector the way the service runs: a `Collector` with a
dataset (`flush_every` 5 s) and a persistent session, while this process publishes N QoS 1
messages as fast as the broker takes them. Every second it samples the inbox's bytes and
segment files, the process's RSS and the rows on disk, and it prints the peaks: the inbox
must stay bounded (released after each flush), whatever N.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from tesaiot_data.collector.collector import Collector
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.mqtt._paho import new_client
from tesaiot_data.mqtt.client import TESAIoTMQTTClient
from tesaiot_data.mqtt.inbox import DurableInbox

_DEVICES = 10
_TIMEOUT = 300.0


def fsync_figures(folder: Path, count: int = 300) -> tuple[float, float]:
    """p50 and p99 in ms of a 200-byte append plus `fdatasync` in `folder`."""
    path = folder / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            os.write(fd, b"x" * 200)
            os.fdatasync(fd)
            times.append((time.perf_counter() - started) * 1e3)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def queue_messages(broker: LocalBroker, count: int) -> None:
    """Publish `count` QoS 1 readings and wait until the broker acknowledged each."""
    publisher = broker.publisher()
    client = new_client(f"bench-publish-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(publisher.username, publisher.password)
    client.connect(publisher.host, publisher.port, keepalive=60)
    client.loop_start()
    try:
        infos = [
            client.publish(
                f"device/bench-{n % _DEVICES:02d}/telemetry/env",
                json.dumps({"temperature": 20 + n % 100 / 10, "humidity": 50, "seq": n}),
                qos=1,
            )
            for n in range(count)
        ]
        for info in infos:
            info.wait_for_publish(60)
    finally:
        client.disconnect()
        client.loop_stop()


def one_run(broker: LocalBroker, mode: str, *, count: int, protocol: str, folder: Path) -> dict:
    """Queue `count` messages for a fresh persistent session, then time their ingest."""
    client_id = f"bench-{mode}-{uuid.uuid4().hex[:8]}"
    settings = broker.settings(client_id=client_id, session_expiry="1h", protocol=protocol)
    with TESAIoTMQTTClient(settings, on_batch=lambda _batch: None):
        pass  # the broker now holds the session and its subscription
    queue_messages(broker, count)
    inbox = DurableInbox(folder / client_id) if mode == "disk" else None
    collector = Collector(settings, window=None, max_rows=10 * count)
    client = TESAIoTMQTTClient(settings, on_batch=collector.ingest, inbox=inbox)
    started = time.perf_counter()
    client.connect()
    deadline = started + _TIMEOUT
    while client.stats.processed < count:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{mode}: {client.stats.processed} of {count} in {_TIMEOUT} s")
        time.sleep(0.002)  # polling a counter: the measured threads run meanwhile
    seconds = time.perf_counter() - started
    client.disconnect()
    result = {"mode": mode, "rate": count / seconds, "seconds": seconds}
    if inbox is not None:
        result["group"] = inbox.committed / max(inbox.commits, 1)
        result["commit_ms"] = inbox.commit_seconds / max(inbox.commits, 1) * 1e3
        inbox.close()
    return result


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(broker: LocalBroker, *, count: int, protocol: str, folder: Path) -> None:
    """One durable collector under N QoS 1 messages: the inbox's size, sampled every second."""
    client_id = f"bench-soak-{uuid.uuid4().hex[:8]}"
    settings = broker.settings(client_id=client_id, session_expiry="1h", protocol=protocol)
    dataset = folder / "dataset"
    collector = Collector(settings, dataset=dataset, flush_every="5s", window="1min")
    collector.start()
    durability = collector._durability  # a benchmark may look inside
    assert durability is not None, "no durable inbox: is paho-mqtt 2 installed?"
    inbox = durability.inbox
    publisher = broker.publisher()
    sender = new_client(f"bench-soak-publish-{uuid.uuid4().hex[:8]}")
    sender.username_pw_set(publisher.username, publisher.password)
    sender.max_inflight_messages_set(1_000)
    acked = [0]
    sender.on_publish = lambda *_: acked.__setitem__(0, acked[0] + 1)
    sender.connect(publisher.host, publisher.port, keepalive=60)
    sender.loop_start()
    peaks = {"inbox": 0, "segments": 0, "rss": 0.0}
    rss0 = _rss_mib()
    started = time.perf_counter()
    sent = 0
    next_sample = started
    print(f"# soak: {count:,} QoS 1 messages, dataset {dataset}, RSS at start {rss0:.0f} MiB")
    while True:
        if sent < count and sent - acked[0] < 5_000:  # keep the publisher's queue short
            n = sent
            sender.publish(
                f"device/bench-{n % _DEVICES:02d}/telemetry/env",
                json.dumps({"temperature": 20 + n % 100 / 10, "humidity": 50, "seq": n}),
                qos=1,
            )
            sent += 1
            continue
        now = time.perf_counter()
        if now >= next_sample:
            next_sample = now + 1.0
            size = inbox.size_bytes
            segments = len(list(inbox.folder.glob("*.seg")))
            rss = _rss_mib()
            peaks["inbox"] = max(peaks["inbox"], size)
            peaks["segments"] = max(peaks["segments"], segments)
            peaks["rss"] = max(peaks["rss"], rss)
            handled = collector.client.handled_seq if collector.client else 0
            print(
                f"{now - started:6.0f} s  sent {sent:>9,}  handled {handled:>9,}  "
                f"inbox {size / 2**20:6.1f} MiB in {segments} segments  RSS {rss:5.0f} MiB",
                flush=True,
            )
            if handled >= count:
                break
        time.sleep(0.001 if sent >= count else 0)
    seconds = time.perf_counter() - started
    collector.stop()
    sender.disconnect()
    sender.loop_stop()
    left = sum(p.stat().st_size for p in inbox.folder.glob("*.seg"))
    print(
        f"soak: {count:,} messages in {seconds:.0f} s ({count / seconds:,.0f} msg/s); inbox peak "
        f"{peaks['inbox'] / 2**20:.1f} MiB in at most {peaks['segments']} segment files, "
        f"{left:,} bytes left after stop; RSS {rss0:.0f} -> peak {peaks['rss']:.0f} MiB; "
        f"{inbox.commits:,} commits of {inbox.committed / max(inbox.commits, 1):.1f} messages, "
        f"{inbox.commit_seconds / max(inbox.commits, 1) * 1e3:.2f} ms each"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 messages, 2 rounds")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--protocol", default="3.1.1", choices=["3.1.1", "5"])
    parser.add_argument("--dir", type=Path, default=None, help="where the inboxes go")
    parser.add_argument("--soak", type=int, default=0, metavar="N", help="the soak run instead")
    args = parser.parse_args()
    if args.soak:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp, LocalBroker() as broker:
            soak(broker, count=args.soak, protocol=args.protocol, folder=Path(tmp))
        return
    count, repeat = (5_000, 2) if args.quick else (args.messages, args.repeat)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, LocalBroker() as broker:
        folder = Path(tmp)
        p50, p99 = fsync_figures(folder)
        print(f"# {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        print(f"# fdatasync of a 200-byte append in {folder}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        print(f"# {count:,} QoS 1 messages queued per run, MQTT {args.protocol}, in-flight 20")
        ratios = []
        for round_ in range(repeat):
            order = ["receipt", "disk"] if round_ % 2 == 0 else ["disk", "receipt"]
            runs = {
                mode: one_run(broker, mode, count=count, protocol=args.protocol, folder=folder)
                for mode in order
            }
            ratio = runs["disk"]["rate"] / runs["receipt"]["rate"]
            ratios.append(ratio)
            print(
                f"round {round_ + 1}: on receipt {runs['receipt']['rate']:,.0f} msg/s, "
                f"after the disk {runs['disk']['rate']:,.0f} msg/s (ratio {ratio:.2f}; "
                f"groups of {runs['disk']['group']:.1f} messages, "
                f"{runs['disk']['commit_ms']:.2f} ms a commit)"
            )
        print(
            f"ratio after-disk / on-receipt: median {statistics.median(ratios):.2f}, "
            f"range {min(ratios):.2f}-{max(ratios):.2f} over {repeat} rounds"
        )


if __name__ == "__main__":
    main()
