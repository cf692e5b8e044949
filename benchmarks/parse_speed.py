"""Time parse_batch on 100k standard-shape and 100k mixed-shape messages.

Run with `python benchmarks/parse_speed.py [--messages N] [--repeat R]`; prints messages/s
(the best of R runs) for each workload. The collector needs well over 10,000 messages/s.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

from tesaiot_data.messages import ColumnBatch, RawMessage
from tesaiot_data.parse.rows import parse_batch

_START = 1_765_276_245.0  # 2025-12-09T10:30:45Z


def _iso(seconds: float) -> str:
    whole = int(seconds)
    millis = int((seconds - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def standard(i: int, rng: random.Random) -> RawMessage:
    at = _START + i * 0.01
    payload = {"value": round(rng.uniform(20, 30), 2), "unit": "celsius", "timestamp": _iso(at)}
    return RawMessage(
        f"device/dev-{i % 50}/telemetry/temperature", json.dumps(payload).encode(), round(at * 1e9)
    )


def mixed(i: int, rng: random.Random) -> RawMessage:
    at = _START + i * 0.01
    device = f"dev-{i % 50}"
    kind = i % 6
    if kind == 0:
        return standard(i, rng)
    if kind == 1:
        topic = f"device/{device}/telemetry/bme280"
        payload: object = {
            "timestamp": int(at * 1000),
            "temperature": rng.uniform(20, 30),
            "humidity": rng.randint(30, 90),
            "battery": 3.7,
            "ai_prediction": "normal",
        }
    elif kind == 2:
        topic = f"device/{device}/telemetry"
        payload = {
            "timestamp": _iso(at),
            "device_id": device,
            "sensor_type": "DPS368",
            "data": {"pressure": rng.uniform(990, 1030), "temperature": rng.uniform(20, 30)},
        }
    elif kind == 3:
        topic = f"device/{device}/telemetry/imu"
        payload = {
            "ts": at,
            "data": {"accel": {"x": rng.random(), "y": rng.random(), "z": 9.81}, "ok": True},
        }
    elif kind == 4:
        topic = f"device/{device}/telemetry/level"
        payload = rng.uniform(0, 100)
    else:
        topic = f"device/{device}/telemetry/batch"
        payload = [{"value": rng.random(), "timestamp": _iso(at - k)} for k in range(3)]
    return RawMessage(topic, json.dumps(payload).encode(), round(at * 1e9))


def run(
    name: str, make: Callable[[int, random.Random], RawMessage], count: int, repeat: int
) -> None:
    rng = random.Random(7)
    messages = [make(i, rng) for i in range(count)]
    best = float("inf")
    batch = ColumnBatch()
    for _ in range(repeat):
        started = time.perf_counter()
        batch = parse_batch(messages)
        best = min(best, time.perf_counter() - started)
    if batch.messages != count or batch.rejects:
        raise SystemExit(f"{name}: expected {count} parsed messages, got {batch!r}")
    print(
        f"{name:>8}: {count:,} messages, {len(batch):,} rows in {best * 1000:.0f} ms = "
        f"{count / best:,.0f} messages/s, {len(batch) / best:,.0f} rows/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    run("standard", standard, args.messages, args.repeat)
    run("mixed", mixed, args.messages, args.repeat)


if __name__ == "__main__":
    main()
