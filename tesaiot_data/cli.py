"""The `tesaiot-data` command line: stream, record, inspect, compact, query, replay, demo."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from tesaiot_data.collector.collector import Collector, Recording
from tesaiot_data.collector.status import plural, status_line
from tesaiot_data.errors import ConnectError, TesaiotError, TokenError
from tesaiot_data.files.compaction import compact_dataset
from tesaiot_data.files.parquet import load_recording, load_rejects, read_metadata
from tesaiot_data.mqtt.client import TESAIoTMQTTClient
from tesaiot_data.parse.timestamps import duration_seconds
from tesaiot_data.readers.sql import query
from tesaiot_data.settings import Settings

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2

logger = logging.getLogger("tesaiot_data.cli")  # also when run as __main__


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
        try:
            print(f"{now}  {device_id}  {sensor_type:<14} {data}", file=self._out, flush=True)
        except BrokenPipeError:
            # `tesaiot-data stream | head`: the reader has what it wanted; stop quietly.
            self.reader_gone = True
            threading.Thread(target=self.disconnect, name="tesaiot-stream-stop").start()


def _duration(text: str) -> float:
    try:
        return duration_seconds(text, name="duration")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive duration (e.g. 30s, 5min)"
        ) from exc


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides: dict[str, Any] = dict(extra)
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
    if getattr(args, "share_group", None) is not None:  # "" too: Settings says why not
        overrides["share_group"] = args.share_group
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
    s = client.settings
    print(f"streaming {s.subscription} from {s.url} (Ctrl-C stops)", file=out)
    client.run_forever()
    if client.reader_gone:
        raise BrokenPipeError  # main() exits quietly
    stats = client.stats
    print(f"received {stats.received:,} messages ({stats.failed} failed)", file=out)
    return 0


@contextlib.contextmanager
def _stop_on_sigterm(stop: threading.Event) -> Iterator[None]:
    """Within the block, SIGTERM (systemd, docker stop, kill) sets `stop` instead of killing."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve(
    collector: Collector,
    *,
    duration: float | None,
    stop: threading.Event,
    status_every: float,
    out: TextIO,
) -> None:
    """Run until the duration ends, Ctrl-C, `stop` (SIGTERM) or the stream fails.

    On a terminal a live status line; otherwise (systemd, a pipe, a file) nothing on `out`
    and a one-line summary logged at INFO every `status_every` seconds.
    """
    tty = out.isatty()
    deadline = None if duration is None else time.monotonic() + duration
    next_status = time.monotonic() + status_every
    try:
        while True:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0 or stop.wait(wait):
                break
            line = status_line(collector.stats, running=collector.running)
            if tty:
                print(f"\r{line}\x1b[K", end="", file=out, flush=True)
            elif time.monotonic() >= next_status:
                next_status = time.monotonic() + status_every
                logger.info("%s | %s rows since the start", line, f"{collector.stats.rows_total:,}")
            client = collector.client
            if client is not None and client.error is not None:
                raise client.error
    except KeyboardInterrupt:
        pass
    finally:
        if tty:
            print(file=out)
    if stop.is_set():
        logger.info("SIGTERM received: writing the last rows and stopping")


def _record_dataset(args: argparse.Namespace, out: TextIO) -> int:
    """`record --dataset DIR`: a service appending to a hive dataset until stopped."""
    root: Path = args.dataset
    root.mkdir(parents=True, exist_ok=True)  # fail now, not at the first flush
    if not out.isatty() and args.verbose == 0:
        # A service's journal: the summaries and the connection's news, not paho's chatter.
        logging.getLogger("tesaiot_data").setLevel(logging.INFO)
    stop = threading.Event()
    collector = Collector(
        _settings(args),
        window="1min",
        max_rows=200_000,
        snapshot_dir=root,
        snapshot_every=args.flush_every,
    )
    with _stop_on_sigterm(stop), collector:
        print(
            f"recording {collector.settings.subscription} to the dataset {root} "
            "(Ctrl-C or SIGTERM stops)",
            file=out,
            flush=True,
        )
        _serve(
            collector, duration=args.duration, stop=stop, status_every=args.status_every, out=out
        )
    # A dataset that could not be written: RecordingError out of the with, reported by main.
    stats = collector.stats
    print(
        f"recorded {stats.rows_total:,} rows from {stats.messages:,} messages to {root} "
        f"({stats.rejected:,} rejected, {stats.dropped:,} dropped)",
        file=out,
        flush=True,
    )
    return 0


def _cmd_record(args: argparse.Namespace, out: TextIO) -> int:
    if args.dataset is not None:
        return _record_dataset(args, out)
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


def _cmd_compact(args: argparse.Namespace, out: TextIO) -> int:
    result = compact_dataset(args.path, before=args.before)
    if not result.partitions:
        print(f"nothing to compact in {args.path}: no closed partition has several files", file=out)
        return 0
    print(
        f"compacted {plural(result.partitions, 'partition')} of {args.path}: "
        f"{result.parts:,} files -> "
        f"{result.partitions:,}, {result.rows:,} rows, {result.bytes_before:,} -> "
        f"{result.bytes_after:,} bytes",
        file=out,
    )
    return 0


def _cmd_query(args: argparse.Namespace, out: TextIO) -> int:
    sql = sys.stdin.read() if args.sql == "-" else args.sql
    frame = query(args.source, sql, memory_limit=args.memory_limit, threads=args.threads)
    if frame.empty:
        print(f"no rows (columns: {', '.join(map(str, frame.columns))})", file=out)
        return 0
    print(frame.head(args.max_rows).to_string(index=False), file=out)
    if len(frame) > args.max_rows:
        print(
            f"... {len(frame) - args.max_rows:,} more rows ({len(frame):,} in all; "
            "--max-rows shows more)",
            file=out,
        )
    return 0


def _positive_int(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return number


def _names_list(text: str | None) -> list[str] | None:
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def _cmd_replay(args: argparse.Namespace, out: TextIO) -> int:
    from dotenv import dotenv_values  # noqa: PLC0415  (as Settings.from_env reads it)

    from tesaiot_data.replay import NO_TOKEN, replay  # noqa: PLC0415  (only this command)

    try:
        settings = _settings(args)
    except TokenError:
        if not args.username:
            raise
        settings = _settings(args, token=NO_TOKEN)  # an account publishes: no token needed
    password = None
    if args.username:
        # Never on the command line, where other users see it: the environment or .env.
        file_values = dotenv_values(args.env_file) if Path(args.env_file).is_file() else {}
        password = os.environ.get("MQTT_PASSWORD") or file_values.get("MQTT_PASSWORD") or None
    result = replay(
        args.recording,
        settings=settings,
        speed=args.speed,
        max_speed=args.max_speed,
        devices=_names_list(args.devices),
        metrics=_names_list(args.metrics),
        shift_to_now=args.shift_to_now,
        qos=args.qos,
        username=args.username,
        password=password,
        client_id=args.client_id,
    )
    pace = "as fast as possible" if result.speed is None else f"at {result.speed:g}x"
    print(
        f"replayed {result.rows:,} rows in {result.messages:,} messages to {settings.url} "
        f"{pace} in {result.seconds:.2f} s (recorded span {result.span:.1f} s, "
        f"{result.skipped_rows:,} rows skipped, {result.dropped:,} dropped)",
        file=out,
    )
    if result.dropped:
        raise ConnectError(
            f"{result.dropped:,} of {result.messages + result.dropped:,} messages were not "
            f"published: the connection to {settings.url} was lost while publishing",
            hint="a broker closes the connection of an account that may not publish (the "
            "platform's tokens only read): pass --username of an account that may, with "
            "MQTT_PASSWORD in the environment or .env",
        )
    return 0


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from tesaiot_data import demo  # noqa: PLC0415  (needs Mosquitto; only this command does)

    out_path = Path(
        args.out or f"recordings/demo-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.parquet"
    )
    if args.replay is None:
        print("starting the local broker (Mosquitto) and the simulated fleet ...", file=out)
    else:
        print(f"starting the local broker (Mosquitto) and a replay of {args.replay} ...", file=out)
    settings = demo.start(
        devices=args.devices, rate=args.rate, seed=args.seed, replay=args.replay, speed=args.speed
    )
    try:
        print(f"collecting over {settings.url} with TLS verified against the demo CA", file=out)
        if args.env_out is not None:
            _write_env(args.env_out, settings)
            print(
                f"other commands reach this broker with --env-file {args.env_out} "
                "while the demo runs",
                file=out,
            )
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
        if args.env_out is not None:
            args.env_out.unlink(missing_ok=True)  # its token dies with the broker
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


def _write_env(path: Path, settings: Settings) -> None:
    """Write the demo broker's URL, token and CA as a dotenv file, readable by its owner only."""
    lines = [
        "# The running `tesaiot-data demo` broker; removed when the demo stops.",
        f"MQTT_BROKER_URL={settings.broker_url}",
        f"MQTT_API_TOKEN={settings.token}",
        f"CA_CERT_PATH={settings.ca_certs}",
    ]
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as sink:
        sink.write("\n".join(lines) + "\n")
    os.replace(temp, path)


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
            "--share-group",
            help="join this shared-subscription group: each message goes to one member "
            "(MQTT_SHARE_GROUP)",
        )
        group.add_argument(
            "--insecure",
            action="store_true",
            help="skip TLS certificate verification (MQTT_INSECURE)",
        )

    stream = commands.add_parser("stream", help="print each telemetry message as it arrives")
    connection_options(stream)
    stream.set_defaults(run=_cmd_stream)

    record = commands.add_parser(
        "record", help="record telemetry to a Parquet file, or as a service to a dataset"
    )
    connection_options(record)
    target = record.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="the Parquet file to write")
    target.add_argument(
        "--dataset",
        type=Path,
        help="append to this hive dataset folder (date=YYYY-MM-DD/part-*.parquet) until "
        "Ctrl-C or SIGTERM; several recorders may share it",
    )
    record.add_argument(
        "--duration", type=_duration, help="stop after this long (30s, 5min); default: Ctrl-C"
    )
    record.add_argument(
        "--flush-every",
        type=_duration,
        default=5.0,
        help="write a part this often, the most a crash can lose (default 5s)",
    )
    record.add_argument(
        "--status-every",
        type=_duration,
        default=60.0,
        help="with --dataset and no terminal: log a one-line summary this often (default 1min)",
    )
    record.set_defaults(run=_cmd_record)

    inspect = commands.add_parser(
        "inspect", help="describe a recording (file, parts folder or dataset)"
    )
    inspect.add_argument("path", help="a .parquet file, a .parts folder or a dataset folder")
    inspect.set_defaults(run=_cmd_inspect)

    compact = commands.add_parser(
        "compact", help="merge each closed day of a dataset into one file (safe while it is read)"
    )
    compact.add_argument("path", help="a dataset folder (DatasetWriter, snapshot_dir)")
    compact.add_argument(
        "--before",
        help="compact the days that ended by this time: 2025-12-10, or '7d' back from now "
        "(default: every day before today, UTC)",
    )
    compact.set_defaults(run=_cmd_compact)

    sql = commands.add_parser(
        "query",
        help="run SQL over a recording with DuckDB (view: telemetry; needs tesaiot-data[sql])",
    )
    sql.add_argument("source", help="a .parquet file, a .parts folder or a dataset folder")
    sql.add_argument(
        "sql", help='e.g. "select metric, avg(value) from telemetry group by 1"; - reads stdin'
    )
    sql.add_argument("--memory-limit", help="DuckDB's memory limit, e.g. 1GB (default 80%% of RAM)")
    sql.add_argument("--threads", type=_positive_int, help="DuckDB threads (default: every core)")
    sql.add_argument(
        "--max-rows", type=_positive_int, default=50, help="rows to print (default 50)"
    )
    sql.set_defaults(run=_cmd_query)

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
    replay.set_defaults(run=_cmd_replay)

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
    except BrokenPipeError:
        # The reader of our output closed it (`| head`): nothing to report. Point stdout at
        # devnull so that Python's own flush at exit does not fail again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (TesaiotError, OSError) as exc:  # OSError: FileNotFoundError, a full disk, ...
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
