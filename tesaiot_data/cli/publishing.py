"""The commands that publish: `replay` (a recording back to a broker) and `demo` (all local).

`demo` starts the local broker with a simulated fleet (or a replay), records what a collector
receives, and can write the broker's connection as a dotenv file for other commands.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from tesaiot_data.cli.console import printable, recording_status, stop_on_signals, watch
from tesaiot_data.cli.files import summary
from tesaiot_data.cli.options import names_list, settings_from_args
from tesaiot_data.collector import Collector
from tesaiot_data.collector.stats import plural
from tesaiot_data.errors import ConfigError, ConnectError, TokenError
from tesaiot_data.settings import Settings

if TYPE_CHECKING:
    from tesaiot_data.collector.recording import Recording
    from tesaiot_data.collector.stats import CollectorStats
    from tesaiot_data.replay import ReplayResult

__all__ = ["cmd_demo", "cmd_replay", "demo_counts", "replay_summary", "write_env_file"]

logger = logging.getLogger(__name__)

# Besides Ctrl-C: `kill`, systemd, `docker stop`, and a terminal that closes.
_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def cmd_replay(args: argparse.Namespace, out: TextIO) -> int:
    """`replay RECORDING`: publish a recording to a broker, at its pace or faster.

    Raises:
        ConnectError: Some messages were not published (the connection was lost).
    """
    from dotenv import dotenv_values  # noqa: PLC0415  (as Settings.from_env reads it)

    from tesaiot_data.replay import NO_TOKEN, replay  # noqa: PLC0415  (only this command)

    try:
        settings = settings_from_args(args)
    except TokenError:
        if not args.username:
            raise
        # An account publishes: no token needed.
        settings = settings_from_args(args, token=NO_TOKEN)
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
        devices=names_list(args.devices),
        metrics=names_list(args.metrics),
        shift_to_now=args.shift_to_now,
        qos=args.qos,
        username=args.username,
        password=password,
        client_id=args.client_id,
    )
    print(printable(replay_summary(result, url=settings.url, qos=args.qos)), file=out)
    if result.dropped:
        raise ConnectError(
            f"{result.dropped:,} of {result.messages + result.dropped:,} messages were not "
            f"published: the connection to {settings.url} was lost while publishing",
            hint="a broker closes the connection of an account that may not publish (the "
            "platform's tokens only read): pass --username of an account that may, with "
            "MQTT_PASSWORD in the environment or .env",
        )
    return 0


def replay_summary(result: ReplayResult, *, url: object, qos: int) -> str:
    """The line `replay` prints: what was delivered, the rows skipped by reason, the drops.

    Delivered means written to the connection (QoS 0, which has no acknowledgement) or
    acknowledged by the broker (QoS 1 and 2), not merely attempted.

    Args:
        result: The replay's result.
        url: Where it published.
        qos: The QoS it published at.

    Returns:
        One line, without a final newline.
    """
    pace = "as fast as possible" if result.speed is None else f"at {result.speed:g}x"
    how = "written to the connection" if qos == 0 else "acknowledged by the broker"
    reasons = ", ".join(f"{reason}: {n:,}" for reason, n in result.skipped_by_reason.items())
    return (
        f"replayed {plural(result.rows, 'row')} in {plural(result.messages, 'message')} to "
        f"{url} {pace} in {result.seconds:.2f} s (recorded span {result.span:.1f} s; "
        f"{how}); {plural(result.skipped_rows, 'row')} skipped"
        f"{f' ({reasons})' if reasons else ''}, {plural(result.dropped, 'message')} dropped"
    )


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    """`demo`: local broker, simulated fleet (or a replay), collector and recording.

    Ctrl-C, SIGTERM and SIGHUP (a closed terminal) end it the same way: the recording is
    saved, the `--env-out` file and the broker's folder are removed, the summary is printed.

    Raises:
        ConfigError: The `--env-out` file exists (it is never overwritten).
    """
    env_out: Path | None = args.env_out
    if env_out is not None and os.path.lexists(env_out):
        raise _env_file_exists(env_out)  # before anything starts
    stop = threading.Event()
    with stop_on_signals(stop, _STOP_SIGNALS):
        return _run_demo(args, out, env_out=env_out, stop=stop)


def _run_demo(
    args: argparse.Namespace, out: TextIO, *, env_out: Path | None, stop: threading.Event
) -> int:
    from tesaiot_data import demo  # noqa: PLC0415  (needs Mosquitto; only this command does)

    out_path = Path(
        args.out or f"recordings/demo-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.parquet"
    )
    if args.replay is None:
        print("starting the local broker (Mosquitto) and the simulated fleet ...", file=out)
    else:
        print(
            f"starting the local broker (Mosquitto) and a replay of {printable(args.replay)} ...",
            file=out,
        )
    settings = demo.start(
        devices=args.devices,
        rate=args.rate,
        seed=args.seed,
        qos=args.qos,
        replay=args.replay,
        speed=args.speed,
    )
    written: os.stat_result | None = None
    try:
        print(f"collecting over {settings.url} with TLS verified against the demo CA", file=out)
        if env_out is not None:
            written = write_env_file(env_out, settings)
            print(
                f"other commands reach this broker with --env-file {printable(env_out)} while "
                "the demo runs",
                file=out,
            )
        collector = Collector(settings, window="5min")
        # Recording from before the connection to after the disconnect: the file holds every
        # row and reject the collector received, so the summary's counts are the file's.
        recording = collector.record(out_path)
        try:
            collector.start()
        except BaseException:
            recording.stop()
            out_path.unlink(missing_ok=True)  # an empty file of a demo that never ran
            raise
        try:
            watch(
                collector,
                duration=args.duration,
                line=lambda: recording_status(collector, recording),
                out=out,
                stop=stop,
            )
            if stop.is_set():
                logger.info("SIGTERM or SIGHUP received: stopping the demo as on Ctrl-C")
        finally:
            collector.stop()  # every received message parsed, the recording closed with it
        path = recording.stop()
        stats = collector.stats  # after stop(): every received message is accounted for
    finally:
        if env_out is not None and written is not None:
            _remove_if_same(env_out, written)  # its token dies with the broker
        demo.stop()
    print(f"\n{demo_counts(stats, recording)}\n", file=out)
    summary(path, out)
    print(
        "\nnext: the notebooks: .venv/bin/jupyter lab notebooks/\n"
        "      the command line: source .venv/bin/activate, then tesaiot-data --help\n"
        "      (or without activating: .venv/bin/tesaiot-data --help)\n"
        f"      the recording in Python: tesaiot_data.load_recording({str(path)!r})",
        file=out,
    )
    return 0


def demo_counts(stats: CollectorStats, recording: Recording) -> str:
    """The demo's line of counts: what was received, and how much of it is in the recording.

    Args:
        stats: The collector's counters, once it stopped.
        recording: The demo's recording, stopped.

    Returns:
        One line, for example `received 253 messages, none before the recording started or
        after it stopped: 251 parsed into 302 rows, all 302 in the recording; 2 rejected
        (not_json: 2), all 2 in its rejects file; 0 dropped`.
    """
    reasons = ", ".join(f"{reason}: {n:,}" for reason, n in sorted(stats.rejects_by_reason.items()))
    rows = _in_recording(stats.rows_total, recording.rows, "the recording")
    rejects = _in_recording(stats.rejected, recording.rejects, "its rejects file")
    whole = stats.rows_total == recording.rows and stats.rejected == recording.rejects
    when = ", none before the recording started or after it stopped" if whole else ""
    return (
        f"received {plural(stats.received, 'message')}{when}: {stats.messages:,} parsed into "
        f"{plural(stats.rows_total, 'row')}, {rows}; {stats.rejected:,} rejected"
        f"{f' ({reasons})' if reasons else ''}{f', {rejects}' if stats.rejected else ''}; "
        f"{stats.dropped:,} dropped"
    )


def _in_recording(received: int, recorded: int, where: str) -> str:
    if received == recorded:
        return f"all {recorded:,} in {where}" if received != 1 else f"it in {where}"
    # Only a recording that failed (see its error above) misses some.
    return f"{recorded:,} of them in {where}, {received - recorded:,} not"


def write_env_file(path: Path, settings: Settings) -> os.stat_result:
    """Write the broker's URL, token and CA as a new dotenv file, readable by its owner only.

    The text goes to a temporary file made exclusively in the same folder (a stale or planted
    file of any name is never opened), mode 0600 whatever the umask, and is linked into place
    only if nothing is at `path`: an existing file is never overwritten.

    Args:
        path: The dotenv file to make.
        settings: The broker's settings: its URL, token and CA file.

    Returns:
        The new file's status, to recognise it later (`st_dev`, `st_ino`).

    Raises:
        ConfigError: Something is at `path` already.
        OSError: The folder cannot be written.
    """
    lines = [
        "# The running `tesaiot-data demo` broker; removed when the demo stops.",
        f"MQTT_BROKER_URL={settings.broker_url}",
        f"MQTT_API_TOKEN={settings.token}",
        f"CA_CERT_PATH={settings.ca_certs}",
    ]
    folder = path.parent
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    temp = Path(temp_name)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as sink:
            sink.write("\n".join(lines) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
        _link_new(temp, path)
        return path.lstat()
    finally:
        temp.unlink(missing_ok=True)


def _link_new(temp: Path, path: Path) -> None:
    # A hard link is made only where nothing is: the atomic form of "create, never replace".
    try:
        os.link(temp, path, follow_symlinks=False)
    except FileExistsError:
        raise _env_file_exists(path) from None
    except OSError:
        # A file system without hard links (some network and FUSE mounts): the check and the
        # rename are then two steps.
        if os.path.lexists(path):
            raise _env_file_exists(path) from None
        os.replace(temp, path)


def _remove_if_same(path: Path, written: os.stat_result) -> None:
    # Only the file this demo wrote: not one the user put in its place since.
    try:
        now = path.lstat()
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) == (written.st_dev, written.st_ino):
        path.unlink(missing_ok=True)


def _env_file_exists(path: Path) -> ConfigError:
    return ConfigError(
        f"{path} exists; the demo never overwrites a file with --env-out",
        hint="name a new file (the demo writes it and removes it when it stops), or move "
        "this one away first",
    )
