"""The commands that publish: `replay` (a recording back to a broker) and `demo` (all local).

`demo` starts the local broker with a simulated fleet (or a replay), records what a collector
receives, and can write the broker's connection as a dotenv file for other commands.
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from tesaiot_data.cli.console import recording_status, watch
from tesaiot_data.cli.files import summary
from tesaiot_data.cli.options import names_list, settings_from_args
from tesaiot_data.collector import Collector
from tesaiot_data.errors import ConnectError, TokenError
from tesaiot_data.settings import Settings

__all__ = ["cmd_demo", "cmd_replay"]


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


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    """`demo`: local broker, simulated fleet (or a replay), collector and recording."""
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
            watch(
                collector,
                duration=args.duration,
                line=lambda: recording_status(collector, recording),
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
    summary(path, out)
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
