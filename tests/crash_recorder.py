"""Record a few parts, then wait to be killed: the subject of the kill -9 test.

Usage: python crash_recorder.py PATH PARTS ROWS

Flushes PARTS parts of ROWS rows each (plus one reject per part), adds one more batch that is
never flushed, prints `flushed PARTS` and blocks until killed. `batch(i, rows)` is imported by
the test to know which rows to expect.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from tesaiot_data.messages import Reject, RejectReason
from tesaiot_data.sinks.recorder import Recorder

T0 = pd.Timestamp("2025-12-09T12:00:00", tz="UTC")


def batch(index: int, rows: int) -> pd.DataFrame:
    """Rows of batch `index`; every batch has its own device names (a new category list)."""
    start = T0 + pd.Timedelta(seconds=index)
    times = start + pd.to_timedelta(np.arange(rows) * 1_000_000, unit="ns")
    return pd.DataFrame(
        {
            "timestamp": times,
            "received_at": times + pd.Timedelta(milliseconds=5),
            "device_id": pd.Categorical([f"dev-{index}-{i % 3}" for i in range(rows)]),
            "sensor_type": pd.Categorical(["env"] * rows),
            "metric": pd.Categorical(
                ["temperature", "humidity"] * (rows // 2) + ["x"] * (rows % 2)
            ),
            "value": np.arange(rows, dtype="float64") + index * 1000,
            "unit": pd.Categorical(["C"] * rows),
            "value_text": pd.Categorical([None] * rows),
        }
    )


def reject(index: int) -> Reject:
    """The reject added with batch `index`."""
    return Reject(
        topic=f"device/dev-{index}/telemetry",
        payload=b"\xff\x00not json",
        payload_size=4096,
        reason=RejectReason.NOT_JSON,
        detail="bad",
        received_ns=T0.value + index * 10**9,
    )


def main() -> None:
    """Record, flush, announce and wait."""
    path, parts, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    recorder = Recorder(path, flush_every=0.01)
    for index in range(parts):
        recorder.add(batch(index, rows), [reject(index)])
        while not recorder.flush_due():
            time.sleep(0.001)
        recorder.flush()
    recorder.add(batch(parts, rows), [reject(parts)])  # pending when the process dies
    print(f"flushed {parts}", flush=True)
    sys.stdin.read()  # the test never writes: SIGKILL ends us here


if __name__ == "__main__":
    main()
