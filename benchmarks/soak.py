"""Soak: days of a messy fleet compressed into millions of messages; memory must stay flat.

Run with `python benchmarks/soak.py [--messages 2000000] [--round 100000]` (root, for the
disk-full episode on a tmpfs; without root that episode is skipped). One `LocalBroker`, one
`Collector(window=None, max_rows=100_000)` over WSS with an active `record()`, and a raw-socket
publisher (`flood()`, QoS 0) sending rounds of messages in which

- every message carries a unique `_msgid` text and a unique 200-byte "frame" text,
- one message in ten comes from a device id never seen before (churning ids),
- the rest come from 50 steady devices, with a temperature value.

Between rounds the broker is restarted once (the collector reconnects), and the recording's
disk (a tmpfs) is filled for two rounds and then freed (a disk-full episode). After every round
the table shows RSS, the window's dictionary sizes, `frame()` time, and the counters. Nothing is
asserted: read the RSS column after warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tesaiot_data import Collector, load_recording
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.demo.flood import flood, publish_packet


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _packets(start: int, count: int) -> bytes:
    out = []
    for i in range(start, start + count):
        device = f"new-{i:08d}" if i % 10 == 0 else f"dev-{i % 50:02d}"
        payload = b'{"_msgid": "%08x.%06x", "frame": "%s", "temperature": %d.%d}' % (
            (i * 2654435761) % 2**32,
            i % 999_983,
            b"%08d" % i * 25,
            20 + i % 10,
            i % 10,
        )
        out.append(publish_packet(f"device/{device}/telemetry/camera", payload))
    return b"".join(out)


@contextlib.contextmanager
def _disk(size_mb: int) -> Iterator[tuple[Path, bool]]:
    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        mount = Path(folder) / "disk"
        mount.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)],
            capture_output=True,
            check=False,
        )
        try:
            yield mount, done.returncode == 0
        finally:
            if done.returncode == 0:
                subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path) -> Path:
    filler = mount / "filler"
    with open(filler, "wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 2**20)
    return filler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2_000_000)
    parser.add_argument("--round", type=int, default=100_000)
    parser.add_argument("--max-rows", type=int, default=100_000)
    args = parser.parse_args()
    rounds = args.messages // args.round
    restart_at, full_from, full_until = rounds // 3, rounds // 2, rounds // 2 + 2

    with LocalBroker() as broker, _disk(2048) as (disk, mounted):
        collector = Collector(broker.settings(qos=0), window=None, max_rows=args.max_rows)
        collector.start()
        recording = collector.record(disk / "soak.parquet", flush_every=1.0)
        filler: Path | None = None
        print(
            f"{'round':>5} {'sent':>9} {'RSS MB':>7} {'dict dev':>8} {'dict text':>9} "
            f"{'frame ms':>8} {'rows':>7} {'rec rows':>9} {'on disk':>9} {'rejects':>7} "
            f"{'dropped':>7} event"
        )
        started = time.monotonic()
        sent = 0
        for k in range(rounds):
            event = ""
            if k == restart_at:
                broker.restart()
                deadline = time.monotonic() + 30
                while not collector.stats.connected and time.monotonic() < deadline:
                    time.sleep(0.1)
                event = f"broker restarted, reconnects={collector.stats.reconnects}"
            if mounted and k == full_from:
                filler = _fill(disk)
                event = "disk full"
            if filler is not None and k == full_until:
                filler.unlink()
                filler = None
                event = "disk freed"
            flood(broker.publisher(), _packets(sent, args.round), timeout=300)
            sent += args.round
            while collector.stats.received < sent and time.monotonic() - started < 3600:
                time.sleep(0.05)
            collector.wait_idle(120)
            _trim()
            t = time.perf_counter()
            collector.frame()
            frame_ms = (time.perf_counter() - t) * 1000
            entries = collector.window.dictionary_entries
            stats = collector.stats
            if recording.error is not None and not event:
                event = f"recording: {type(recording.error).__name__}"
            print(
                f"{k + 1:>5} {sent:>9,} {_rss_mb():>7.0f} {entries['device_id']:>8,} "
                f"{entries['value_text']:>9,} {frame_ms:>8.1f} {stats.rows:>7,} "
                f"{recording.rows:>9,} {recording.rows_on_disk:>9,} {stats.rejected:>7,} "
                f"{stats.dropped:>7,} {event}",
                flush=True,
            )
        elapsed = time.monotonic() - started
        path = recording.stop()
        collector.stop()
        stats = collector.stats
        recorded = len(load_recording(path, metrics=["temperature"]))
        print(
            f"\n{sent:,} messages in {elapsed:.0f} s ({sent / elapsed:,.0f} msg/s); "
            f"received {stats.received:,} = messages {stats.messages:,} + rejected "
            f"{stats.rejected:,} + dropped {stats.dropped:,} + failed {stats.failed:,} + "
            f"pending {stats.pending:,}; dictionary compactions {collector.window.compactions:,}; "
            f"recording: {recording.rows:,} rows, {recorded:,} temperature rows read back, "
            f"{path.stat().st_size / 2**20:.0f} MB"
        )


if __name__ == "__main__":
    main()
