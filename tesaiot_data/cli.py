"""The `tesaiot-data` command line: stream, record, inspect, demo."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from tesaiot_data.client import TESAIoTMQTTClient
from tesaiot_data.collector import Collector, Recording
from tesaiot_data.errors import TesaiotError
from tesaiot_data.parquet import load_recording, load_rejects, read_metadata
from tesaiot_data.settings import Settings
from tesaiot_data.status import status_line
from tesaiot_data.timestamps import duration_seconds

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2


class _ConsolePrinter(TESAIoTMQTTClient):
    """Prints each telemetry message, as the platform's reference client does."""

    def __init__(self, settings: Settings, *, out: TextIO) -> None:
        super().__init__(settings)
        self._out = out

    def process_telemetry(self, device_id: str, sensor_type: str, data: Any) -> None:
        now = datetime.now(timezone.utc).strftime("%H:%M:%S.%f")[:-3]
        print(f"{now}  {device_id}  {sensor_type:<14} {data}", file=self._out, flush=True)


def _duration(text: str) -> float:
    try:
        return duration_seconds(text, name="duration")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive duration (e.g. 30s, 5min)"
        ) from exc


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for flag, field in (
        ("broker_url", "broker_url"),
        ("topic", "topic"),
        ("ca_certs", "ca_certs"),
        ("client_id", "client_id"),
    ):
        if getattr(args, flag, None):
            overrides[field] = getattr(args, flag)
    if getattr(args, "insecure", False):
        overrides["insecure"] = True
    return Settings.from_env(args.env_file, **overrides)


def _status_line(collector: Collector, recording: Recording) -> str:
    return status_line(collector.stats, running=collector.running, rows_recorded=recording.rows)


def _watch(
    collector: Collector,
    *,
    duration: float | None,
    line: Callable[[], str],
    out: TextIO,
) -> None:
    """Print a live status line until the duration ends, Ctrl-C, or the stream fails."""
    tty = out.isatty()
    deadline = None if duration is None else time.monotonic() + duration
    last_plain = 0.0
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())) if deadline else 0.5)
            if tty:
                print(f"\r{line()}\x1b[K", end="", file=out, flush=True)
            elif time.monotonic() - last_plain >= 5:
                last_plain = time.monotonic()
                print(line(), file=out, flush=True)
            client = collector.client
            if client is not None and client.error is not None:
                raise client.error
    except KeyboardInterrupt:
        pass
    finally:
        if tty:
            print(file=out)


def _summary(path: Path, out: TextIO) -> None:
    """Print what a recording holds: span, devices, metrics and per-metric figures."""
    frame = load_recording(path)
    meta = read_metadata(path)
    print(_where(path), file=out)
    for key in ("start", "end", "topic", "broker", "rows", "rejects", "version"):
        if key in meta:
            print(f"{key + ':':<10} {meta[key]}", file=out)
    if frame.empty:
        print("no rows", file=out)
        return
    span = frame["timestamp"].max() - frame["timestamp"].min()
    print(f"span:      {frame['timestamp'].min()} .. {frame['timestamp'].max()} ({span})", file=out)
    print(f"devices:   {frame['device_id'].nunique()}", file=out)
    print(f"metrics:   {', '.join(sorted(frame['metric'].unique().astype(str)))}", file=out)
    table = frame.groupby("metric", observed=True).agg(
        rows=("value", "size"),
        devices=("device_id", "nunique"),
        mean=("value", "mean"),
        min=("value", "min"),
        max=("value", "max"),
    )
    print(table.round(3).to_string(), file=out)
    rejects = load_rejects(path)
    if len(rejects):
        print(f"rejects by reason: {rejects['reason'].value_counts().to_dict()}", file=out)


def _where(path: Path) -> str:
    """The first summary line: the file and its size, or the folder and what it holds."""
    if path.is_file():
        return f"file:      {path} ({path.stat().st_size:,} bytes)"
    folder = path if path.is_dir() else path.with_name(path.name + ".parts")
    files = [f for f in folder.rglob("*.parquet") if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    return f"folder:    {folder} ({len(files):,} Parquet files, {size:,} bytes)"


def _stop_after_failure(recording: Recording) -> None:
    """Save what a failed session received; the failure that ended it is reported by main."""
    try:
        recording.stop()
    except (TesaiotError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).splitlines())


# ----------------------------------------------------------------- commands


def _cmd_stream(args: argparse.Namespace, out: TextIO) -> int:
    client = _ConsolePrinter(_settings(args), out=out)
    print(f"streaming {client.settings.topic} from {client.settings.url} (Ctrl-C stops)", file=out)
    client.run_forever()
    stats = client.stats
    print(f"received {stats.received:,} messages ({stats.failed} failed)", file=out)
    return 0


def _cmd_record(args: argparse.Namespace, out: TextIO) -> int:
    collector = Collector(_settings(args), window="1min", max_rows=200_000)
    with collector:
        recording = collector.record(args.out, flush_every=args.flush_every)
        print(f"recording to {args.out} (Ctrl-C stops)", file=out)
        try:
            _watch(
                collector,
                duration=args.duration,
                line=lambda: _status_line(collector, recording),
                out=out,
            )
        except BaseException:
            _stop_after_failure(recording)
            raise
        # A disk that filled up or a removed folder: RecordingError, reported by main.
        path = recording.stop()
    _summary(path, out)
    return 0


def _cmd_inspect(args: argparse.Namespace, out: TextIO) -> int:
    _summary(Path(args.path), out)
    return 0


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from tesaiot_data import demo  # noqa: PLC0415  (needs Mosquitto; only this command does)

    out_path = Path(
        args.out or f"recordings/demo-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.parquet"
    )
    print("starting the local broker (Mosquitto) and the simulated fleet ...", file=out)
    settings = demo.start(devices=args.devices, rate=args.rate, seed=args.seed)
    try:
        print(f"collecting over {settings.url} with TLS verified against the demo CA", file=out)
        with Collector(settings, window="5min") as collector:
            recording = collector.record(out_path)
            _watch(
                collector,
                duration=args.duration,
                line=lambda: _status_line(collector, recording),
                out=out,
            )
            path = recording.stop()
        stats = collector.stats  # after stop(): every received message is accounted for
    finally:
        demo.stop()
    print(
        f"\nreceived {stats.received:,} messages: {stats.messages:,} parsed into "
        f"{stats.rows_total:,} rows, {stats.rejected} rejected {dict(stats.rejects_by_reason)}, "
        f"{stats.dropped} dropped\n",
        file=out,
    )
    _summary(path, out)
    print(
        "\nnext: open the notebooks with `.venv/bin/jupyter lab notebooks/`, "
        f"or load the recording: tesaiot_data.load_recording({str(path)!r})",
        file=out,
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tesaiot-data",
        description="Stream TESAIoT telemetry (MQTT over WSS) into pandas and Parquet.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
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
            "--insecure",
            action="store_true",
            help="skip TLS certificate verification (MQTT_INSECURE)",
        )

    stream = commands.add_parser("stream", help="print each telemetry message as it arrives")
    connection_options(stream)
    stream.set_defaults(run=_cmd_stream)

    record = commands.add_parser("record", help="record telemetry to a Parquet file")
    connection_options(record)
    record.add_argument("--out", required=True, type=Path, help="the Parquet file to write")
    record.add_argument(
        "--duration", type=_duration, help="stop after this long (30s, 5min); default: Ctrl-C"
    )
    record.add_argument(
        "--flush-every",
        type=_duration,
        default=5.0,
        help="write a part this often, the most a crash can lose (default 5s)",
    )
    record.set_defaults(run=_cmd_record)

    inspect = commands.add_parser(
        "inspect", help="describe a recording (file, parts folder or dataset)"
    )
    inspect.add_argument("path", help="a .parquet file, a .parts folder or a dataset folder")
    inspect.set_defaults(run=_cmd_inspect)

    demo = commands.add_parser(
        "demo", help="run everything locally: broker, devices, collector, recording"
    )
    demo.add_argument(
        "--duration", type=_duration, default=30.0, help="how long to collect (default 30s)"
    )
    demo.add_argument("--devices", type=int, default=5, help="simulated devices (default 5)")
    demo.add_argument(
        "--rate", type=float, default=50.0, help="fleet messages per second (default 50)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed of the fleet")
    demo.add_argument(
        "--out", type=Path, help="recording file (default recordings/demo-<time>.parquet)"
    )
    demo.set_defaults(run=_cmd_demo)
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
    args = _parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args, out))
    except (TesaiotError, OSError) as exc:  # OSError: FileNotFoundError, a full disk, ...
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
