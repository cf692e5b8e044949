"""What the live dashboard costs: its payloads, its refresh time, and its toll on ingest.

Run with `python benchmarks/dashboard_cost.py [--quick] [--messages N] [--rounds R]`.

1. Payloads (no broker): a `LiveChart` holding 50 devices x 10,000 points of a 5-minute
   window; the bytes and time of sending the whole window (min/max per pixel bucket, on a
   new view or selection), of one refresh's new points (1 s of 50 devices at 33 points/s),
   and of a zoom's detail (a tenth of the window). JSON of the same numbers for contrast.
2. Refresh time (no broker): `Dashboard.refresh()` of a collector holding those 500,000
   rows, interactive (only the new rows go out) and matplotlib (a PNG per refresh).
3. The toll on ingest: a local Mosquitto (WSS), a publisher process flooding pre-encoded
   packets of 50 devices, and the collector's ingest rate with and without a dashboard that
   refreshes itself every second (its own timer thread, as in a notebook), in paired rounds
   of alternating order, so that background load spreads over both.

It is a benchmark, not a test: nothing is asserted. Figures on a shared 2-core machine are
noisy; the spread of the rounds is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from collector_bench import Bench, Publisher, _machine, _wait_for

from tesaiot_data.collector.collector import Collector
from tesaiot_data.dashboard import Dashboard
from tesaiot_data.dashboard.live_chart import LiveChart
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.demo.flood import fleet_packets
from tesaiot_data.messages import RawMessage
from tesaiot_data.settings import Settings

DEVICES = 50
POINTS = 10_000
WINDOW_MS = 300_000.0


def _best(seconds: list[float]) -> str:
    return f"{1e3 * statistics.median(seconds):.1f} ms (min {1e3 * min(seconds):.1f})"


def payloads(repeat: int) -> None:
    rng = np.random.default_rng(0)
    now = time.time() * 1e3
    ids = [f"{i:08x}-5eed-4a11-b0b0-{i:012x}" for i in range(DEVICES)]
    data = {}
    for device in ids:
        t = np.sort(rng.uniform(now - WINDOW_MS, now, POINTS))
        data[device] = (t, rng.normal(25, 2, POINTS))
    chart = LiveChart()
    window_s, window_b = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        window_b = chart.set_data(
            data, metric="temperature", unit="C", now_ms=now, window_ms=WINDOW_MS
        )
        window_s.append(time.perf_counter() - started)
    new = {d: (np.sort(rng.uniform(now, now + 1_000, 33)), rng.normal(25, 2, 33)) for d in ids}
    append_s, append_b = [], 0
    for k in range(repeat):
        shifted = {d: (t + 1_000 * k, y) for d, (t, y) in new.items()}
        started = time.perf_counter()
        append_b = chart.append(shifted, now_ms=now + 1_000 * (k + 1))
        append_s.append(time.perf_counter() - started)
    detail_s, detail_b = [], 0
    for _ in range(repeat):
        before = chart.bytes_sent
        started = time.perf_counter()
        chart._send_range(now - WINDOW_MS / 10, now, 900)
        detail_s.append(time.perf_counter() - started)
        detail_b = chart.bytes_sent - before
    raw = DEVICES * POINTS * 16
    as_json = len(json.dumps({d: [t.tolist(), y.tolist()] for d, (t, y) in data.items()}))
    print(f"1. payloads: {DEVICES} devices x {POINTS:,} points, plot 900 px wide")
    print(f"   all points as float64:        {raw / 1e6:7.2f} MB (as JSON: {as_json / 1e6:.1f} MB)")
    print(f"   the window (min/max thinned): {window_b / 1e6:7.2f} MB in {_best(window_s)}")
    print(f"   one refresh's new points:     {append_b / 1e3:7.2f} kB in {_best(append_s)}")
    print(f"   a zoom to a tenth:            {detail_b / 1e6:7.2f} MB in {_best(detail_s)}")
    chart.close()


def _reading(device: str, value: float, stamp_ns: int, received_ns: int) -> RawMessage:
    iso = pd.Timestamp(stamp_ns, tz="UTC").isoformat()
    payload = json.dumps({"value": value, "unit": "celsius", "timestamp": iso}).encode()
    return RawMessage(f"device/{device}/telemetry/temperature", payload, received_ns)


def refresh_times(repeat: int, points: int) -> None:
    settings = Settings(token="tesa_mqtt_bench_" + "B" * 32, broker_url="mqtt://127.0.0.1:1")
    collector = Collector(settings, window="15min", max_rows=2_000_000)
    now_ns = time.time_ns()
    ids = [f"{i:08x}-5eed-4a11-b0b0-{i:012x}" for i in range(DEVICES)]
    step = int(WINDOW_MS * 1e6 / points)
    batch = []
    for k in range(points):
        stamp = now_ns - int(WINDOW_MS * 1e6) + k * step
        batch.extend(_reading(d, 25.0 + (k % 7), stamp, stamp) for d in ids)
        if len(batch) >= 20_000:
            collector.ingest(batch)
            batch = []
    collector.ingest(batch)
    print(f"2. Dashboard.refresh() of {DEVICES * points:,} rows ({DEVICES} devices):")
    for interactive in (True, False):
        dash = Dashboard(collector, metric="temperature", refresh="1h", interactive=interactive)
        seconds = []
        for k in range(repeat):
            received = time.time_ns()
            collector.ingest([_reading(d, 25.0 + k, received, received) for d in ids])
            started = time.perf_counter()
            dash.refresh()
            seconds.append(time.perf_counter() - started)
        kind = "interactive" if interactive else "matplotlib "
        sent = ""
        if isinstance(dash.chart, LiveChart):
            sent = f", {dash.chart.bytes_sent / dash.chart.messages_sent / 1e3:.1f} kB/message avg"
        print(f"   {kind}: {_best(seconds)} per refresh{sent}")
        dash.close()


def ingest_rate(bench: Bench, count: int, *, dashboard: bool) -> tuple[float, int]:
    collector = Collector(bench.settings("wss"), window="15min", max_rows=2_000_000).start()
    dash = None
    if dashboard:
        dash = Dashboard(collector, metric="temperature", window="5min", refresh="1s")

    def handled() -> int:
        stats = collector.stats
        return stats.messages + stats.rejected + stats.dropped + stats.failed

    fleet = DeviceFleet(bench.broker.publisher(), devices=DEVICES, mixed_shapes=False, malformed=0)
    path = bench.workdir / f"packets-{time.monotonic_ns()}.bin"  # the publisher caches by name
    path.write_bytes(fleet_packets(fleet, count))  # fresh stamps: inside the chart's window
    try:
        bench.publisher.start_flood(path)
        _wait_for(handled, count)
        collector.wait_idle(timeout=20)
        finished = time.time()
        bench.publisher.wait()
        received_at = pd.DatetimeIndex(collector.frame()["received_at"]).asi8 / 1e9
        messages = collector.stats.messages
        frames = dash.frames if dash is not None else 0
    finally:
        if dash is not None:
            dash.close()
        collector.stop()
    first = received_at[0] if len(received_at) else finished
    rate = messages / (finished - first) if finished > first else 0.0
    print(
        f"   {'with' if dashboard else 'no'} dashboard: {messages:,} messages in "
        f"{finished - first:.2f} s: {rate:,.0f} msg/s, {frames} refreshes",
        flush=True,
    )
    return rate, frames


def ingest_toll(count: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dashboard-cost-") as tmp, LocalBroker() as broker:
        publisher = Publisher(broker.publisher())
        bench = Bench(broker, publisher, Path(tmp))
        try:
            ingest_rate(bench, 5_000, dashboard=True)  # warm-up
            without: list[float] = []
            with_dash: list[float] = []
            refreshes: list[int] = []
            for k in range(rounds):
                order = (False, True) if k % 2 == 0 else (True, False)
                for use in order:
                    rate, frames = ingest_rate(bench, count, dashboard=use)
                    (with_dash if use else without).append(rate)
                    if use:
                        refreshes.append(frames)
        finally:
            publisher.close()
    ratios = [w / o for w, o in zip(with_dash, without, strict=True)]
    print(f"3. ingest over WSS, {count:,} messages a round, {rounds} paired rounds:")
    print(
        f"   without a dashboard: median {statistics.median(without):,.0f} msg/s "
        f"({', '.join(f'{r:,.0f}' for r in without)})"
    )
    print(
        f"   with one refreshing: median {statistics.median(with_dash):,.0f} msg/s "
        f"({', '.join(f'{r:,.0f}' for r in with_dash)}); refreshes a round: {refreshes}"
    )
    median = statistics.median(ratios)
    print(
        f"   ratio per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
        f"median {median:.3f} (cost {100 * (1 - median):.1f} %)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=4, help="paired rounds")
    parser.add_argument("--quick", action="store_true", help="small and short: a smoke run")
    parser.add_argument("--sections", default="payloads,refresh,ingest")
    options = parser.parse_args(argv)
    if options.quick:
        options.messages, options.rounds = 30_000, 1
    sections = set(options.sections.split(","))
    print(f"dashboard_cost: {_machine()}", flush=True)
    repeat = 3 if options.quick else 10
    if "payloads" in sections:
        payloads(repeat)
    if "refresh" in sections:
        refresh_times(repeat, 1_000 if options.quick else POINTS)
    if "ingest" in sections:
        ingest_toll(options.messages, options.rounds)


if __name__ == "__main__":
    sys.exit(main())
