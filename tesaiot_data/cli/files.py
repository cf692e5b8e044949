r"""The commands that read files: `inspect` (what a recording holds), `compact` and `query`.

`summary` is also what `record` and `demo` print about the recording they made. Text that
comes from a file (device ids, metrics, units, metadata, paths) is printed with its control
characters escaped (`\x1b`, `\n`), so a device id cannot move the cursor, recolour or
clear the terminal, or forge a line of the output.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

import pandas as pd

from tesaiot_data.cli.console import printable
from tesaiot_data.collector.stats import plural
from tesaiot_data.files.compaction import compact_dataset
from tesaiot_data.files.layout import recording_files
from tesaiot_data.files.store import Location, location
from tesaiot_data.readers.disk import load_recording, load_rejects, read_metadata
from tesaiot_data.readers.sql import query

__all__ = ["cmd_compact", "cmd_inspect", "cmd_query", "printable", "summary"]


def _printable_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every text value, column name and index label `printable`."""
    out = frame.copy()
    for position in range(out.shape[1]):
        column = out.iloc[:, position]
        if not (
            isinstance(column.dtype, pd.CategoricalDtype)
            or pd.api.types.is_object_dtype(column.dtype)
            or pd.api.types.is_string_dtype(column.dtype)
        ):
            continue
        shown = column.astype(object).map(lambda v: printable(v) if isinstance(v, str) else v)
        out.isetitem(position, shown)
    out.columns = pd.Index([printable(name) for name in out.columns])
    if not pd.api.types.is_numeric_dtype(out.index.dtype):
        out.index = pd.Index([printable(label) for label in out.index], name=out.index.name)
    return out


def summary(path: Location, out: TextIO) -> None:
    """Print what a recording holds: span, devices, metrics and per-metric figures.

    Args:
        path: A Parquet file, a `.parts` folder or a dataset folder.
        out: Where to print.

    Raises:
        FileNotFoundError: Nothing is at `path`.
        NotARecordingError: `path` is not a recording.
    """
    frame = load_recording(path)
    meta = read_metadata(path)
    print(printable(_where(path)), file=out)
    for key in ("start", "end", "topic", "broker", "rows", "rejects", "version"):
        if key in meta:
            print(f"{key + ':':<10} {printable(meta[key])}", file=out)
    if frame.empty:
        print("no rows", file=out)
        return
    span = frame["timestamp"].max() - frame["timestamp"].min()
    print(f"span:      {frame['timestamp'].min()} .. {frame['timestamp'].max()} ({span})", file=out)
    print(f"devices:   {frame['device_id'].nunique()}", file=out)
    metrics = sorted(frame["metric"].unique().astype(str))
    print(f"metrics:   {', '.join(printable(metric) for metric in metrics)}", file=out)
    table = frame.groupby("metric", observed=True).agg(
        rows=("value", "size"),
        devices=("device_id", "nunique"),
        mean=("value", "mean"),
        min=("value", "min"),
        max=("value", "max"),
    )
    print(_printable_frame(table.round(3)).to_string(), file=out)
    rejects = load_rejects(path)
    if len(rejects):
        counts = rejects["reason"].astype(str).value_counts()
        reasons = ", ".join(f"{reason}: {n:,}" for reason, n in sorted(counts.items()))
        print(printable(f"rejects by reason: {reasons}"), file=out)


def _where(path: Location) -> str:
    """The first summary line: the file and its size, or the folder and what it holds."""
    if path.is_file():
        return f"file:      {path} ({path.stat().st_size:,} bytes)"
    folder = path if path.is_dir() else path.with_name(path.name + ".parts")
    # The files the rows come from, as load_recording lists them (no sidecars, no files a
    # compaction replaced, no parts of a finished recording).
    files = recording_files(path)
    size = sum(f.stat().st_size for f in files if f.exists())
    return f"folder:    {folder} ({plural(len(files), 'Parquet file')}, {size:,} bytes)"


def cmd_inspect(args: argparse.Namespace, out: TextIO) -> int:
    """`inspect PATH`: print the summary of a recording."""
    summary(location(args.path), out)
    return 0


def cmd_compact(args: argparse.Namespace, out: TextIO) -> int:
    """`compact PATH [--before ...]`: merge each closed day of a dataset into one file."""
    result = compact_dataset(args.path, before=args.before)
    if not result.partitions:
        print(
            f"nothing to compact in {printable(args.path)}: no closed partition has several files",
            file=out,
        )
        return 0
    print(
        f"compacted {plural(result.partitions, 'partition')} of {printable(args.path)}: "
        f"{result.parts:,} files -> "
        f"{result.partitions:,}, {result.rows:,} rows, {result.bytes_before:,} -> "
        f"{result.bytes_after:,} bytes",
        file=out,
    )
    return 0


def cmd_query(args: argparse.Namespace, out: TextIO) -> int:
    """`query SOURCE SQL`: run SQL over a recording with DuckDB and print the rows."""
    sql = sys.stdin.read() if args.sql == "-" else args.sql
    frame = query(
        args.source,
        sql,
        memory_limit=args.memory_limit,
        threads=args.threads,
        allow_writes=args.allow_writes,
    )
    if frame.empty:
        print(f"no rows (columns: {', '.join(map(printable, frame.columns))})", file=out)
        return 0
    print(_printable_frame(frame.head(args.max_rows)).to_string(index=False), file=out)
    if len(frame) > args.max_rows:
        print(
            f"... {len(frame) - args.max_rows:,} more rows ({len(frame):,} in all; "
            "--max-rows shows more)",
            file=out,
        )
    return 0
