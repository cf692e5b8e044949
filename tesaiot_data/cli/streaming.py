"""The commands that subscribe: `stream` (print each message) and `record` (a file or a dataset).

`record --out FILE` records for a while and prints the file's summary; `record --dataset DIR`
is a service: it appends to a hive dataset until Ctrl-C or SIGTERM, logging a summary line
now and then when no terminal watches it. Device ids, metrics, values and paths are printed
with their control characters escaped (`console.printable`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from datetime import datetime, timezone
from typing import Any, TextIO

from tesaiot_data.cli.console import (
    one_line,
    printable,
    recording_status,
    stop_on_signals,
    watch,
)
from tesaiot_data.cli.files import summary
from tesaiot_data.cli.options import settings_from_args
from tesaiot_data.collector import Collector, Recording
from tesaiot_data.collector.stats import status_line
from tesaiot_data.errors import TesaiotError
from tesaiot_data.files.store import location
from tesaiot_data.mqtt.client import TESAIoTMQTTClient
from tesaiot_data.settings import Settings
from tesaiot_data.sinks.dataset import DatasetWriter, prepare_dataset_folder

__all__ = ["cmd_record", "cmd_stream"]

logger = logging.getLogger(__name__)


class _ConsolePrinter(TESAIoTMQTTClient):
    """Prints each telemetry message, as the platform's reference client does."""

    def __init__(self, settings: Settings, *, out: TextIO) -> None:
        super().__init__(settings)
        self._out = out
        self.reader_gone = False

    def process_telemetry(self, device_id: str, sensor_type: str, data: Any) -> None:
        if self.reader_gone:
            return
        now = datetime.now(timezone.utc).strftime("%H:%M:%S.%f")[:-3]
        # A topic or payload may hold escape sequences and newlines: never raw on a terminal.
        line = printable(f"{device_id}  {sensor_type:<14} {data}")
        try:
            print(f"{now}  {line}", file=self._out, flush=True)
        except BrokenPipeError:
            # `tesaiot-data stream | head`: the reader has what it wanted; stop quietly.
            self.reader_gone = True
            threading.Thread(target=self.disconnect, name="tesaiot-stream-stop").start()


def cmd_stream(args: argparse.Namespace, out: TextIO) -> int:
    """`stream`: print each telemetry message until Ctrl-C.

    Raises:
        BrokenPipeError: The reader of `out` went away (`| head`); `main` exits quietly.
    """
    client = _ConsolePrinter(settings_from_args(args), out=out)
    s = client.settings
    print(printable(f"streaming {s.subscription} from {s.url} (Ctrl-C stops)"), file=out)
    client.run_forever()
    if client.reader_gone:
        raise BrokenPipeError  # main() exits quietly
    stats = client.stats
    print(f"received {stats.received:,} messages ({stats.failed} failed)", file=out)
    return 0


def cmd_record(args: argparse.Namespace, out: TextIO) -> int:
    """`record --out FILE` or `record --dataset DIR`: record telemetry to Parquet."""
    if args.dataset is not None:
        return _record_dataset(args, out)
    collector = Collector(settings_from_args(args), window="1min", max_rows=200_000)
    with collector:
        recording = collector.record(args.out, flush_every=args.flush_every)
        print(f"recording to {printable(args.out)} (Ctrl-C stops)", file=out)
        try:
            watch(
                collector,
                duration=args.duration,
                line=lambda: recording_status(collector, recording),
                out=out,
            )
        except BaseException:
            _stop_after_failure(recording)
            raise
        # A disk that filled up or a removed folder: RecordingError, reported by main.
        path = recording.stop()
    summary(path, out)
    return 0


def _record_dataset(args: argparse.Namespace, out: TextIO) -> int:
    """`record --dataset DIR`: a service appending to a hive dataset until stopped."""
    root = location(args.dataset)
    settings = settings_from_args(args)  # a wrong option makes no folder
    prepare_dataset_folder(root)  # fail now, not at the first flush: error: ..., exit 1
    if not out.isatty() and args.verbose == 0:
        # A service's journal: the summaries and the connection's news, not paho's chatter.
        logging.getLogger("tesaiot_data").setLevel(logging.INFO)
    stop = threading.Event()
    collector = Collector(
        settings,
        window="1min",
        max_rows=200_000,
        dataset=root,
        flush_every=args.flush_every,
    )
    with stop_on_signals(stop, {signal.SIGTERM}), collector:
        writer = _dataset_writer(collector)
        writer.max_pending_rows = args.max_pending_rows
        print(
            printable(
                f"recording {collector.settings.subscription} to the dataset {root} "
                "(Ctrl-C or SIGTERM stops)"
            ),
            file=out,
            flush=True,
        )

        def line() -> str:
            return status_line(
                collector.stats, running=collector.running, rows_dropped=writer.rows_dropped
            )

        def log_status(text: str) -> None:
            logger.info("%s | %s rows since the start", text, f"{collector.stats.rows_total:,}")

        # On a terminal a live line; otherwise (systemd, a pipe, a file) nothing on `out`
        # and a one-line summary logged every `--status-every`.
        watch(
            collector,
            duration=args.duration,
            line=line,
            out=out,
            plain=log_status,
            plain_every=args.status_every,
            plain_at_start=False,
            stop=stop,
        )
        if stop.is_set():
            logger.info("SIGTERM received: writing the last rows and stopping")
    # A dataset that could not be written: RecordingError out of the with, reported by main.
    stats = collector.stats
    dropped = (
        f"; {writer.rows_dropped:,} rows dropped unwritten while the folder could not be "
        "written (see the log)"
        if writer.rows_dropped
        else ""
    )
    print(
        printable(
            f"recorded {stats.rows_total:,} rows from {stats.messages:,} messages to {root} "
            f"({stats.rejected:,} rejected, {stats.dropped:,} dropped){dropped}"
        ),
        file=out,
        flush=True,
    )
    return 0


def _dataset_writer(collector: Collector) -> DatasetWriter:
    """The started collector's auto-persist writer, to bound and count what it drops."""
    for feed in collector.ingest.feeds:
        if isinstance(feed.sink, DatasetWriter):
            return feed.sink
    raise RuntimeError("the collector was started without its dataset")  # a bug


def _stop_after_failure(recording: Recording) -> None:
    """Save what a failed session received; the failure that ended it is reported by main."""
    try:
        recording.stop()
    except (TesaiotError, OSError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
