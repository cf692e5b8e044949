"""Where the time goes on the path from the socket to Parquet: CPU microseconds per message.

Run with `python benchmarks/stages.py [--messages N] [--rounds R]` (see README.md beside this
file). One `LocalBroker` and one publisher process, set up as in `collector_bench.py`; every
round runs, over WSS and over TCP:

1. paho alone: a bare client (built by `tesaiot_data.mqtt._paho`, as the collector's is) whose
   `on_message` does nothing. Stage "paho" = its network thread's CPU per message, paho as it
   ships; stage "read buffer" = the same client with `new_client(read_buffer=True)`, as the
   collector reads, minus that (negative: what `_paho.ReadBuffer` saves).
2. the client's path: `TESAIoTMQTTClient(on_batch=...)` whose handler does what the collector
   does with a batch, `parse_batch` then `RollingWindow.append`, timed with `thread_time()`.
   Stage "callback" = its network thread's CPU per message minus the buffered bare client's
   (both in the same round): `on_message` -> inbox, less what reading bursts of packets
   without a `select()` saves (`TESAIoTMQTTClient._network_step`), so it can be negative;
   offline it is `_on_message` alone; "parse" and "window" = the handler's timers; "worker
   loop" = the rest of the worker thread (waking, batching, wait_idle's signal).
3. the collector with an active recording (`Collector.record(path, flush_every=1)`), over
   WSS: stage "sinks" = the CPU of every thread besides the network and worker threads
   (today the housekeeping thread: drain, Arrow conversion, part writes), per message,
   counted until every row is in a flushed part. The closing merge (`Recording.stop()`) is
   timed on its own.

Thread CPU comes from `pthread_getcpuclockid` (nanosecond clocks of each thread), so the
stages are measured in the same run, under the same load, without instrumenting the code.
The same stages are also timed offline on the same messages (no broker, one thread): the
cost without GIL hand-overs and cache misses. Offline, "paho" and "read buffer" are paho 2.x
reading the flood's packets from a loopback socket pair (plain, or TLS plus WebSocket frames
as Mosquitto sends them, with a `trustme` certificate), through `loop_read()` as the client's
burst reads do; that figure is steadier than the live one. It is a benchmark: nothing is
asserted.
"""

from __future__ import annotations

import argparse
import select
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))  # collector_bench beside this file

from collector_bench import (
    _DEVICES,
    Bench,
    Publisher,
    _bare_client,
    _load,
    _machine,
    _wait_for,
)

from tesaiot_data.collector.collector import Collector
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.messages import RawMessage
from tesaiot_data.mqtt._paho import buffered_socket
from tesaiot_data.mqtt.client import TESAIoTMQTTClient
from tesaiot_data.parse.rows import parse_batch
from tesaiot_data.window.rolling import RollingWindow

_STAGES = ("paho", "read buffer", "callback", "parse", "window", "worker loop", "sinks")
_OWN = ("callback", "parse", "window", "worker loop", "sinks")  # the collector's own work
_LABELS = {
    "paho": "paho: bare client, loop_forever",
    "read buffer": "read buffer: buffered - bare paho",
    "callback": "client network - buffered bare",
    "parse": "parse: parse_batch",
    "window": "window: RollingWindow.append",
    "worker loop": "worker loop: wake, batch, signal",
    "sinks": "sinks: record() drain+Arrow+parts",
}


def _thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of every live thread of this process, by thread id."""
    out: dict[int, tuple[str, float]] = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        try:
            clock = time.pthread_getcpuclockid(thread.ident)
            out[thread.ident] = (thread.name, time.clock_gettime(clock))
        except (OSError, AttributeError):  # ended meanwhile, or not Linux
            continue
    return out


def _cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds per thread name between two samples (threads alive at both)."""
    out: dict[str, float] = {}
    for ident, (name, end) in after.items():
        if ident in before:
            out[name] = out.get(name, 0.0) + end - before[ident][1]
    return out


def _of(delta: dict[str, float], suffix: str) -> float:
    return sum(seconds for name, seconds in delta.items() if name.endswith(suffix))


@dataclass
class Round:
    """The figures of one round, in CPU microseconds per message unless named otherwise."""

    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # transport -> stage
    wall: dict[str, float] = field(default_factory=dict)  # case -> wall us/msg
    batch: dict[str, float] = field(default_factory=dict)  # transport -> median batch size
    merge_ms: float = float("nan")


# --- the live runs -------------------------------------------------------------------------


def run_bare(
    bench: Bench, transport: str, count: int, *, read_buffer: bool = False
) -> tuple[float, float]:
    """(paho thread CPU us/msg, wall us/msg) of a bare client with an empty on_message."""
    state = {"n": 0, "first": 0.0, "last": 0.0}

    def on_message(_client: Any, _userdata: Any, _message: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        if not state["n"]:
            state["first"] = now
        state["n"] += 1
        state["last"] = now

    client = _bare_client(bench, transport, read_buffer=read_buffer)
    client.on_message = on_message
    try:
        before = _thread_cpu()
        bench.publisher.start_flood(bench.packets(count))
        _wait_for(lambda: int(state["n"]), count)
        delta = _cpu_delta(before, _thread_cpu())
        bench.publisher.wait()
    finally:
        client.disconnect()
        client.loop_stop()
    main = threading.main_thread().name
    paho = sum(seconds for name, seconds in delta.items() if name != main)
    n = int(state["n"])
    return paho / n * 1e6, (state["last"] - state["first"]) / n * 1e6


def run_client(bench: Bench, transport: str, count: int) -> dict[str, float]:
    """The client's path with the collector's batch work: per-stage CPU us/msg."""
    window = RollingWindow(window_ns=None, max_rows=1_000_000)
    spent = {"parse": 0.0, "window": 0.0}
    sizes: list[int] = []
    stamps = {"first": 0.0, "last": 0.0}

    def on_batch(batch: Sequence[RawMessage]) -> None:
        t0 = time.thread_time()
        parsed = parse_batch(batch)
        t1 = time.thread_time()
        window.append(parsed, now_ns=time.time_ns())
        t2 = time.thread_time()
        spent["parse"] += t1 - t0
        spent["window"] += t2 - t1
        sizes.append(len(batch))
        if not stamps["first"]:
            stamps["first"] = batch[0].received_ns / 1e9
        stamps["last"] = time.time()

    client = TESAIoTMQTTClient(bench.settings(transport), on_batch=on_batch)
    client.connect()
    try:
        before = _thread_cpu()
        bench.publisher.start_flood(bench.packets(count))
        _wait_for(lambda: client.stats.processed + client.stats.dropped, count)
        client.wait_idle()
        delta = _cpu_delta(before, _thread_cpu())
        bench.publisher.wait()
        n = client.stats.processed
    finally:
        client.disconnect()
    worker = _of(delta, "-worker")
    return {
        "network": _of(delta, "-network") / n * 1e6,
        "parse": spent["parse"] / n * 1e6,
        "window": spent["window"] / n * 1e6,
        "worker loop": (worker - spent["parse"] - spent["window"]) / n * 1e6,
        "wall": (stamps["last"] - stamps["first"]) / n * 1e6,
        "batch": statistics.median(sizes) if sizes else 0.0,
    }


def run_recording(bench: Bench, transport: str, count: int) -> dict[str, float]:
    """The collector with an active recording: the CPU of the threads that are not paho's."""
    collector = Collector(bench.settings(transport), window=None, max_rows=1_000_000)
    collector.start()
    with tempfile.TemporaryDirectory(prefix="stages-") as tmp:
        recording = collector.record(Path(tmp) / "rec.parquet", flush_every=1.0)
        try:
            before = _thread_cpu()
            started = time.time()
            bench.publisher.start_flood(bench.packets(count))
            _wait_for(lambda: collector.stats.messages, count)
            collector.wait_idle()
            ingested = time.time()
            _wait_for(lambda: recording.rows_on_disk, recording.rows)
            delta = _cpu_delta(before, _thread_cpu())
            bench.publisher.wait()
            n = collector.stats.messages
            t0 = time.perf_counter()
            recording.stop()
            merge_s = time.perf_counter() - t0
        finally:
            recording.stop()
            collector.stop()
    main = threading.main_thread().name
    own = ("-network", "-worker")
    sinks = sum(
        seconds
        for name, seconds in delta.items()
        if name != main and not name.endswith(own) and "paho" not in name
    )
    return {
        "network": _of(delta, "-network") / n * 1e6,
        "worker": _of(delta, "-worker") / n * 1e6,
        "sinks": sinks / n * 1e6,
        "merge_ms": merge_s * 1000,
        "wall": (ingested - started) / n * 1e6,  # includes the publisher's start-up
    }


# --- offline: the same messages, one thread, no broker ---------------------------------------


def offline(bench: Bench, count: int, batch_size: int) -> dict[str, float]:
    """Callback, parse and window append timed alone on the flood's own messages."""
    fleet = DeviceFleet(bench.broker.publisher(), devices=_DEVICES, mixed_shapes=False)
    pairs = fleet.take(count)
    messages = []
    for topic, payload in pairs:
        message = mqtt.MQTTMessage(topic=topic.encode())
        message.payload = payload
        messages.append(message)
    client = TESAIoTMQTTClient(bench.settings("tcp"), on_batch=lambda _batch: None)
    on_message = client._on_message
    best: dict[str, float] = {}

    def timed(name: str, call: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        call()
        best[name] = min(best.get(name, float("inf")), (time.perf_counter() - t0) / count * 1e6)

    for _ in range(3):
        client._queue.clear()
        timed("callback", lambda: [on_message(None, None, m) for m in messages])
        raw = list(client._queue)
        batches = [raw[i : i + batch_size] for i in range(0, len(raw), batch_size)]
        parsed = []
        timed("parse", lambda: parsed.extend(parse_batch(batch) for batch in batches))  # noqa: B023
        window = RollingWindow(window_ns=None, max_rows=1_000_000)
        timed("window", lambda: [window.append(p, now_ns=time.time_ns()) for p in parsed])  # noqa: B023
    client._queue.clear()
    return best


def _websocket_frames(packets: bytes) -> bytes:
    """The flood's packets, one unmasked binary WebSocket frame each, as Mosquitto sends them."""
    frames = bytearray()
    position = 0
    while position < len(packets):
        size, shift, length_bytes = 0, 0, 0
        while True:  # the MQTT remaining length
            length_bytes += 1
            byte = packets[position + length_bytes]
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        end = position + 1 + length_bytes + size
        frame_size = end - position
        header = b"\x82" + (
            bytes([frame_size]) if frame_size < 126 else b"\x7e" + frame_size.to_bytes(2, "big")
        )
        frames += header + packets[position:end]
        position = end
    return bytes(frames)


def offline_paho(bench: Bench, count: int, rounds: int = 5) -> dict[str, dict[str, float]]:
    """CPU us/msg of paho 2.x reading `count` packets from a socket pair, per transport.

    Returns {"tcp"|"wss": {"paho": as shipped, "read buffer": buffered minus as shipped}},
    medians of `rounds`. WSS is TLS (a `trustme` CA) with paho's own `_WebsocketWrapper` over
    it, past its handshake; the buffered client is wrapped by `_paho.buffered_socket` as
    `new_client(read_buffer=True)` does on connect.
    """
    packets = bench.packets(count).read_bytes()
    streams = {"tcp": packets, "wss": _websocket_frames(packets)}
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    def one(transport: str, read_buffer: bool) -> float:
        ours, theirs = socket.socketpair()
        got = [0]
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="offline")
        client.on_message = lambda *_: got.__setitem__(0, got[0] + 1)
        tls = transport == "wss"

        def serve() -> None:
            peer = server_context.wrap_socket(theirs, server_side=True) if tls else theirs
            peer.sendall(streams[transport])
            peer.recv(1)  # until the reader has read everything

        server = threading.Thread(target=serve)
        server.start()
        sock: Any = client_context.wrap_socket(ours, server_hostname="localhost") if tls else ours
        wrapped: Any = sock
        if tls:  # paho's own WebSocket wrapper, as past its handshake
            wrapped = mqtt._WebsocketWrapper.__new__(mqtt._WebsocketWrapper)
            wrapped.__dict__.update(
                connected=True,
                _ssl=True,
                _socket=sock,
                _sendbuffer=bytearray(),
                _readbuffer=bytearray(),
                _requested_size=0,
                _payload_head=0,
                _readbuffer_head=0,
            )
        client._sock = buffered_socket(wrapped) if read_buffer else wrapped
        sock.setblocking(False)
        started = time.thread_time()
        while got[0] < count:
            if client.loop_read() == mqtt.MQTT_ERR_AGAIN:
                select.select([sock], [], [], 1.0)
        spent = time.thread_time() - started
        sock.setblocking(True)
        sock.send(b"x")
        server.join()
        ours.close()
        theirs.close()
        return spent / count * 1e6

    out: dict[str, dict[str, float]] = {}
    for transport in ("tcp", "wss"):
        one(transport, False)  # warm-up
        shipped: list[float] = []
        buffered: list[float] = []
        for _ in range(rounds):
            shipped.append(one(transport, False))
            buffered.append(one(transport, True))
        out[transport] = {
            "paho": statistics.median(shipped),
            "read buffer": statistics.median(b - s for s, b in zip(shipped, buffered, strict=True)),
        }
    return out


# --- the report ------------------------------------------------------------------------------


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):5.2f} ({min(values):.2f}-{max(values):.2f})"


def report(
    rounds: list[Round],
    off: dict[str, float],
    off_paho: dict[str, dict[str, float]],
    count: int,
) -> None:
    print()
    print(
        f"STAGES, CPU us per message: median of {len(rounds)} rounds (min-max); "
        f"{count:,} messages per run"
    )
    header = f"{'stage':<34}{'wss':>24}{'tcp':>24}{'offline':>12}"
    print(header)
    print("-" * len(header))
    for stage in _STAGES:
        cells = [
            _cell([r.stages[t][stage] for r in rounds if stage in r.stages[t]])
            for t in ("wss", "tcp")
        ]
        label = _LABELS[stage]
        if stage in off_paho["wss"]:  # per transport: "wss/tcp"
            offline_cell = f"{off_paho['wss'][stage]:.1f}/{off_paho['tcp'][stage]:.1f}"
        else:
            offline_cell = f"{off.get(stage, float('nan')):.2f}"
        print(f"{label:<34}{cells[0]:>24}{cells[1]:>24}{offline_cell:>12}")
    for transport in ("wss", "tcp"):
        stages = [r.stages[transport] for r in rounds]
        totals = [sum(s.get(name, 0.0) for name in _STAGES) for s in stages]
        added = [total - s["paho"] for s, total in zip(stages, totals, strict=True)]
        own = [sum(s.get(name, 0.0) for name in _OWN) for s in stages]
        buffered = [s["paho"] + s["read buffer"] for s in stages]
        shares = [s["paho"] / total for s, total in zip(stages, totals, strict=True)]
        print(
            f"  {transport}: total {_cell(totals)}; on top of paho {_cell(added)}; "
            f"bare paho / total {_cell(shares)} (the ratio a CPU-bound receiver can reach)"
        )
        print(
            f"  {transport}: the collector's own work {_cell(own)}; like for like, buffered "
            f"paho / (buffered paho + own work) "
            f"{_cell([b / (b + o) for b, o in zip(buffered, own, strict=True)])}"
        )
    print()
    print("wall us per message (1 / rate), same rounds:")
    for case in sorted({c for r in rounds for c in r.wall}):
        print(f"  {case:<30}{_cell([r.wall[case] for r in rounds if case in r.wall])}")
    batches = {t: [r.batch[t] for r in rounds if t in r.batch] for t in ("wss", "tcp")}
    print(f"median batch size: wss {_cell(batches['wss'])}, tcp {_cell(batches['tcp'])}")
    merges = [r.merge_ms for r in rounds]
    print(f"recording stop() (the merge of the parts): {_cell(merges)} ms")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every run")
    args = parser.parse_args(argv)
    count = args.messages
    print(f"stages: {_machine()}")
    print(f"load average at start: {_load()}", flush=True)
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="stages-bench-") as tmp, LocalBroker() as broker:
        publisher = Publisher(broker.publisher())
        bench = Bench(broker, publisher, Path(tmp))
        try:
            run_bare(bench, "wss", 5_000)  # warm-up: TLS, imports, caches, the publisher
            run_client(bench, "wss", 5_000)
            for number in range(args.rounds):
                result = Round()
                for transport in ("wss", "tcp"):
                    paho, wall = run_bare(bench, transport, count)
                    buffered, _ = run_bare(bench, transport, count, read_buffer=True)
                    path = run_client(bench, transport, count)
                    result.stages[transport] = {
                        "paho": paho,
                        "read buffer": buffered - paho,
                        "callback": path["network"] - buffered,
                        "parse": path["parse"],
                        "window": path["window"],
                        "worker loop": path["worker loop"],
                    }
                    result.wall[f"bare {transport}"] = wall
                    result.wall[f"client+parse+window {transport}"] = path["wall"]
                    result.batch[transport] = path["batch"]
                    recorded = run_recording(bench, transport, count)
                    result.stages[transport]["sinks"] = recorded["sinks"]
                    result.wall[f"collector+record {transport}"] = recorded["wall"]
                    if transport == "wss":
                        result.merge_ms = recorded["merge_ms"]
                rounds.append(result)
                print(f"  round {number + 1}/{args.rounds} done, load {_load()}", flush=True)
            batch = int(statistics.median(r.batch["wss"] for r in rounds)) or 1
            off = offline(bench, count, batch)
            off_paho = offline_paho(bench, min(count, 20_000))
        finally:
            publisher.close()
    report(rounds, off, off_paho, count)
    print(f"\nload average at end: {_load()}")


if __name__ == "__main__":
    main()
