"""Benchmark the collector end to end against a bare paho client on a local Mosquitto.

Run with `python benchmarks/collector_bench.py [--quick] [--messages N] [--repeat R]`
(see README.md beside this file). It starts one `LocalBroker` (WSS with a certificate
verified against its CA, plus its plain TCP listener) and one publisher process, then
measures, in the same run:

1. the ceiling: a bare paho 2.x client whose `on_message` only counts (WSS and TCP);
2. the collector on the same stream: the rate at which messages become frame rows, and
   its ratio to the ceiling (WSS and TCP);
3. the naive notebook approach, one `pd.concat` per message, for context;
4. the bytes held per row in a 1M-row window (50 devices x 4 metrics);
5. `frame()` on that window: after new data, cached, one device and one metric;
6. publish-to-frame latency at 1,000 messages/s over WSS (p50, p99);
7. the cost of an active `record()` on the WSS ingest rate.

The publisher is a separate process writing pre-encoded QoS 0 packets with `flood()`, so
the receiving process has a core to itself (the broker shares the other). Throughput cases
are interleaved within each repeat, in alternating order, so that background load spreads
over all of them. It is a benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import subprocess
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pandas as pd

from tesaiot_data.collector.collector import Collector
from tesaiot_data.demo.broker import LocalBroker, PublisherConfig
from tesaiot_data.demo.credentials import TELEMETRY_FILTER
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.demo.flood import fleet_packets, flood
from tesaiot_data.messages import ColumnBatch, RawMessage
from tesaiot_data.mqtt.connection import client_for
from tesaiot_data.parse.rows import parse_batch
from tesaiot_data.settings import Settings
from tesaiot_data.window.rolling import RollingWindow

_DEVICES = 50
_STALL_TIMEOUT = 20.0  # seconds without progress before a run gives up
_POLL = 0.005  # seconds between completion checks, the same for every receiver
_LATENCY_POLL = 0.001
_LATENCY_RATE = 1_000.0
_WINDOW_METRICS = ("temperature", "humidity", "pressure", "battery")
_UNITS = {"temperature": "celsius", "humidity": "percent", "pressure": "hPa", "battery": "volt"}
_BATCH = 1_000  # messages per parse_batch call when filling the window directly
_FRAME_REPEAT = 5
_MANY_DEVICES = 100_000  # the window's memory again with this many distinct device ids


# --- the publisher process -----------------------------------------------------------------


def _publisher_main(publisher: PublisherConfig, conn: Connection) -> None:
    """Runs in the publisher process: floods packets or runs a paced fleet on command."""
    packets: dict[str, bytes] = {}
    while True:
        command = conn.recv()
        if command[0] == "quit":
            return
        started = time.perf_counter()
        published = 0
        if command[0] == "flood":
            path = command[1]
            if path not in packets:
                packets[path] = Path(path).read_bytes()
            flood(publisher, packets[path], timeout=300.0)
        elif command[0] == "paced":
            _, rate, seconds = command
            fleet = DeviceFleet(
                publisher, devices=_DEVICES, rate=rate, qos=0, mixed_shapes=False, seed=1
            )
            with fleet:
                time.sleep(seconds)
            published = fleet.published
        conn.send((time.perf_counter() - started, published))


class Publisher:
    """A separate process that publishes on command, so it never competes for our GIL."""

    def __init__(self, publisher: PublisherConfig) -> None:
        context = mp.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_publisher_main, args=(publisher, child), name="bench-publisher", daemon=True
        )
        self._process.start()

    def start_flood(self, path: Path) -> None:
        self._conn.send(("flood", str(path)))

    def start_paced(self, rate: float, seconds: float) -> None:
        self._conn.send(("paced", rate, seconds))

    def wait(self, timeout: float = 300.0) -> tuple[float, int]:
        """Wait for the command to finish; return (seconds it took, messages published)."""
        if not self._conn.poll(timeout):
            raise RuntimeError("the publisher process did not finish in time")
        elapsed, published = self._conn.recv()
        return elapsed, published

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(("quit",))
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()


# --- measurement helpers -------------------------------------------------------------------


def _cpu_seconds(pid: int | None) -> float | None:
    """User+system CPU seconds of a process, from /proc (None where there is no /proc)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _trim() -> None:
    """Collect garbage and hand freed heap back to the OS, so RSS shows what is held."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _per_message_us(seconds: float | None, messages: int) -> float | None:
    return seconds / messages * 1e6 if seconds is not None and messages else None


def _wait_for(count: Callable[[], int], target: int) -> bool:
    """Poll `count()` every _POLL s until it reaches `target`; False after a stall."""
    last, last_change = -1, time.monotonic()
    while True:
        now_count = count()
        if now_count >= target:
            return True
        if now_count != last:
            last, last_change = now_count, time.monotonic()
        elif time.monotonic() - last_change > _STALL_TIMEOUT:
            return False
        time.sleep(_POLL)


@dataclass
class Run:
    """One receive run of one case."""

    rate: float  # messages per second, as the case defines it
    received: int
    net_rate: float | None = None  # collector: first to last receive (network thread alone)
    dropped: int = 0
    cpu_self: float | None = None  # CPU seconds / wall seconds of this process
    cpu_broker: float | None = None  # the same for Mosquitto
    cpu_us: float | None = None  # CPU microseconds of this process per message


@dataclass
class Case:
    """Every run of one case."""

    name: str
    runs: list[Run] = field(default_factory=list)

    def rates(self) -> list[float]:
        return [r.rate for r in self.runs if r.rate > 0]

    @property
    def median(self) -> float:
        rates = self.rates()
        return statistics.median(rates) if rates else float("nan")


class Bench:
    """The broker, the publisher process and the packet files shared by every case."""

    def __init__(self, broker: LocalBroker, publisher: Publisher, workdir: Path) -> None:
        self.broker = broker
        self.publisher = publisher
        self.workdir = workdir
        self._packet_files: dict[int, Path] = {}

    def packets(self, count: int) -> Path:
        """A file of `count` pre-encoded PUBLISH packets (standard payloads, 50 devices)."""
        path = self._packet_files.get(count)
        if path is None:
            fleet = DeviceFleet(
                self.broker.publisher(), devices=_DEVICES, mixed_shapes=False, malformed=0
            )
            path = self.workdir / f"packets-{count}.bin"
            path.write_bytes(fleet_packets(fleet, count))
            self._packet_files[count] = path
        return path

    def settings(self, transport: str) -> Settings:
        if transport == "wss":
            return self.broker.settings(qos=0)
        return Settings(
            token=self.broker.token,
            broker_url=f"mqtt://127.0.0.1:{self.broker.tcp_port}",
            ca_certs=None,
            qos=0,
        )

    @contextlib.contextmanager
    def cpu(self) -> Iterator[dict[str, float | None]]:
        """Measure this process's and the broker's CPU over the block."""
        out: dict[str, float | None] = {}
        own0, broker0, wall0 = time.process_time(), _cpu_seconds(self.broker.pid), time.time()
        yield out
        wall = time.time() - wall0
        own = time.process_time() - own0
        broker1 = _cpu_seconds(self.broker.pid)
        out["seconds"] = own
        out["self"] = own / wall
        out["broker"] = (broker1 - broker0) / wall if broker0 is not None and broker1 else None


# --- 1. the ceiling: a bare paho client ----------------------------------------------------


def _bare_client(bench: Bench, transport: str, *, read_buffer: bool = False) -> mqtt.Client:
    settings = bench.settings(transport)
    url = settings.url
    # Built as TESAIoTMQTTClient builds its own (tesaiot_data.mqtt.connection), except that the
    # baseline reads its socket as paho ships (read_buffer=False) unless asked otherwise.
    client = client_for(
        settings,
        client_id=f"bench-bare-{os.getpid()}-{time.monotonic_ns()}",
        clean_session=True,
        read_buffer=read_buffer,
    )
    subscribed = threading.Event()
    client.on_connect = lambda c, *_: c.subscribe(TELEMETRY_FILTER, 0)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(url.host, url.port, keepalive=60)
    client.loop_start()
    if not subscribed.wait(10):
        raise RuntimeError(f"bare client: no SUBACK from {url}")
    return client


def run_bare(
    bench: Bench,
    transport: str,
    count: int,
    *,
    on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
) -> Run:
    """N / (first to last message) for a paho client whose on_message only counts."""
    state = {"n": 0, "first": 0.0, "last": 0.0}

    def counting(_client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        if not state["n"]:
            state["first"] = now
        if on_message is not None:
            on_message(message)
            now = time.perf_counter()
        state["n"] += 1
        state["last"] = now

    client = _bare_client(bench, transport)
    client.on_message = counting
    try:
        with bench.cpu() as cpu:
            bench.publisher.start_flood(bench.packets(count))
            _wait_for(lambda: int(state["n"]), count)
        bench.publisher.wait()
    finally:
        client.disconnect()
        client.loop_stop()
    n = int(state["n"])
    span = state["last"] - state["first"]
    return Run(
        rate=n / span if n > 1 and span > 0 else 0.0,
        received=n,
        cpu_self=cpu["self"],
        cpu_broker=cpu["broker"],
        cpu_us=_per_message_us(cpu["seconds"], n),
    )


# --- 2. and 7. the collector ---------------------------------------------------------------


def run_collector(bench: Bench, transport: str, count: int, *, record: bool = False) -> Run:
    """N / (first message received to the moment all N messages are frame rows).

    The start is the first row's `received_at` (stamped in paho's on_message); the end is
    when a 5 ms poll of `stats` sees every message parsed and `wait_idle()` returns.
    """
    collector = Collector(bench.settings(transport), window=None, max_rows=1_000_000)
    collector.start()
    recording = None
    if record:
        recording = collector.record(bench.workdir / f"rec-{time.monotonic_ns()}.parquet")

    def handled() -> int:
        stats = collector.stats
        return stats.messages + stats.rejected + stats.dropped + stats.failed

    try:
        with bench.cpu() as cpu:
            bench.publisher.start_flood(bench.packets(count))
            _wait_for(handled, count)
            collector.wait_idle(timeout=_STALL_TIMEOUT)
            finished = time.time()
        bench.publisher.wait()
        stats = collector.stats
        received_at = pd.DatetimeIndex(collector.frame()["received_at"]).asi8 / 1e9
    finally:
        if recording is not None:
            recording.stop()
        collector.stop()
    first = received_at[0] if len(received_at) else finished
    last = received_at[-1] if len(received_at) else finished
    return Run(
        rate=stats.messages / (finished - first) if finished > first else 0.0,
        received=stats.received,
        net_rate=stats.received / (last - first) if last > first else None,
        dropped=stats.dropped,
        cpu_self=cpu["self"],
        cpu_broker=cpu["broker"],
        cpu_us=_per_message_us(cpu["seconds"], stats.received),
    )


# --- 3. the naive notebook approach --------------------------------------------------------


def naive_handler() -> Callable[[mqtt.MQTTMessage], None]:
    """The notebook way: parse each message and pd.concat a one-row frame onto the table."""
    table = {"df": pd.DataFrame()}

    def on_message(message: mqtt.MQTTMessage) -> None:
        _, device_id, _, sensor = message.topic.split("/", 3)
        data = json.loads(message.payload)
        row = {
            "timestamp": pd.to_datetime(data["timestamp"], utc=True),
            "device_id": device_id,
            "sensor_type": sensor,
            "metric": sensor,
            "value": float(data["value"]),
            "unit": data.get("unit"),
        }
        table["df"] = pd.concat([table["df"], pd.DataFrame([row])], ignore_index=True)

    return on_message


# --- 4. and 5. the 1M-row window -----------------------------------------------------------


def _device_ids(count: int) -> list[str]:
    rng = random.Random(5)
    return [
        f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-4{rng.getrandbits(12):03x}-"
        f"a{rng.getrandbits(12):03x}-{rng.getrandbits(48):012x}"
        for _ in range(count)
    ]


def window_batches(rows: int, start: float, devices: int = _DEVICES) -> Iterator[list[RawMessage]]:
    """Standard-shape messages, `devices` devices x 4 metrics round robin, 1 ms apart."""
    rng = random.Random(3)
    topics = [
        (f"device/{device}/telemetry/{metric}", _UNITS[metric])
        for device in _device_ids(devices)
        for metric in _WINDOW_METRICS
    ]
    for first in range(0, rows, _BATCH):
        batch = []
        for i in range(first, min(rows, first + _BATCH)):
            at = start + i * 0.001
            topic, unit = topics[i % len(topics)]
            whole = int(at)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
            payload = (
                f'{{"value": {rng.uniform(0, 100):.2f}, "unit": "{unit}", '
                f'"timestamp": "{stamp}.{int((at - whole) * 1000):03d}Z"}}'
            )
            batch.append(RawMessage(topic, payload.encode(), round(at * 1e9)))
        yield batch


def build_window(rows: int) -> tuple[RollingWindow, dict[str, float]]:
    """The collector's store, filled the way `Collector.ingest` fills it (no broker)."""
    start = time.time() - rows * 0.001
    _trim()
    rss0 = _rss()
    store = RollingWindow(window_ns=None, max_rows=1_000_000)
    t0 = time.perf_counter()
    for batch in window_batches(rows, start):
        store.append(parse_batch(batch), now_ns=time.time_ns())
    build_s = time.perf_counter() - t0
    _trim()
    rss_delta = _rss() - rss0
    return store, {
        "rows": store.rows,
        "nbytes_per_row": store.nbytes() / store.rows,
        "rss_per_row": rss_delta / store.rows,
        "build_s": build_s,
    }


def traced_bytes_per_row(rows: int, devices: int = _DEVICES) -> dict[str, float]:
    """Bytes tracemalloc sees the store keep (arrays, dictionaries, chunk objects) per row.

    The messages are parsed before tracing starts, so only `RollingWindow.append` and what
    it keeps are traced (parsing a million messages under tracemalloc takes minutes).
    """
    parsed: list[ColumnBatch] = [
        parse_batch(batch) for batch in window_batches(rows, time.time() - rows * 0.001, devices)
    ]
    gc.collect()
    store = RollingWindow(window_ns=None, max_rows=1_000_000)
    tracemalloc.start()
    try:
        for batch in parsed:
            store.append(batch, now_ns=time.time_ns())
        del parsed
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
        store.frame()  # the store caches the built frame until the rows change
        gc.collect()
        with_cache, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {
        "traced_per_row": held / store.rows,
        "with_cache_per_row": with_cache / store.rows,
        "nbytes_per_row": store.nbytes() / store.rows,
    }


def time_frames(store: RollingWindow, repeat: int) -> dict[str, list[float]]:
    """frame() timings: after new data (cache invalid), again (cached), and filtered."""
    one_batch = next(window_batches(10, time.time()))
    device = one_batch[0].topic.split("/")[1]
    times: dict[str, list[float]] = {"first": [], "cached": [], "filtered": [], "since": []}

    def timed(name: str, call: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        t0 = time.perf_counter()
        frame = call()
        times[name].append(time.perf_counter() - t0)
        return frame

    for _ in range(repeat):
        store.append(parse_batch(one_batch), now_ns=time.time_ns())  # new data: cache invalid
        gc.collect()
        whole = timed("first", store.frame)
        timed("cached", store.frame)
        small = timed("filtered", lambda: store.frame(devices=[device], metrics=["temperature"]))
        timed("since", lambda: store.frame(since_ns=time.time_ns() - 60 * 10**9))
        if len(whole) != store.rows or not 0 < len(small) < len(whole):
            raise RuntimeError(f"unexpected frame sizes {len(whole)}, {len(small)}")
        del whole, small
    return times


# --- 6. publish-to-frame latency -----------------------------------------------------------


def run_latency(bench: Bench, rate: float, seconds: float) -> dict[str, Any]:
    """Per row: when it first showed in the collector's frame minus its publish timestamp.

    A polling thread reads `stats.rows_total` every millisecond and notes when it grows.
    Rows are appended in arrival order, so row i became visible to `frame()` at the first
    poll that saw rows_total > i. The payload timestamp is the publisher's wall clock at
    publish time, rounded to the millisecond (same machine, same clock).
    """
    collector = Collector(bench.settings("wss"), window=None, max_rows=1_000_000)
    collector.start()
    marks: list[tuple[float, int]] = []
    stop = threading.Event()

    def poll() -> None:
        seen = 0
        while not stop.is_set():
            total = collector.stats.rows_total
            if total != seen:
                marks.append((time.time(), total))
                seen = total
            time.sleep(_LATENCY_POLL)

    poller = threading.Thread(target=poll, name="bench-latency-poller", daemon=True)
    poller.start()
    try:
        bench.publisher.start_paced(rate, seconds)
        _, published = bench.publisher.wait(seconds + 60)
        collector.wait_idle(5.0)
        time.sleep(0.1)
        stop.set()
        poller.join()
        frame = collector.frame()
    finally:
        stop.set()
        collector.stop()
    if not len(frame) or not marks:
        return {"rows": 0, "published": published}
    visible_at = np.empty(len(frame))
    done = 0
    for at, total in marks:
        visible_at[done:total] = at
        done = total
    stamp = pd.DatetimeIndex(frame["timestamp"]).asi8 / 1e9
    received = pd.DatetimeIndex(frame["received_at"]).asi8 / 1e9
    return {
        "rows": len(frame),
        "published": published,
        "achieved_rate": len(frame) / (received[-1] - received[0]),
        "frame_ms": np.percentile((visible_at - stamp) * 1000, [50, 90, 99, 100]),
        "receive_ms": np.percentile((received - stamp) * 1000, [50, 90, 99, 100]),
    }


# --- the report ----------------------------------------------------------------------------


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f}" if value == value else "-"  # NaN is not equal to itself


def _spread(values: Sequence[float], fmt: Callable[[float], str] = _fmt_rate) -> str:
    return f"{fmt(min(values))}-{fmt(max(values))}" if values else "-"


def _median_of(values: Sequence[float | None]) -> float:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else float("nan")


def _machine() -> str:
    mosquitto = "?"
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["mosquitto", "-h"], capture_output=True, text=True, timeout=5, check=False
        )
        mosquitto = (out.stdout or out.stderr).splitlines()[0].split()[-1]
    return (
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, nproc={os.cpu_count()}, "
        f"python={platform.python_version()}, paho-mqtt={version('paho-mqtt')}, "
        f"pandas={pd.__version__}, pyarrow={version('pyarrow')}, numpy={np.__version__}, "
        f"mosquitto={mosquitto}"
    )


def _load() -> str:
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "?"


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISS"


_HEADER = (
    f"{'case':<24}{'median':>9} {'min-max':>16}  {'vs same-run baseline':<34}"
    f"{'cpu us/msg':>10} {'cpu self/broker':>16}"
)


def _row(name: str, case: Case, versus: str) -> str:
    cpu_us = _median_of([r.cpu_us for r in case.runs])
    own = _median_of([r.cpu_self for r in case.runs]) * 100
    broker = _median_of([r.cpu_broker for r in case.runs]) * 100
    return (
        f"{name:<24}{_fmt_rate(case.median):>9} {_spread(case.rates()):>16}  {versus:<34}"
        f"{cpu_us:>10.1f} {f'{own:.0f}% / {broker:.0f}%':>16}"
    )


def _report_throughput(results: dict[str, Case]) -> None:
    print("THROUGHPUT, msg/s (collector: first message received -> all N are frame rows)")
    print(_HEADER)
    print("-" * len(_HEADER))
    baseline = {"wss": results["bare wss"].median, "tcp": results["bare tcp"].median}
    plain_wss = results["collector wss"].median
    for name, case in results.items():
        transport = name.split()[1]
        ratio = case.median / baseline[transport]
        if name.startswith("bare"):
            versus = "ceiling"
        elif "record" in name:
            slower = (1 - case.median / plain_wss) * 100
            versus = f"{ratio:.2f}x bare; {slower:+.0f}% slower [{_mark(slower < 10)} <10%]"
        else:
            versus = f"{ratio:.2f}x bare {transport}"
            if transport == "wss":
                ok = ratio >= 0.9 and case.median >= 5_000
                versus += f" [{_mark(ok)} >=0.9, >=5k]"
        print(_row(name, case, versus))
    for name in ("collector wss", "collector tcp"):
        runs = results[name].runs
        bare = results[f"bare {name.split()[1]}"].runs
        ratios = ", ".join(f"{r.rate / b.rate:.2f}" for r, b in zip(runs, bare, strict=True))
        network = _fmt_rate(_median_of([r.net_rate for r in runs]))
        print(
            f"  {name}: ratio per repeat {ratios}; its network thread alone {network} msg/s; "
            f"dropped {sum(r.dropped for r in runs)}"
        )
    costs = [
        f"{(1 - rec.rate / plain.rate) * 100:+.0f}%"
        for rec, plain in zip(
            results["collector wss +record"].runs, results["collector wss"].runs, strict=True
        )
    ]
    print(f"  record() cost per repeat (paired): {', '.join(costs)}")


def _report_window(
    memory: dict[str, float],
    traced: dict[str, float],
    frames: dict[str, list[float]],
    many: dict[str, float],
) -> None:
    print()
    rows = int(memory["rows"])
    held = traced["traced_per_row"]
    print(f"WINDOW of {rows:,} rows (50 devices x 4 metrics; RollingWindow fed by parse_batch)")
    print(
        f"  bytes/row: nbytes() {memory['nbytes_per_row']:.1f}; tracemalloc {held:.1f} "
        f"[{_mark(held <= 40)} <=40]; RSS delta {memory['rss_per_row']:.1f}; "
        f"tracemalloc incl. the cached frame() {traced['with_cache_per_row']:.1f}"
    )
    held_many = many["traced_per_row"]
    print(
        f"  bytes/row with {_MANY_DEVICES:,} distinct device ids (x 4 metrics): nbytes() "
        f"{many['nbytes_per_row']:.1f}; tracemalloc {held_many:.1f} [{_mark(held_many <= 40)} "
        "<=40] (the dictionary of 100,000 ids is about 9 of them)"
    )
    print(f"  filled in {memory['build_s']:.1f} s ({rows / memory['build_s']:,.0f} rows/s)")

    def ms(values: list[float]) -> str:
        spread = _spread(values, lambda v: f"{v * 1000:.1f}")
        return f"median {statistics.median(values) * 1000:6.1f} ms ({spread})"

    first = statistics.median(frames["first"])
    print(f"  frame() after new data     {ms(frames['first'])} [{_mark(first < 0.3)} <300 ms]")
    print(f"  frame() again (cached)     {ms(frames['cached'])}")
    print(f"  frame(1 device, 1 metric)  {ms(frames['filtered'])}")
    print(f"  frame(since 60 s ago)      {ms(frames['since'])}")


def _report_latency(latency: dict[str, Any], label: str = "") -> None:
    print()
    if not latency.get("rows"):
        print(f"LATENCY{label}: no rows arrived ({latency})")
        return
    f50, f90, f99, fmax = latency["frame_ms"]
    r50, r90, r99, rmax = latency["receive_ms"]
    print(
        f"LATENCY{label} at {latency['achieved_rate']:,.0f} msg/s over WSS: "
        f"{latency['rows']:,} rows of {latency['published']:,} published"
    )
    print(
        f"  publish -> visible in frame(): p50 {f50:5.1f} ms, p90 {f90:5.1f}, p99 {f99:5.1f}, "
        f"max {fmax:6.1f} [{_mark(f99 < 500)} p99 <500 ms]"
    )
    print(
        f"  publish -> received by paho:   p50 {r50:5.1f} ms, p90 {r90:5.1f}, p99 {r99:5.1f}, "
        f"max {rmax:6.1f}"
    )


# --- main ----------------------------------------------------------------------------------


@dataclass
class Options:
    """What to run and how much."""

    sections: set[str]
    count: int
    repeat: int
    naive_count: int
    latency_seconds: float
    window_rows: int


def _options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, under a minute")
    parser.add_argument("--messages", type=int, help="messages per throughput run")
    parser.add_argument("--repeat", type=int, help="repeats of every throughput case")
    parser.add_argument("--naive-messages", type=int, help="messages for the pd.concat case")
    parser.add_argument("--window-rows", type=int, help="rows of the window (default 1M)")
    parser.add_argument("--latency-seconds", type=float, help="length of the latency run")
    parser.add_argument(
        "--only",
        default="throughput,naive,latency,window",
        help="comma-separated sections to run: throughput, naive, latency, window",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    return Options(
        sections=set(args.only.split(",")),
        count=args.messages or (20_000 if quick else 200_000),
        repeat=args.repeat or (2 if quick else 3),
        naive_count=args.naive_messages or (1_000 if quick else 5_000),
        latency_seconds=args.latency_seconds or (3.0 if quick else 15.0),
        window_rows=args.window_rows or (250_000 if quick else 1_000_000),
    )


def main(argv: Sequence[str] | None = None) -> None:
    options = _options(argv)
    sections = options.sections
    started = time.monotonic()
    print(f"collector_bench: {_machine()}")
    print(f"load average at start: {_load()}", flush=True)

    results: dict[str, Case] = {}
    naive: Run | None = None
    latency: dict[str, Any] | None = None
    if sections & {"throughput", "naive", "latency"}:
        with (
            tempfile.TemporaryDirectory(prefix="collector-bench-") as tmp,
            LocalBroker() as broker,
        ):
            publisher = Publisher(broker.publisher())
            bench = Bench(broker, publisher, Path(tmp))
            try:
                # Warm-up: TLS, imports, the parser's caches, the publisher process.
                run_bare(bench, "wss", 5_000)
                run_collector(bench, "wss", 5_000)
                if "throughput" in sections:
                    print(
                        f"throughput: {options.count:,} messages x {options.repeat} repeats "
                        f"per case; {_DEVICES} devices, standard payloads, QoS 0; publisher: "
                        "a separate process flooding pre-encoded packets",
                        flush=True,
                    )
                    results = run_throughput(bench, options.count, options.repeat)
                if "naive" in sections:
                    naive = run_bare(bench, "wss", options.naive_count, on_message=naive_handler())
                if "latency" in sections:
                    latency = run_latency(bench, _LATENCY_RATE, options.latency_seconds)
            finally:
                publisher.close()
    window = None
    if "window" in sections:
        store, memory = build_window(options.window_rows)
        frames = time_frames(store, _FRAME_REPEAT)
        del store
        _trim()
        many = traced_bytes_per_row(options.window_rows, _MANY_DEVICES)
        window = (memory, traced_bytes_per_row(options.window_rows), frames, many)

    print()
    if results:
        _report_throughput(results)
    if naive is not None:
        base = results["bare wss"].median if results else float("nan")
        print(
            f"{'naive pd.concat wss':<24}{_fmt_rate(naive.rate):>9} {'(1 run)':>16}  "
            f"{naive.rate / base:.4f}x bare wss ({options.naive_count:,} messages)"
        )
    if window is not None:
        _report_window(*window)
    if latency is not None:
        _report_latency(latency)
    print(f"\nload average at end: {_load()}; total {time.monotonic() - started:.0f} s")


def run_throughput(bench: Bench, count: int, repeat: int) -> dict[str, Case]:
    """Every throughput case once per repeat, interleaved, the order reversed every other."""
    cases: dict[str, Callable[[], Run]] = {
        "bare wss": lambda: run_bare(bench, "wss", count),
        "collector wss": lambda: run_collector(bench, "wss", count),
        "collector wss +record": lambda: run_collector(bench, "wss", count, record=True),
        "bare tcp": lambda: run_bare(bench, "tcp", count),
        "collector tcp": lambda: run_collector(bench, "tcp", count),
    }
    results = {name: Case(name) for name in cases}
    for rep in range(repeat):
        order = list(cases) if rep % 2 == 0 else list(reversed(cases))
        for name in order:
            results[name].runs.append(cases[name]())
        print(f"  repeat {rep + 1}/{repeat} done, load average {_load()}", flush=True)
    return results


if __name__ == "__main__":
    main()
