"""Make notebooks/data/sample_recording.parquet, the recording the offline notebook analyses.

The data goes the whole real way: simulated devices (`DeviceFleet`) publish to the local
broker (`LocalBroker`), a `Collector` subscribes over WSS with the demo token and records the
session with `Collector.record()`, and the file is read back with `load_recording()`.

It is deterministic. The fleets are seeded and stamp their messages from a simulated clock
(one hour from 2025-06-02 08:00 UTC, one message per device about every 3 s), and are driven
with `DeviceFleet.publish()` at QoS 1, so every value and timestamp is the same on every run.
Only the arrival times (`received_at`) come from the wall clock; they are replaced by
`timestamp + 40 ms` and the rows sorted by time, device and metric, so the file's content is
the same on every run (and byte for byte with the same pyarrow).

Two things are in it on purpose, for the notebook to find:

- a gap: device 5 (its own fleet) is silent from 08:20 to 08:32 UTC;
- an anomaly: one over-temperature reading (39.5 celsius at 08:45 UTC) from device 2,
  published by hand with the publisher account.

Usage::

    .venv/bin/python scripts/make_sample_data.py [--out notebooks/data/sample_recording.parquet]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pandas as pd

from tesaiot_data import Collector, load_recording
from tesaiot_data.demo.broker import LocalBroker, PublisherConfig
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.files.parquet import write_frame

START = datetime(2025, 6, 2, 8, 0, tzinfo=timezone.utc).timestamp()
DURATION = 3600.0  # seconds of simulated time
STEP = 3.0  # seconds between two messages of one device
GAP = (START + 20 * 60, START + 32 * 60)  # the flaky device is silent in between
SPIKE_AT = START + 45 * 60 + 1.5
SPIKE_VALUE = 39.5
LATENCY_NS = 40_000_000  # the fixed arrival delay written as received_at
DEFAULT_OUT = (
    Path(__file__).resolve().parent.parent / "notebooks" / "data" / "sample_recording.parquet"
)


class SimClock:
    """A clock the fleets read once per message: the step's time plus a seeded jitter."""

    def __init__(self, seed: int) -> None:
        self.now = START
        self._rng = random.Random(seed)

    def __call__(self) -> float:
        return self.now + self._rng.uniform(0.0, 0.4)


def publish_spike(config: PublisherConfig, device_id: str) -> None:
    """Publish one over-temperature reading as device `device_id`, at QoS 1."""
    options = {"client_id": "sample-spike", "protocol": mqtt.MQTTv311}
    if hasattr(mqtt, "CallbackAPIVersion"):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **options)
    else:
        client = mqtt.Client(**options)
    client.username_pw_set(config.username, config.password)
    client.connect(config.host, config.port)
    client.loop_start()
    stamp = datetime.fromtimestamp(SPIKE_AT, tz=timezone.utc).isoformat(timespec="milliseconds")
    payload = json.dumps({"value": SPIKE_VALUE, "unit": "celsius", "timestamp": stamp})
    info = client.publish(f"device/{device_id}/telemetry/temperature", payload, qos=1)
    info.wait_for_publish(timeout=10)
    client.disconnect()
    client.loop_stop()


def record_session(workdir: Path) -> tuple[pd.DataFrame, int]:
    """Run broker, fleets and collector; return the recorded rows and the messages sent."""
    with LocalBroker() as broker:
        collector = Collector(broker.settings(), window=None).start()
        recording = collector.record(workdir / "raw.parquet")
        clock = SimClock(seed=1)
        steady = DeviceFleet(broker.publisher(), devices=4, seed=2024, qos=1, clock=clock)
        flaky = DeviceFleet(broker.publisher(), devices=1, seed=7, qos=1, clock=clock)
        sent = 0
        try:
            for step in range(int(DURATION / STEP)):
                clock.now = START + step * STEP
                sent += steady.publish(4)
                if not GAP[0] <= clock.now < GAP[1]:
                    sent += flaky.publish(1)
                if clock.now <= SPIKE_AT < clock.now + STEP:
                    publish_spike(broker.publisher(), steady.device_ids[1])
                    sent += 1
            deadline = time.monotonic() + 30
            while collector.stats.messages + collector.stats.rejected < sent:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {collector.stats.received} of {sent} arrived")
                time.sleep(0.05)
            path = recording.stop()
        finally:
            steady.stop()
            flaky.stop()
            collector.stop()
        return load_recording(path), sent


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Replace the wall-clock arrival times and put the rows in a reproducible order."""
    frame = frame.assign(received_at=frame["timestamp"] + pd.Timedelta(LATENCY_NS, unit="ns"))
    order = frame.assign(
        _device=frame["device_id"].astype(str),
        _sensor=frame["sensor_type"].astype(str),
        _metric=frame["metric"].astype(str),
    ).sort_values(["timestamp", "_device", "_sensor", "_metric"], kind="stable")
    return frame.loc[order.index].reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Parquet file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="tesaiot-sample-") as tmp:
        frame, sent = record_session(Path(tmp))
    frame = normalise(frame)
    path = write_frame(
        frame,
        args.out,
        metadata={
            "source": "scripts/make_sample_data.py",
            "description": "demo fleet, 5 devices, 1 h; a gap (08:20-08:32) and a spike (08:45)",
        },
    )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    print(f"{sent} messages -> {len(frame)} rows from {frame['device_id'].nunique()} devices")
    print(f"wrote {path} ({path.stat().st_size:,} bytes, sha256 {digest}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
