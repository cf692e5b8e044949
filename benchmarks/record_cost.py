"""What a recording costs, and what a cheaper crash-safe scheme would save.

Run with `python benchmarks/record_cost.py [--rows N] [--repeat R] [--quick]`. No broker: the
window's chunks are made once from in-memory columns (50 devices x 4 metrics, about one text
row in 20), then each scheme gets the same chunks the way the collector's housekeeping thread
hands them on: one drain every 0.25 s of stream time, one flush every 5 s (`flush_every`), and
the stop at the end, each chunk holding what a 20 ms worker batch holds. Two stream rates:
25,000 rows/s (the collector's ceiling over WSS: chunks of 500 rows, drains of 6,250, parts
of 125,000) and 1,000 rows/s (chunks of 20 rows, drains of 250, parts of 5,000).

Schemes, all crash-safe at every flush (fsync before the flush returns):

- `frames (before)`: what the collector did up to issue 8: chunks -> a pandas frame per drain
  -> `Recorder.add(frame)` (frame -> Arrow table) -> part files -> merged at stop.
- `batches (now)`: chunks -> `RollingWindow.batches_of` -> `Recorder.add(batch)` -> the same
  parts and merge.
- `journal`: each flush appends its batches to one Arrow IPC stream file (lz4 buffers) and
  fsyncs it; a reader gets every whole batch of a journal cut short by a crash. At stop the
  journal is read back and written once as the Parquet file.
- `journal + live file`: the same journal, and the final Parquet file written as the rows
  come (a row group per 128k rows, under a temporary name); stop writes the last row group
  and the footer, renames the file and deletes the journal.

Figures: the median of the repeats, wall and CPU seconds of the housekeeping work (adds and
flushes, as the recording runs) and of the stop, rows per second of the whole (rows / (run +
stop)), and the bytes written per row. The temporary folder is on the default temp disk.
It is a benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from tesaiot_data.files.parquet import PARQUET_COMPRESSION, ROW_GROUP_ROWS
from tesaiot_data.messages import ColumnBatch
from tesaiot_data.schema import ARROW_SCHEMA
from tesaiot_data.sinks.recorder import Recorder
from tesaiot_data.window.chunk import Chunk, to_frame
from tesaiot_data.window.rolling import RollingWindow

T0_NS = 1_765_324_800 * 10**9
WORKER_PERIOD = 0.02  # seconds: a worker batch (one chunk) holds what came in this time
DRAIN_PERIOD = 0.25  # seconds: the collector's housekeeping period
FLUSH_EVERY = 5.0  # seconds: Recorder's default flush_every


def chunk_rows(rate: int) -> int:
    """Rows of one worker batch at `rate` rows/s."""
    return max(1, round(rate * WORKER_PERIOD))


def make_chunks(rows: int, rate: int) -> list[Chunk]:
    """The chunks a window hands to a recording over `rows` rows at `rate` rows/s."""
    size = chunk_rows(rate)
    window = RollingWindow(window_ns=None, max_rows=size)
    rng = np.random.default_rng(0)
    chunks = []
    for start in range(0, rows, size):
        count = min(size, rows - start)
        batch = ColumnBatch()
        received = T0_NS + (np.arange(start, start + count) * (10**9 // rate))
        batch.received_ns = received.tolist()
        batch.timestamp_ns = (received - 3_000_000).tolist()
        index = np.arange(start, start + count)
        batch.device_id = [f"device-{i % 50:02d}" for i in index.tolist()]
        batch.sensor_type = ["env"] * count
        metrics = ["temperature", "humidity", "pressure", "state"]
        batch.metric = [metrics[i % 4] for i in (index // 50).tolist()]
        text = (index % 20) == 0
        batch.value = np.where(text, np.nan, rng.normal(25, 3, count).round(2)).tolist()
        batch.unit = [None if t else "C" for t in text.tolist()]
        batch.value_text = ["open" if t else None for t in text.tolist()]
        chunk = window.append(batch)
        assert chunk is not None
        chunks.append(chunk)
    return chunks


def drains(chunks: Sequence[Chunk], rate: int) -> list[list[Chunk]]:
    """The chunks of each 0.25 s drain (at least one chunk each)."""
    per_drain = max(1, round(DRAIN_PERIOD / WORKER_PERIOD))
    return [list(chunks[i : i + per_drain]) for i in range(0, len(chunks), per_drain)]


@dataclass
class Run:
    run_wall: float
    run_cpu: float
    stop_wall: float
    stop_cpu: float
    written: int  # bytes written to files, parts and journals included
    final: int  # bytes of the final file


class _Clock:
    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self) -> _Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def _parts_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.parquet"))


def recorder_scheme(convert: str) -> Callable[[list[list[Chunk]], int, Path], Run]:
    def run(groups: list[list[Chunk]], flush_every: int, folder: Path) -> Run:
        path = folder / "r.parquet"
        recorder = Recorder(path, flush_every=FLUSH_EVERY)
        running = _Clock()
        for index, group in enumerate(groups, 1):
            with running:
                if convert == "frames":
                    recorder.add(to_frame(group))
                else:
                    for batch in RollingWindow.batches_of(group):
                        recorder.add(batch)
                if index % flush_every == 0:
                    recorder.flush()
        stopping = _Clock()
        with stopping:
            recorder.flush()
        written = _parts_bytes(recorder.parts_dir)  # before stop removes them
        with stopping:
            recorder.stop()
        final = path.stat().st_size
        return Run(running.wall, running.cpu, stopping.wall, stopping.cpu, written + final, final)

    return run


class _Journal:
    """An Arrow IPC stream of the flushed batches, fsynced at every flush."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115  (closed in close())
        options = ipc.IpcWriteOptions(compression="lz4")
        self._writer = ipc.new_stream(self._file, ARROW_SCHEMA, options=options)

    def append(self, batches: Sequence[pa.RecordBatch]) -> None:
        for batch in batches:
            self._writer.write_batch(batch)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._writer.close()
        self._file.close()


class _LiveFile:
    """The final Parquet file written as rows come, a row group per ROW_GROUP_ROWS rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.temp = path.with_name(f".{path.name}.live.tmp")
        self._writer = pq.ParquetWriter(self.temp, ARROW_SCHEMA, compression=PARQUET_COMPRESSION)
        self._buffered: list[pa.RecordBatch] = []
        self._rows = 0

    def append(self, batches: Sequence[pa.RecordBatch], *, last: bool = False) -> None:
        self._buffered.extend(batches)
        self._rows += sum(b.num_rows for b in batches)
        if self._rows >= ROW_GROUP_ROWS or (last and self._rows):
            table = pa.Table.from_batches(self._buffered).unify_dictionaries()
            self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            self._buffered, self._rows = [], 0

    def close(self) -> None:
        self.append([], last=True)
        self._writer.close()
        with open(self.temp, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(self.temp, self.path)


def journal_scheme(live: bool) -> Callable[[list[list[Chunk]], int, Path], Run]:
    def run(groups: list[list[Chunk]], flush_every: int, folder: Path) -> Run:
        path = folder / "r.parquet"
        journal = _Journal(folder / "r.parquet.journal.arrows")
        final_file = _LiveFile(path) if live else None
        pending: list[pa.RecordBatch] = []
        running = _Clock()
        for index, group in enumerate(groups, 1):
            with running:
                pending.extend(RollingWindow.batches_of(group))
                if index % flush_every == 0:
                    journal.append(pending)
                    if final_file is not None:
                        final_file.append(pending)
                    pending = []
        stopping = _Clock()
        with stopping:
            journal.append(pending)
            if final_file is not None:
                final_file.append(pending)
            journal.close()
        written = journal.path.stat().st_size
        with stopping:
            if final_file is not None:
                final_file.close()
            else:
                _journal_to_parquet(journal.path, path)
            journal.path.unlink()
        final = path.stat().st_size
        return Run(running.wall, running.cpu, stopping.wall, stopping.cpu, written + final, final)

    return run


def _journal_to_parquet(journal: Path, path: Path) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with (
        pa.memory_map(str(journal)) as source,
        pq.ParquetWriter(temp, ARROW_SCHEMA, compression=PARQUET_COMPRESSION) as writer,
    ):
        buffered: list[pa.RecordBatch] = []
        rows = 0
        for batch in ipc.open_stream(source):
            buffered.append(batch)
            rows += batch.num_rows
            if rows >= ROW_GROUP_ROWS:
                table = pa.Table.from_batches(buffered).unify_dictionaries()
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
                buffered, rows = [], 0
        if buffered:
            writer.write_table(pa.Table.from_batches(buffered).unify_dictionaries())
    with open(temp, "rb+") as file:
        os.fsync(file.fileno())
    os.replace(temp, path)


SCHEMES: dict[str, Callable[[list[list[Chunk]], int, Path], Run]] = {
    "frames (before)": recorder_scheme("frames"),
    "batches (now)": recorder_scheme("batches"),
    "journal": journal_scheme(live=False),
    "journal + live file": journal_scheme(live=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200k rows, one repeat")
    args = parser.parse_args()
    rows, repeat = (200_000, 1) if args.quick else (args.rows, args.repeat)
    temp = tempfile.gettempdir()
    print(f"{rows:,} rows, median of {repeat}; pyarrow {pa.__version__}, temp folder {temp}")
    for rate in (25_000, 1_000):
        chunks = make_chunks(rows, rate)
        groups = drains(chunks, rate)
        flush_every = round(FLUSH_EVERY / DRAIN_PERIOD)
        print(
            f"\n{rate:,} rows/s: chunks of {chunk_rows(rate):,} rows, {len(groups):,} drains "
            f"of {len(groups[0]) * chunk_rows(rate):,} rows, {len(groups) // flush_every:,} "
            "flushes"
        )
        print(
            f"{'scheme':<22}{'run wall s':>11}{'run cpu s':>10}{'us/row':>8}{'stop s':>8}"
            f"{'rows/s':>12}{'bytes/row':>10}{'file B/row':>11}"
        )
        results: dict[str, list[Run]] = {name: [] for name in SCHEMES}
        for attempt in range(repeat):
            names = list(SCHEMES) if attempt % 2 == 0 else list(reversed(SCHEMES))
            for name in names:
                folder = Path(tempfile.mkdtemp(prefix="record-cost-"))
                try:
                    results[name].append(SCHEMES[name](groups, flush_every, folder))
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
        for name, runs in results.items():
            run_wall = statistics.median(r.run_wall for r in runs)
            run_cpu = statistics.median(r.run_cpu for r in runs)
            stop = statistics.median(r.stop_wall for r in runs)
            written = statistics.median(r.written for r in runs)
            final = statistics.median(r.final for r in runs)
            print(
                f"{name:<22}{run_wall:>11.2f}{run_cpu:>10.2f}{run_cpu / rows * 1e6:>8.2f}"
                f"{stop:>8.2f}{rows / (run_wall + stop):>12,.0f}{written / rows:>10.2f}"
                f"{final / rows:>11.2f}"
            )


if __name__ == "__main__":
    main()
