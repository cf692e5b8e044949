"""Benchmark scale-out: the summed ingest rate of 1 and 2 collector processes in one share group.

Run with `python benchmarks/scale_out.py [--quick] [--messages N] [--repeat R] [--members 1,2]`
(see README.md beside this file). One `LocalBroker`; for each case, K collector processes
(`Collector(share_group=...)` over WSS, verified TLS, QoS 0, `window=None`, no sinks) join a
share group of their own, then this process floods the broker with N pre-encoded QoS 0
PUBLISH packets (`tesaiot_data.demo.flood`, 50 devices, standard payloads). The broker hands
each message to one member.

Summed rate = N / (first `received_at` in any member to the moment a 5 ms poll in every
member shows all N messages parsed into rows). Each member also reports its own share and
its network-thread rate (its messages / its first to last `received_at`). CPU seconds per
wall second of every member, of Mosquitto and of this process (the sender) come from
/proc/<pid>/stat, the machine's busy cores from /proc/stat; "others" is what other programs
took meanwhile, and "us/msg" the members' CPU microseconds per message, summed over the
members (steadier than the rate on a shared machine). Cases run interleaved, in alternating
order, so that load from other programs spreads over all of them. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import platform
import statistics
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

from tesaiot_data.collector.collector import Collector
from tesaiot_data.demo.broker import LocalBroker
from tesaiot_data.demo.fleet import DeviceFleet
from tesaiot_data.demo.flood import fleet_packets, flood
from tesaiot_data.settings import Settings

_DEVICES = 50
_POLL = 0.005  # seconds between a member's progress updates
_STALL_TIMEOUT = 20.0  # seconds without progress before a run gives up
_START_TIMEOUT = 60.0


def _cpu_seconds(pid: int | None) -> float | None:
    """User+system CPU seconds of a process, from /proc (None where there is no /proc)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat (0, 0 elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


# --- a member: one collector process --------------------------------------------------------


def _member_main(settings: Settings, parsed: Synchronized[int], conn: Connection) -> None:
    """Runs in a member process: collect until told to stop, publishing the parsed count."""
    collector = Collector(settings, window=None, max_rows=100_000_000)
    collector.start()
    conn.send("ready")
    while not conn.poll(_POLL):
        parsed.value = collector.stats.messages
    conn.recv()
    collector.wait_idle()
    parsed.value = collector.stats.messages
    received = collector.frame()["received_at"]
    first = received.min().value / 1e9 if len(received) else 0.0
    last = received.max().value / 1e9 if len(received) else 0.0
    stats = collector.stats
    collector.stop()
    conn.send((stats.messages, stats.dropped, first, last))


@dataclass
class Member:
    """A member process and the counter it updates."""

    process: mp.process.BaseProcess
    conn: Connection
    parsed: Synchronized[int]


@dataclass
class Run:
    """One run of one case."""

    rate: float  # summed: messages per second for the whole group
    shares: list[int]  # messages each member parsed
    member_rates: list[float]  # each member's network-thread rate
    cpu_members: list[float]  # CPU s per wall s of each member
    cpu_broker: float | None
    cpu_sender: float
    cpu_machine: float  # busy cores of the whole machine during the run (all programs)
    wall: float  # seconds the run's CPU figures cover
    dropped: int

    @property
    def member_us(self) -> float:
        """CPU microseconds the members spent per message, summed over the members."""
        messages = sum(self.shares)
        return sum(self.cpu_members) * self.wall / messages * 1e6 if messages else float("nan")

    @property
    def others(self) -> float:
        """Busy cores that were neither a member, nor the broker, nor the sender."""
        ours = sum(self.cpu_members) + (self.cpu_broker or 0.0) + self.cpu_sender
        return max(0.0, self.cpu_machine - ours)


@dataclass
class Case:
    members: int
    runs: list[Run] = field(default_factory=list)

    @property
    def median(self) -> float:
        rates = [run.rate for run in self.runs if run.rate > 0]
        return statistics.median(rates) if rates else float("nan")


def _start_members(broker: LocalBroker, count: int) -> list[Member]:
    context = mp.get_context("spawn")
    group = f"bench-{uuid.uuid4().hex[:8]}"
    members = []
    for index in range(count):
        settings = broker.settings(qos=0, share_group=group, client_id=f"bench-{group}-{index}")
        parsed = context.Value("q", 0, lock=False)
        conn, child = context.Pipe()
        process = context.Process(
            target=_member_main, args=(settings, parsed, child), name=f"member-{index}", daemon=True
        )
        process.start()
        members.append(Member(process, conn, parsed))
    for member in members:
        if not member.conn.poll(_START_TIMEOUT) or member.conn.recv() != "ready":
            raise RuntimeError("a member did not start")
    return members


def _stop_members(members: Sequence[Member]) -> list[tuple[int, int, float, float]]:
    for member in members:
        member.conn.send("stop")
    results = [member.conn.recv() for member in members]
    for member in members:
        member.process.join(timeout=20)
        if member.process.is_alive():
            member.process.terminate()
    return results


def run_case(broker: LocalBroker, packets: bytes, count: int, members_count: int) -> Run:
    members = _start_members(broker, members_count)
    try:
        pids = [member.process.pid for member in members]
        cpu0 = [_cpu_seconds(pid) or 0.0 for pid in pids]
        broker0 = _cpu_seconds(broker.pid)
        own0, wall0 = time.process_time(), time.time()
        busy0, total0 = _machine_ticks()
        sender = threading.Thread(target=flood, args=(broker.publisher(), packets), daemon=True)
        sender.start()
        last, last_change = -1, time.monotonic()
        while (done := sum(member.parsed.value for member in members)) < count:
            if done != last:
                last, last_change = done, time.monotonic()
            elif time.monotonic() - last_change > _STALL_TIMEOUT:
                print(f"  stalled at {done:,} of {count:,} messages")
                break
            time.sleep(_POLL)
        finished = time.time()
        wall = finished - wall0
        cpu_members = [
            ((_cpu_seconds(pid) or 0.0) - before) / wall
            for pid, before in zip(pids, cpu0, strict=True)
        ]
        broker1 = _cpu_seconds(broker.pid)
        cpu_broker = (broker1 - broker0) / wall if broker0 is not None and broker1 else None
        cpu_sender = (time.process_time() - own0) / wall
        busy1, total1 = _machine_ticks()
        cores = os.cpu_count() or 1
        cpu_machine = (busy1 - busy0) / (total1 - total0) * cores if total1 > total0 else 0.0
        sender.join(timeout=60)
    finally:
        results = _stop_members(members)
    shares = [messages for messages, _, _, _ in results]
    firsts = [first for messages, _, first, _ in results if messages]
    member_rates = [
        messages / (last - first) if messages > 1 and last > first else 0.0
        for messages, _, first, last in results
    ]
    start = min(firsts) if firsts else wall0
    total = sum(shares)
    return Run(
        rate=total / (finished - start) if finished > start else 0.0,
        shares=shares,
        member_rates=member_rates,
        cpu_members=cpu_members,
        cpu_broker=cpu_broker,
        cpu_sender=cpu_sender,
        cpu_machine=cpu_machine,
        wall=wall,
        dropped=sum(dropped for _, dropped, _, _ in results),
    )


def _report(cases: dict[int, Case], count: int) -> None:
    print(f"\nsummed ingest rate, {count:,} messages per run (median, min-max of the runs)")
    print(f"{'members':>8} {'msg/s':>9} {'min-max':>17} {'shares':>16} {'member CPU':>10} "
          f"{'us/msg':>7} {'broker':>7} {'sender':>7} {'others':>7}")  # fmt: skip
    for members, case in cases.items():
        rates = [run.rate for run in case.runs]
        last = case.runs[-1]
        cpu = "+".join(f"{c:.0%}" for c in statistics_by_member(case))
        broker = [run.cpu_broker for run in case.runs if run.cpu_broker is not None]
        print(
            f"{members:>8} {case.median:>9,.0f} {min(rates):>8,.0f}-{max(rates):<8,.0f} "
            f"{'/'.join(f'{s:,}' for s in last.shares):>16} {cpu:>10} "
            f"{statistics.median(run.member_us for run in case.runs):>7.1f} "
            f"{statistics.median(broker) if broker else float('nan'):>7.0%} "
            f"{statistics.median(run.cpu_sender for run in case.runs):>7.0%} "
            f"{statistics.median(run.others for run in case.runs):>7.0%}"
        )
        for run in case.runs:
            if run.dropped:
                print(f"  a run dropped {run.dropped:,} messages (queue full)")
    if 1 in cases and 2 in cases:
        one, two = cases[1], cases[2]
        paired = [b.rate / a.rate for a, b in zip(one.runs, two.runs, strict=False) if a.rate > 0]
        print(
            f"\nratio 2 members / 1 member: {two.median / one.median:.2f} (medians); "
            f"paired per repeat: {', '.join(f'{r:.2f}' for r in paired)}"
        )
        own = statistics.median(rate for run in two.runs for rate in run.member_rates)
        print(f"each of 2 members' own network-thread rate (median): {own:,.0f} msg/s")


def statistics_by_member(case: Case) -> list[float]:
    """Median CPU share of each member position over the runs."""
    columns = zip(*(run.cpu_members for run in case.runs), strict=True)
    return [statistics.median(column) for column in columns]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30k messages x 2 repeats")
    parser.add_argument("--messages", type=int, help="messages per run (default 100,000)")
    parser.add_argument("--repeat", type=int, help="repeats of every case (default 3)")
    parser.add_argument("--members", default="1,2", help="group sizes to run (default 1,2)")
    args = parser.parse_args(argv)
    count = args.messages or (30_000 if args.quick else 100_000)
    repeat = args.repeat or (2 if args.quick else 3)
    sizes = [int(size) for size in args.members.split(",")]

    print(
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}"
    )
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(LocalBroker())
        fleet = DeviceFleet(broker.publisher(), devices=_DEVICES, mixed_shapes=False, malformed=0)
        packets = fleet_packets(fleet, count)
        cases = {size: Case(size) for size in sizes}
        for index in range(repeat):
            order = sizes if index % 2 == 0 else sizes[::-1]
            for size in order:
                run = run_case(broker, packets, count, size)
                cases[size].runs.append(run)
                print(
                    f"repeat {index + 1}, {size} member(s): {run.rate:,.0f} msg/s, shares "
                    f"{run.shares}, member CPU {[f'{c:.0%}' for c in run.cpu_members]}, "
                    f"broker {run.cpu_broker or 0:.0%}, sender {run.cpu_sender:.0%}, "
                    f"other programs {run.others:.0%}, {run.member_us:.1f} member CPU us/msg"
                )
    _report(cases, count)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
