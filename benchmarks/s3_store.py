"""Object storage against a local folder: writing, compacting and querying a dataset.

Run with `python benchmarks/s3_store.py [--rows N] [--day-rows N]`. It starts moto's S3
server (`pip install 'moto[server]'`, in the test extras) on a free loopback port and reaches
it only through `AWS_ENDPOINT_URL`, as a MinIO would be reached. In one run, the same rows go:

- through `DatasetWriter` (flushes of 125,000 rows, one object per flush and day) and through
  `Recorder` (parts, then the merge at stop) to a local folder and to `s3://`;
- one day of `--day-rows` rows in 125,000-row parts is compacted by `compact_dataset` on
  `s3://` in a child process, whose peak RSS is reported beside that of a child that only
  imports the package and lists the dataset (the baseline);
- `query()` of an hourly aggregate over the local dataset and over the S3 one.

moto keeps objects in memory and runs on the same machine: the figures show the package's
own cost on a store (a server-side copy per object, HTTP per request), not a network's. It is
a benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from tesaiot_data import query
from tesaiot_data.demo.broker import free_port
from tesaiot_data.sinks.dataset import DatasetWriter
from tesaiot_data.sinks.recorder import Recorder

FLUSH_ROWS = 125_000
HOURLY = (
    "select device_id, metric, date_trunc('hour', timestamp) as hour, avg(value) as mean, "
    "count(*) as n from telemetry group by all order by all"
)


def frame(rows: int, *, start: str = "2025-12-09", span_s: float = 86_000) -> pd.DataFrame:
    """`rows` rows of 50 devices x 4 metrics spread over `span_s` seconds."""
    rng = np.random.default_rng(0)
    times = pd.Timestamp(start, tz="UTC") + pd.to_timedelta(np.linspace(0, span_s, rows), unit="s")
    index = np.arange(rows)
    return pd.DataFrame(
        {
            "timestamp": times,
            "received_at": times,
            "device_id": pd.Categorical.from_codes(index % 50, [f"dev-{i:03d}" for i in range(50)]),
            "sensor_type": pd.Categorical.from_codes(np.zeros(rows, int), ["env"]),
            "metric": pd.Categorical.from_codes(index % 4, ["t", "h", "p", "b"]),
            "value": rng.normal(20, 5, rows),
            "unit": pd.Categorical.from_codes(np.zeros(rows, int), ["C"]),
            "value_text": pd.Categorical.from_codes(np.full(rows, -1), ["on"]),
        }
    )


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    import urllib.request  # noqa: PLC0415

    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    pafs.S3FileSystem(
        endpoint_override=endpoint.removeprefix("http://"),
        scheme="http",
        region="us-east-1",
        access_key="bench",
        secret_key="bench-secret",
        allow_bucket_creation=True,
    ).create_dir("bench")
    return process, endpoint


def write_dataset(rows: pd.DataFrame, root: str) -> float:
    started = time.perf_counter()
    writer = DatasetWriter(root, flush_every=0)
    for low in range(0, len(rows), FLUSH_ROWS):
        writer.add(rows.iloc[low : low + FLUSH_ROWS])
        writer.flush()
    writer.close()
    return len(rows) / (time.perf_counter() - started)


def record(rows: pd.DataFrame, path: str) -> float:
    started = time.perf_counter()
    recorder = Recorder(path, flush_every=0)
    for low in range(0, len(rows), FLUSH_ROWS):
        recorder.add(rows.iloc[low : low + FLUSH_ROWS])
        recorder.flush()
    recorder.stop()
    return len(rows) / (time.perf_counter() - started)


_CHILD = """
import sys, time
from tesaiot_data import compact_dataset, load_recording
from tesaiot_data.files.layout import recording_files
from tesaiot_data.files.store import location
started = time.perf_counter()
if sys.argv[1] == "compact":
    result = compact_dataset(sys.argv[2], before="2100-01-01")
    print(result.rows, result.parts, end=" ")
else:
    print(len(recording_files(location(sys.argv[2]))), 0, end=" ")
# VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec.
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(time.perf_counter() - started, peak)
"""


def child(kind: str, url: str) -> tuple[str, float, float]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, url], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(done.stderr)
    out = done.stdout.split()
    return f"{out[0]} rows / {out[1]} files", float(out[2]), int(out[3]) / 1024


def timed_query(source: str) -> tuple[float, int]:
    started = time.perf_counter()
    result = query(source, HOURLY)
    return time.perf_counter() - started, len(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows written (1M)")
    parser.add_argument("--day-rows", type=int, default=2_000_000, help="rows compacted (2M)")
    args = parser.parse_args()
    process, endpoint = start_moto()
    try:
        rows = frame(args.rows)
        with tempfile.TemporaryDirectory(prefix="bench-s3-") as temp:
            local = Path(temp)
            print(f"moto at {endpoint}; {args.rows:,} rows, flushes of {FLUSH_ROWS:,}")
            for name, run, local_target, s3_target in (
                ("DatasetWriter", write_dataset, str(local / "ds"), "s3://bench/ds"),
                ("Recorder", record, str(local / "rec.parquet"), "s3://bench/rec.parquet"),
            ):
                local_rate, s3_rate = run(rows, local_target), run(rows, s3_target)
                print(
                    f"{name:<14} local {local_rate:>12,.0f} rows/s   s3 {s3_rate:>12,.0f} rows/s"
                    f"   ({s3_rate / local_rate:.2f}x)"
                )
            for source in (str(local / "ds"), "s3://bench/ds"):
                seconds, groups = timed_query(source)
                print(f"query hourly   {source:<28} {seconds:6.2f} s ({groups:,} groups)")
            day = frame(args.day_rows, start="2025-12-01", span_s=86_000)
            write_dataset(day, "s3://bench/day")
            _, seconds, base = child("list", "s3://bench/day")
            what, seconds, peak = child("compact", "s3://bench/day")
            print(
                f"compact day    s3 {what}: {seconds:.1f} s, peak RSS {peak:,.0f} MiB "
                f"(a child that only lists it: {base:,.0f} MiB)"
            )
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    main()
