"""SQL over a recording larger than memory: DuckDB under a memory limit against pandas.

Run with `python benchmarks/big_query.py [--rows 30000000] [--memory-limit 256MB] [--quick]`.
It needs the `sql` extra (DuckDB). Steps:

1. Generate a hive dataset `date=YYYY-MM-DD/part-NNNNNN.parquet` of `--rows` rows in a
   temporary folder (on /tmp by default; `--dir` moves it): `--devices` simulated devices
   publishing standard payloads in turn, evenly over `--days` days, one row per message
   (metric = sensor type: temperature, humidity, pressure, motion, battery). Devices, their
   base values and sensor order come from `DeviceFleet(seed=...)`, and the values follow
   its model (daily temperature and humidity cycles, pressure noise, motion events, a
   draining battery), computed as numpy columns a million rows at a time and written with
   the canonical schema by `tesaiot_data.files.parquet.write_table`, not through a broker.
2. Run the per-device hourly aggregate (avg/min/max/count per device, metric and UTC hour)
   with `tesaiot_data.query` over the whole dataset with a DuckDB memory limit far below
   the rows' size in memory, and without a limit; the same for an exact median per device
   and metric (a holistic aggregate, which keeps every value of its group: a query a memory
   limit can make fail); then the hourly aggregate on a slice (every `--slice`-th file,
   hard-linked into a second dataset) with DuckDB and with pandas (`load_recording` and
   `groupby`). Each run is a fresh child process that reports its wall time, its peak RSS
   (the whole process: Python, pandas, DuckDB's buffers; `VmHWM` of /proc/self/status, as
   `ru_maxrss` survives the exec and would show the parent's peak) and that peak after its
   imports, before it touches the data.
3. Delete the data (unless `--keep`).

The results of DuckDB and pandas on the slice are compared (groups, rows counted, means).
It is a benchmark, not a test: nothing is asserted; figures on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tesaiot_data.demo.broker import PublisherConfig
from tesaiot_data.demo.fleet import _BATTERY_EMPTY, _DAY, _DIGITS, _UNITS, SENSORS, DeviceFleet
from tesaiot_data.files.parquet import write_table
from tesaiot_data.schema import ARROW_SCHEMA

T0_NS = 1_765_324_800 * 10**9  # 2025-12-10T00:00Z
NS_PER_DAY = 86_400 * 10**9
FILE_ROWS = 1_000_000

QUERIES = {
    # Streams: one small state per group (200 devices x 5 metrics x 72 hours).
    "hourly": """
        select device_id, metric, date_trunc('hour', timestamp) as hour,
               avg(value) as mean, min(value) as low, max(value) as high, count(*) as rows
        from telemetry
        group by all
    """,
    # Holistic: an exact median keeps every value of its group until the end.
    "median": """
        select device_id, metric, quantile_cont(value, 0.5) as median, count(*) as rows
        from telemetry
        group by all
    """,
}


# ------------------------------------------------------------------ generation


class Generator:
    """The fleet's values for row after row of a time-ordered stream, as numpy columns."""

    def __init__(self, *, rows: int, devices: int, days: float, seed: int) -> None:
        # Only the device ids and base values are taken from the fleet: nothing is published.
        fleet = DeviceFleet(
            PublisherConfig("127.0.0.1", 1, "bench", "unused"), devices=devices, seed=seed
        )
        state = fleet._devices
        self.device_ids = pa.array(fleet.device_ids, type=pa.string())
        self.base_temperature = np.array([d.base_temperature for d in state])
        self.base_humidity = np.array([d.base_humidity for d in state])
        self.base_pressure = np.array([d.base_pressure for d in state])
        self.battery = np.array([d.battery for d in state])
        self.first_sensor = np.array([d.next for d in state])
        self.devices = devices
        self.step_ns = int(days * NS_PER_DAY) // rows
        self.rng = np.random.default_rng(seed)
        self.sensors = pa.array(SENSORS, type=pa.string())
        self.units = pa.array([_UNITS[s] for s in SENSORS], type=pa.string())

    def rows(self, start: int, count: int) -> pa.Table:
        """Rows `start` .. `start + count - 1` of the stream, in `ARROW_SCHEMA`."""
        rng = self.rng
        index = np.arange(start, start + count, dtype=np.int64)
        device = (index % self.devices).astype(np.int32)
        sensor = ((self.first_sensor[device] + index // self.devices) % len(SENSORS)).astype(
            np.int32
        )
        sent_ns = T0_NS + index * self.step_ns
        stamp_ns = np.round(sent_ns / 1e6).astype(np.int64) * 1_000_000  # devices send ms
        received_ns = sent_ns + rng.exponential(20e6, count).astype(np.int64)  # ~20 ms later

        day = np.sin(2 * np.pi * ((sent_ns / 1e9) % _DAY / _DAY - 0.375))
        value = np.empty(count)
        for code, name in enumerate(SENSORS):
            rows = sensor == code
            n = int(rows.sum())
            d = device[rows]
            if name == "temperature":
                v = self.base_temperature[d] + 4.0 * day[rows] + rng.normal(0, 0.3, n)
            elif name == "humidity":
                v = np.clip(self.base_humidity[d] - 8.0 * day[rows] + rng.normal(0, 1.5, n), 0, 100)
            elif name == "pressure":
                v = self.base_pressure[d] + rng.normal(0, 0.3, n)
            elif name == "motion":
                v = (rng.random(n) < 0.05).astype(float)
            else:
                v = self._battery(d, rng.uniform(0.0, 0.001, n)) + rng.normal(0, 0.002, n)
            value[rows] = np.round(v, _DIGITS[name])

        def strings(codes: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
            return pa.DictionaryArray.from_arrays(pa.array(codes, type=pa.int32()), dictionary)

        return pa.Table.from_arrays(
            [
                pa.array(stamp_ns.view("M8[ns]"), type=ARROW_SCHEMA.field("timestamp").type),
                pa.array(received_ns.view("M8[ns]"), type=ARROW_SCHEMA.field("received_at").type),
                strings(device, self.device_ids),
                strings(sensor, self.sensors),
                strings(sensor, self.sensors),
                pa.array(value, type=pa.float64()),
                strings(sensor, self.units),
                pa.nulls(count, type=ARROW_SCHEMA.field("value_text").type),
            ],
            schema=ARROW_SCHEMA,
        )

    def _battery(self, device: np.ndarray, drain: np.ndarray) -> np.ndarray:
        # The fleet's battery: max(empty, level - drain) at each reading, per device, in order.
        order = np.argsort(device, kind="stable")
        d, spent = device[order], np.cumsum(drain[order])
        first = np.searchsorted(d, d, side="left")
        within = spent - np.concatenate(([0.0], spent))[first]
        level = np.maximum(_BATTERY_EMPTY, self.battery[d] - within)
        last = np.r_[d[1:] != d[:-1], True]
        self.battery[d[last]] = level[last]
        out = np.empty_like(level)
        out[order] = level
        return out


def generate(root: Path, *, rows: int, devices: int, days: float, seed: int) -> list[Path]:
    generator = Generator(rows=rows, devices=devices, days=days, seed=seed)
    files: list[Path] = []
    number = 0
    for start in range(0, rows, FILE_ROWS):
        table = generator.rows(start, min(FILE_ROWS, rows - start))
        days_of = table.column("received_at").cast(pa.int64()).to_numpy() // NS_PER_DAY
        for day in np.unique(days_of):
            part = table.filter(pa.array(days_of == day))
            label = (np.datetime64(0, "D") + day).astype(str)
            number += 1
            path = root / f"date={label}" / f"part-{number:06d}.parquet"
            files.append(write_table(part, path, metadata={"source": "benchmarks/big_query.py"}))
    return files


# ------------------------------------------------------------------ the measured runs


def rss_mb() -> float:
    """This process's peak RSS so far, in MiB."""
    # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across execve, so a child
    # would report its parent's peak at the fork when that was higher.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB


def child(kind: str, source: str, memory_limit: str | None, sql: str) -> dict[str, Any]:
    """One measured run, in this (fresh) process; the imports happen before the clock."""
    from tesaiot_data import QueryError, load_recording, query  # noqa: PLC0415

    if kind == "duckdb":
        import duckdb  # noqa: F401, PLC0415  (imported before the baseline, as pandas is)
    base = rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    loaded = None
    if kind == "duckdb":
        try:
            result = query(source, QUERIES[sql], memory_limit=memory_limit)
        except QueryError as exc:
            return {
                "error": f"{exc.kind}: {exc.message[:160]}",
                "seconds": time.perf_counter() - started,
                "cpu_seconds": time.process_time() - cpu,
                "load_seconds": None,
                "base_rss_mb": base,
                "peak_rss_mb": rss_mb(),
            }
    else:
        frame = load_recording(source)
        loaded = time.perf_counter() - started
        result = (
            frame.assign(hour=frame["timestamp"].dt.floor("h"))
            .groupby(["device_id", "metric", "hour"], observed=True)
            .agg(
                mean=("value", "mean"),
                low=("value", "min"),
                high=("value", "max"),
                rows=("value", "size"),
            )
            .reset_index()
        )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "load_seconds": loaded,
        "base_rss_mb": base,
        "peak_rss_mb": rss_mb(),
        "groups": len(result),
        "rows": int(result["rows"].sum()),
        "mean_of_means": float(result["mean"].mean()) if "mean" in result else None,
    }


def measure(kind: str, source: Path, memory_limit: str | None, sql: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, "--source", str(source), "--sql", sql]
    command += ["--memory-limit", memory_limit or "none"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def frame_bytes_per_row(source: Path) -> tuple[float, float]:
    """Bytes per row of the slice as a canonical pandas frame and as an Arrow table."""
    import pyarrow.dataset as ds  # noqa: PLC0415

    from tesaiot_data import load_recording  # noqa: PLC0415

    frame = load_recording(source)
    table = ds.dataset(source, format="parquet").to_table()  # no partition column
    return (
        frame.memory_usage(deep=True).sum() / len(frame),
        table.nbytes / table.num_rows,
    )


def machine() -> str:
    import duckdb  # noqa: PLC0415

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return (
        f"{os.cpu_count()} cores ({cpu}), {pages / 2**30:.0f} GiB RAM, "
        f"Python {platform.python_version()}, DuckDB {duckdb.__version__}, "
        f"pandas {pd.__version__}, pyarrow {pa.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30_000_000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--days", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-limit", default="256MB", help="DuckDB's limit, or none")
    parser.add_argument("--slice", type=int, default=10, help="pandas gets 1/N of the files")
    parser.add_argument("--dir", default=None, help="where the temporary data goes")
    parser.add_argument("--keep", action="store_true", help="keep the data")
    parser.add_argument("--quick", action="store_true", help="3M rows")
    parser.add_argument("--child", choices=["duckdb", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--sql", choices=sorted(QUERIES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        limit = None if args.memory_limit == "none" else args.memory_limit
        print(json.dumps(child(args.child, args.source, limit, args.sql)))
        return
    rows = 3_000_000 if args.quick else args.rows

    work = Path(tempfile.mkdtemp(prefix="tesaiot-big-query-", dir=args.dir))
    try:
        root = work / "dataset"
        started = time.perf_counter()
        files = generate(root, rows=rows, devices=args.devices, days=args.days, seed=args.seed)
        generated = time.perf_counter() - started
        size = sum(f.stat().st_size for f in files)
        print(
            f"generated {rows:,} rows in {len(files)} files, {size / 2**20:,.0f} MiB, "
            f"in {generated:.1f} s ({rows / generated:,.0f} rows/s)"
        )
        piece = work / "slice"
        picked = files[:: args.slice]
        for file in picked:
            target = piece / file.parent.name / file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(file, target)
        slice_rows = sum(pq.read_metadata(f).num_rows for f in picked)
        pandas_bpr, arrow_bpr = frame_bytes_per_row(piece)
        print(
            f"in memory: {pandas_bpr:.1f} bytes/row as a pandas frame "
            f"({pandas_bpr * rows / 2**30:.2f} GiB for all rows), {arrow_bpr:.1f} as Arrow"
        )

        limit = args.memory_limit
        runs = [
            ("hourly, DuckDB, all rows", "duckdb", root, limit, rows, "hourly"),
            ("hourly, DuckDB, all rows, no limit", "duckdb", root, None, rows, "hourly"),
            ("median, DuckDB, all rows", "duckdb", root, limit, rows, "median"),
            ("median, DuckDB, all rows, no limit", "duckdb", root, None, rows, "median"),
            (f"hourly, DuckDB, 1/{args.slice} slice", "duckdb", piece, limit, slice_rows, "hourly"),
            (f"hourly, pandas, 1/{args.slice} slice", "pandas", piece, None, slice_rows, "hourly"),
        ]
        results = {}
        print()
        print(
            "| run | rows | memory limit | wall s | CPU s | rows/s | peak RSS MiB "
            "| after imports MiB |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for label, kind, source, run_limit, count, sql in runs:
            figures = measure(kind, source, run_limit, sql)
            results[label] = figures
            extra = f" (load {figures['load_seconds']:.1f})" if figures["load_seconds"] else ""
            speed = "failed" if "error" in figures else f"{count / figures['seconds']:,.0f}"
            print(
                f"| {label} | {count:,} | {run_limit or '-'} | {figures['seconds']:.1f}{extra} | "
                f"{figures['cpu_seconds']:.1f} | {speed} | {figures['peak_rss_mb']:,.0f} | "
                f"{figures['base_rss_mb']:,.0f} |"
            )
        for label, figures in results.items():
            if "error" in figures:
                print(f"{label}: {figures['error']}")
        duck, pand = results[runs[4][0]], results[runs[5][0]]
        same = (
            duck.get("groups") == pand["groups"]
            and duck.get("rows") == pand["rows"] == slice_rows
            and abs(duck.get("mean_of_means", 0) - pand["mean_of_means"]) < 1e-9
        )
        print(
            f"\nslice: DuckDB and pandas agree: {same} ({pand['groups']:,} groups, "
            f"{pand['rows']:,} rows); whole dataset: "
            f"{results[runs[0][0]].get('groups', 0):,} hourly groups"
        )
        print(f"machine: {machine()}")
    finally:
        if args.keep:
            print(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
