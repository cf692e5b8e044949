"""The `tesaiot-data` command line: stream, record, inspect, compact, query, replay, demo.

This module holds the parser and `main` (the `tesaiot-data` entry point; `python -m
tesaiot_data.cli` runs it too). The commands live by job: `streaming` (stream, record),
`files` (inspect, compact, query) and `publishing` (replay, demo); `console` holds the live
status line they share, and `options` what the flags' values become.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from tesaiot_data import __version__
from tesaiot_data.cli.console import one_line
from tesaiot_data.cli.files import cmd_compact, cmd_inspect, cmd_query
from tesaiot_data.cli.options import duration, positive_int, settings_from_args
from tesaiot_data.cli.publishing import cmd_demo, cmd_replay
from tesaiot_data.cli.streaming import cmd_record, cmd_stream
from tesaiot_data.errors import ConnectError, TesaiotError
from tesaiot_data.mqtt.probe import scheme_hint
from tesaiot_data.sinks.base import DEFAULT_MAX_PENDING_ROWS

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "build_parser", "main"]

EXIT_ERROR = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The `tesaiot-data` argument parser: every command, its flags and its `run` function."""
    parser = argparse.ArgumentParser(
        prog="tesaiot-data",
        description="Stream TESAIoT telemetry (MQTT over WSS) into pandas and Parquet.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def connection_options(sub: argparse.ArgumentParser) -> None:
        group = sub.add_argument_group("connection (default: .env and the environment)")
        group.add_argument("--env-file", default=".env", help="dotenv file to read (default .env)")
        group.add_argument(
            "--broker-url", help="e.g. wss://mqtt.tesaiot.com:8085/mqtt (MQTT_BROKER_URL)"
        )
        group.add_argument("--topic", help="subscription filter (MQTT_SUBSCRIBE_TOPIC)")
        group.add_argument("--ca-certs", help="PEM file of trusted CAs (CA_CERT_PATH)")
        group.add_argument("--client-id", help="MQTT client id (MQTT_CLIENT_ID)")
        group.add_argument(
            "--share-group",
            help="join this shared-subscription group: each message goes to one member "
            "(MQTT_SHARE_GROUP)",
        )
        group.add_argument(
            "--insecure",
            action="store_true",
            help="skip TLS certificate verification (MQTT_INSECURE)",
        )

    def session_options(sub: argparse.ArgumentParser) -> None:
        group = sub.add_argument_group("session (default: .env and the environment)")
        group.add_argument(
            "--session-expiry",
            metavar="DURATION",
            help="keep a persistent session this long after a disconnect (1h, 7d, never; 0: "
            "clean, the default): the broker keeps the QoS 1/2 messages published meanwhile; "
            "needs --client-id (MQTT_SESSION_EXPIRY)",
        )
        group.add_argument(
            "--protocol", metavar="VERSION", help="MQTT 3.1.1 (the default) or 5 (MQTT_PROTOCOL)"
        )

    stream = commands.add_parser("stream", help="print each telemetry message as it arrives")
    connection_options(stream)
    session_options(stream)
    stream.set_defaults(run=cmd_stream)

    record = commands.add_parser(
        "record", help="record telemetry to a Parquet file, or as a service to a dataset"
    )
    connection_options(record)
    session_options(record)
    target = record.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--out", type=str, help="the Parquet file to write (or an s3://bucket/key.parquet URL)"
    )
    target.add_argument(
        "--dataset",
        type=str,
        help="append to this hive dataset folder (date=YYYY-MM-DD/part-*.parquet) until "
        "Ctrl-C or SIGTERM; several recorders may share it",
    )
    record.add_argument(
        "--duration", type=duration, help="stop after this long (30s, 5min); default: Ctrl-C"
    )
    record.add_argument(
        "--flush-every",
        type=duration,
        default=5.0,
        help="write a part this often, the most a crash can lose (default 5s)",
    )
    record.add_argument(
        "--max-pending-rows",
        type=positive_int,
        default=DEFAULT_MAX_PENDING_ROWS,
        metavar="ROWS",
        help="with --dataset: rows kept in memory while the folder cannot be written; beyond, "
        "the oldest are dropped, counted and logged (default 5,000,000, about 300 MB)",
    )
    record.add_argument(
        "--status-every",
        type=duration,
        default=60.0,
        help="with --dataset and no terminal: log a one-line summary this often (default 1min)",
    )
    record.set_defaults(run=cmd_record)

    inspect = commands.add_parser(
        "inspect", help="describe a recording (file, parts folder or dataset)"
    )
    inspect.add_argument("path", help="a .parquet file, a .parts folder or a dataset folder")
    inspect.set_defaults(run=cmd_inspect)

    compact = commands.add_parser(
        "compact", help="merge each closed day of a dataset into one file (safe while it is read)"
    )
    compact.add_argument("path", help="a dataset folder (DatasetWriter, Collector(dataset=...))")
    compact.add_argument(
        "--before",
        help="compact the days that ended by this time: 2025-12-10, or '7d' back from now "
        "(default: every day before today, UTC)",
    )
    compact.set_defaults(run=cmd_compact)

    sql = commands.add_parser(
        "query",
        help="run SQL over a recording with DuckDB (view: telemetry; needs tesaiot-data[sql])",
    )
    sql.add_argument("source", help="a .parquet file, a .parts folder or a dataset folder")
    sql.add_argument(
        "sql", help='e.g. "select metric, avg(value) from telemetry group by 1"; - reads stdin'
    )
    sql.add_argument("--memory-limit", help="DuckDB's memory limit, e.g. 1GB (default 80%% of RAM)")
    sql.add_argument("--threads", type=positive_int, help="DuckDB threads (default: every core)")
    sql.add_argument("--max-rows", type=positive_int, default=50, help="rows to print (default 50)")
    sql.add_argument(
        "--allow-writes",
        action="store_true",
        help="let the SQL write files, attach databases, load extensions, change settings",
    )
    sql.set_defaults(run=cmd_query)

    replay = commands.add_parser(
        "replay", help="publish a recording back to a broker, at its recorded pace or faster"
    )
    connection_options(replay)
    replay.add_argument("recording", help="a .parquet file, a .parts folder or a dataset folder")
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed", type=float, default=1.0, help="times faster than recorded (default 1)"
    )
    pace.add_argument("--max-speed", action="store_true", help="publish as fast as possible")
    replay.add_argument("--devices", help="only these device ids, comma-separated")
    replay.add_argument("--metrics", help="only these metrics, comma-separated")
    replay.add_argument(
        "--shift-to-now", action="store_true", help="move the timestamps so the first is now"
    )
    replay.add_argument("--qos", type=int, choices=(0, 1, 2), default=0, help="(default 0)")
    replay.add_argument(
        "--username",
        help="publish as this account; its password from MQTT_PASSWORD (environment or "
        "--env-file), else the token",
    )
    replay.set_defaults(run=cmd_replay)

    demo = commands.add_parser(
        "demo", help="run everything locally: broker, devices, collector, recording"
    )
    demo.add_argument(
        "--duration", type=duration, default=30.0, help="how long to collect (default 30s)"
    )
    demo.add_argument("--devices", type=int, default=5, help="simulated devices (default 5)")
    demo.add_argument(
        "--rate", type=float, default=50.0, help="fleet messages per second (default 50)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed of the fleet")
    demo.add_argument(
        "--qos",
        type=int,
        choices=(0, 1),
        default=0,
        help="the QoS the devices publish at (default 0); 1 lets a persistent session "
        "get what was published while it was away",
    )
    demo.add_argument(
        "--out", type=Path, help="recording file (default recordings/demo-<time>.parquet)"
    )
    demo.add_argument(
        "--replay",
        type=Path,
        help="replay this recording (in a loop, timestamps moved to now) instead of the fleet",
    )
    demo.add_argument(
        "--speed", type=float, default=1.0, help="with --replay: times faster (default 1)"
    )
    demo.add_argument(
        "--env-out",
        type=Path,
        help="write the demo broker's URL, token and CA to this dotenv file while it runs, so "
        "that other commands reach it with --env-file (for example record --dataset)",
    )
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; default `sys.argv[1:]`.
        out: Where to print; default standard output.

    Returns:
        The exit status: 0 on success, 1 on a TESAIoT error or a file system error (a
        missing file, a full disk; printed as one `error: ...` line on standard error),
        2 on bad usage, 130 on Ctrl-C.
    """
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args, out))
    except BrokenPipeError:
        # The reader of our output closed it (`| head`): nothing to report. Point stdout at
        # devnull so that Python's own flush at exit does not fail again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (TesaiotError, OSError) as exc:  # OSError: FileNotFoundError, a full disk, ...
        print(f"error: {one_line(_with_scheme_hint(exc, args))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _with_scheme_hint(exc: BaseException, args: argparse.Namespace) -> BaseException:
    """A connection the broker closed without a hint gets one naming the scheme that fits.

    The subscriber reports a connection closed before the CONNACK (what `mqtts://` at a TLS
    WebSocket port gives) without asking the port; the command line asks it here.
    """
    if type(exc) is not ConnectError or exc.hint is not None or "broker_url" not in args:
        return exc
    try:
        url = settings_from_args(args).url
    except TesaiotError:
        return exc
    hint = scheme_hint(url)
    return exc if hint is None else ConnectError(str(exc), hint=hint)
