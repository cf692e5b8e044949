"""Candidate stores for the durable inbox of issue 16: commit latency, rate, drain, crash safety.

Run with `python benchmarks/durable_inbox.py [--quick] [--repeat R] [--dir PATH]
[--only micro,loop,window,drain,crash] [--stores file+fsync,...] [--kills N]` (see README.md
beside this file; `--quick` takes ~1-1.5 min, the full run ~5-7). No broker and no tesaiot_data
import: the standard library only, on the disk under `--dir` (default: the temp folder).
Nothing is asserted; the crash check prints what it found.

The inbox holds one record per QoS 1/2 message: seq (a sequence number of our own), received_ns,
retain, qos, mid (the MQTT packet id, for spotting a redelivery), topic, payload. A group of
messages is made durable at once (one commit). The candidates:

- `file+fsync`, `file+fdatasync`: (a) records appended to one file opened `O_APPEND`, framed
  as [body length u32][CRC32 of length and body u32][body], one `os.write` and one
  `os.fsync` / `os.fdatasync` per group. A reader stops at the first frame that is short, has
  a bad CRC or breaks the seq chain, and recovery truncates the file there.
- `zeroed+fdatasync`: the same records written with `os.pwrite` into a segment file filled
  with zeros (and fsynced) beforehand, so a commit changes no file size or block map and
  `fdatasync` has no metadata to write. A zero length ends the records; recovery zeroes any
  torn bytes after the last good record.
- `sqlite FULL`, `sqlite NORMAL`: (b) `sqlite3` in WAL mode, one table keyed by seq,
  `executemany` inside BEGIN/COMMIT per group, `synchronous=FULL` (the WAL fsynced at every
  commit) or `NORMAL` (fsync only at checkpoints: safe from a process crash, not from power
  loss). Default auto-checkpoint (1,000 pages), whose cost lands in some commits.

Sections:

- micro: one writer thread commits groups of 1, 8, 32, 128 messages of ~100 and ~1,000-byte
  payloads back to back; commit latency p50/p99/max (encoding included) and messages/s.
- loop: a producer thread at 200, 2,000 and 20,000 msg/s and a committer thread that commits
  whatever has arrived each time it is free (group commit, no timer); group sizes and the time
  from arrival to durable. `20/p50` is what that latency allows with 20 messages in flight.
- window: the same committer with a broker's in-flight limit: a message may arrive only while
  fewer than 20 (Mosquitto's default `max_inflight_messages`) or 32 (EMQX) are unacknowledged,
  and it is acknowledged when durable. The rate is the disk's ceiling for QoS 1 (no network).
- drain: a child process writes N messages (groups of 128) and is SIGKILLed; then reopen and
  read everything back (CRC-checked), and delete what was handed on (files: unlink the
  segment; SQLite: DELETE the first half, then the rest, then `wal_checkpoint(TRUNCATE)`).
- crash: a child recovers the store, commits groups of 1-32 messages of 20-600 bytes (each
  derived from its seq) and reports every durable seq over a pipe; it is SIGKILLed at a random
  moment (a quarter of the kills within 50 ms of its start, most of them during its recovery;
  the rest 5-150 ms after it), the store is reopened and every record up to the last reported
  seq must be there, intact and in order.
  For the files, a torn next record (cut at a random byte, sometimes followed by garbage, or
  whole with one byte flipped) is then written after the last good one: the reader must stop
  before it, and the next child's recovery must remove it, or its own acknowledged records
  would be unreachable. A SIGKILL keeps the page cache, so this checks the format and the
  recovery code, not what a power cut keeps (that needs a VM or dm-flakey).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import random
import select
import shutil
import signal
import sqlite3
import statistics
import struct
import tempfile
import threading
import time
import traceback
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, Protocol

MIB = 1 << 20
T0_NS = 1_765_324_800 * 10**9
GROUPS = (1, 8, 32, 128)
PAYLOADS = (100, 1_000)
RATES = (200, 2_000, 20_000)
WINDOWS = (20, 32)
_TOPIC_RNG = random.Random(16)
TOPICS = [
    f"device/{uuid.UUID(int=_TOPIC_RNG.getrandbits(128), version=4)}/telemetry/env"
    for _ in range(50)
]


class Message(NamedTuple):
    """One inbox record; the field order is the SQLite table's column order."""

    seq: int
    received_ns: int
    retain: bool
    qos: int
    mid: int
    topic: str
    payload: bytes


_FRAME = struct.Struct("<II")  # body length, CRC32 of (the 4 length bytes + body)
_HEAD = struct.Struct("<QqBBHH")  # seq, received_ns, retain, qos, mid, topic length
_MAX_BODY = 1 << 28  # MQTT's largest packet


def encode(m: Message) -> bytes:
    topic = m.topic.encode()
    head = _HEAD.pack(m.seq, m.received_ns, m.retain, m.qos, m.mid, len(topic))
    body = head + topic + m.payload
    length = len(body).to_bytes(4, "little")
    return length + zlib.crc32(body, zlib.crc32(length)).to_bytes(4, "little") + body


def scan(data: bytes) -> tuple[list[Message], int]:
    """The records of a valid prefix of `data`, and where that prefix ends."""
    view = memoryview(data)
    records: list[Message] = []
    pos = 0
    while pos + _FRAME.size <= len(view):
        length, crc = _FRAME.unpack_from(view, pos)
        start = pos + _FRAME.size
        end = start + length
        if length < _HEAD.size or length > _MAX_BODY or end > len(view):
            break
        if zlib.crc32(view[start:end], zlib.crc32(view[pos : pos + 4])) != crc:
            break
        seq, received, retain, qos, mid, topic_len = _HEAD.unpack_from(view, start)
        if records and seq != records[-1].seq + 1:
            break  # a stale record from an earlier life of the file, never ours
        at = start + _HEAD.size
        topic = str(view[at : at + topic_len], "utf-8")
        records.append(
            Message(seq, received, bool(retain), qos, mid, topic, bytes(view[at + topic_len : end]))
        )
        pos = end
    return records, pos


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store(Protocol):
    next_seq: int

    def recover(self) -> tuple[list[Message], int]: ...  # records, torn bytes dropped
    def commit(self, group: Sequence[Message]) -> None: ...
    def drop_through(self, seq: int) -> None: ...  # what was handed on to the parts
    def close(self) -> None: ...


class AppendFile:
    """(a) One file, records appended, `sync` (os.fsync or os.fdatasync) per group."""

    def __init__(self, folder: Path, sync: Callable[[int], None]) -> None:
        self.path = folder / "inbox.log"
        new = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        if new:
            _sync_dir(folder)
        self._sync = sync
        self.next_seq = 0

    def recover(self) -> tuple[list[Message], int]:
        with open(self.path, "rb") as file:
            data = file.read()
        records, end = scan(data)
        if len(data) > end:
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        self.next_seq = records[-1].seq + 1 if records else 0
        return records, len(data) - end

    def commit(self, group: Sequence[Message]) -> None:
        view = memoryview(b"".join([encode(m) for m in group]))
        while view:
            view = view[os.write(self._fd, view) :]
        self._sync(self._fd)

    def drop_through(self, seq: int) -> None:
        # A segment holds one part's worth: once handed on, the whole file goes.
        os.close(self._fd)
        self.path.unlink()
        _sync_dir(self.path.parent)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)

    def close(self) -> None:
        os.close(self._fd)


class SegmentFullError(Exception):
    pass


SEGMENT_PREP: list[tuple[int, float]] = []  # (bytes, seconds) of every segment filled with zeros


class ZeroedSegment:
    """(a') Records written into a segment filled with zeros beforehand, fdatasync per group."""

    def __init__(self, folder: Path, size: int) -> None:
        self.path = folder / "inbox.seg"
        if not self.path.exists():
            begin = time.perf_counter()
            size = math.ceil(size / MIB) * MIB
            zeros = bytes(MIB)
            with open(self.path, "wb") as file:
                for _ in range(size // MIB):
                    file.write(zeros)
                file.flush()
                os.fsync(file.fileno())
            _sync_dir(folder)
            SEGMENT_PREP.append((size, time.perf_counter() - begin))
        self._fd = os.open(self.path, os.O_RDWR)
        self.size = os.fstat(self._fd).st_size
        self._offset = 0
        self.next_seq = 0

    def recover(self) -> tuple[list[Message], int]:
        with open(self.path, "rb") as file:
            data = file.read()
        records, end = scan(data)
        # Zero whatever a torn write left after the last good record, so that later records
        # written here can never be followed by a stale one.
        stop = end
        while data[stop : stop + 65536].strip(b"\0"):
            stop += 65536
        stop = min(stop, len(data))
        torn = len(data[end:stop].rstrip(b"\0"))
        if stop > end:
            os.pwrite(self._fd, bytes(stop - end), end)
            os.fdatasync(self._fd)
        self._offset = end
        self.next_seq = records[-1].seq + 1 if records else 0
        return records, torn

    def commit(self, group: Sequence[Message]) -> None:
        data = b"".join([encode(m) for m in group])
        if self._offset + len(data) > self.size:
            raise SegmentFullError(self.path)
        view, offset = memoryview(data), self._offset
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written
        os.fdatasync(self._fd)
        self._offset = offset

    def drop_through(self, seq: int) -> None:
        os.close(self._fd)
        self.path.unlink()
        _sync_dir(self.path.parent)
        self._fd = os.open(os.devnull, os.O_RDONLY)  # a real inbox takes the next spare segment

    def close(self) -> None:
        os.close(self._fd)


class SqliteInbox:
    """(b) SQLite in WAL mode, one transaction per group."""

    def __init__(self, folder: Path, synchronous: str) -> None:
        self.path = folder / "inbox.sqlite3"
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS inbox (seq INTEGER PRIMARY KEY, received_ns INTEGER NOT"
            " NULL, retain INTEGER NOT NULL, qos INTEGER NOT NULL, mid INTEGER NOT NULL, topic"
            " TEXT NOT NULL, payload BLOB NOT NULL)"
        )
        self.next_seq = 0

    def recover(self) -> tuple[list[Message], int]:
        rows = self._db.execute("SELECT * FROM inbox ORDER BY seq").fetchall()
        records = [Message(s, r, bool(k), q, m, t, p) for s, r, k, q, m, t, p in rows]
        self.next_seq = records[-1].seq + 1 if records else 0
        return records, 0

    def commit(self, group: Sequence[Message]) -> None:
        self._db.execute("BEGIN")
        self._db.executemany("INSERT INTO inbox VALUES (?, ?, ?, ?, ?, ?, ?)", group)
        self._db.execute("COMMIT")

    def drop_through(self, seq: int) -> None:
        self._db.execute("BEGIN")
        self._db.execute("DELETE FROM inbox WHERE seq <= ?", (seq,))
        self._db.execute("COMMIT")

    def checkpoint(self) -> None:
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def integrity(self) -> str:
        return str(self._db.execute("PRAGMA quick_check").fetchone()[0])

    def close(self) -> None:
        self._db.close()


STORES: dict[str, Callable[[Path, int], Store]] = {
    "file+fsync": lambda folder, size: AppendFile(folder, os.fsync),
    "file+fdatasync": lambda folder, size: AppendFile(folder, os.fdatasync),
    "zeroed+fdatasync": ZeroedSegment,
    "sqlite FULL": lambda folder, size: SqliteInbox(folder, "FULL"),
    "sqlite NORMAL": lambda folder, size: SqliteInbox(folder, "NORMAL"),
}


def payload_of(size: int) -> bytes:
    """A JSON telemetry payload of about `size` bytes."""
    head = b'{"timestamp":"2026-12-07T15:32:00.123Z","temperature":23.51,"humidity":41.2'
    pad = max(0, size - len(head) - 10)
    return head + b',"pad":"' + random.Random(size).randbytes(pad).hex()[:pad].encode() + b'"}'


def message(seq: int, payload: bytes) -> Message:
    return Message(
        seq, T0_NS + seq * 1000, seq % 10 == 0, 1, seq % 65535 + 1, TOPICS[seq % 50], payload
    )


def record_bytes(payload: bytes) -> int:
    return len(encode(message(0, payload)))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def fresh(base: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix="durable-inbox-", dir=base))


# ---- micro: back-to-back commits ---------------------------------------------------------


@dataclass
class Micro:
    p50: float  # ms
    p99: float
    worst: float
    rate: float  # msg/s


def run_micro(kind: str, group: int, payload: bytes, commits: int, base: Path) -> Micro:
    folder = fresh(base)
    store = STORES[kind](folder, (commits + 3) * group * record_bytes(payload) + MIB)
    try:
        store.recover()
        seq = 0
        for _ in range(3):  # warm-up: file creation, the WAL's first pages
            store.commit([message(s, payload) for s in range(seq, seq + group)])
            seq += group
        latencies = []
        begin = time.perf_counter()
        for _ in range(commits):
            batch = [message(s, payload) for s in range(seq, seq + group)]
            seq += group
            start = time.perf_counter_ns()
            store.commit(batch)
            latencies.append((time.perf_counter_ns() - start) / 1e6)
        elapsed = time.perf_counter() - begin
    finally:
        store.close()
        shutil.rmtree(folder, ignore_errors=True)
    return Micro(
        percentile(latencies, 50),
        percentile(latencies, 99),
        max(latencies),
        commits * group / elapsed,
    )


# ---- loop and window: a producer thread and a group-committing thread ----------------------


@dataclass
class Loop:
    rate: float  # msg/s made durable
    groups: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # ms, arrival to durable
    error: str = ""


def _committer(
    store: Store,
    loop: Loop,
    pending: list[tuple[Message, int]],
    cond: threading.Condition,
    done: list[bool],
    on_durable: Callable[[int], None] | None,
) -> None:
    while True:
        with cond:
            while not pending and not done[0]:
                cond.wait()
            if not pending:
                return
            batch = pending[:]
            pending.clear()
        try:
            store.commit([m for m, _ in batch])
        except Exception as error:  # a full segment: say so in the table, stop the producer
            loop.error = repr(error)
            with cond:
                done[0] = True
            if on_durable is not None:
                on_durable(1 << 20)
            return
        now = time.perf_counter_ns()
        loop.latencies.extend([(now - t) / 1e6 for _, t in batch])
        loop.groups.append(len(batch))
        if on_durable is not None:
            on_durable(len(batch))


def run_loop(
    kind: str, payload: bytes, seconds: float, base: Path, *, rate: int = 0, window: int = 0
) -> Loop:
    """Open loop at `rate` msg/s, or closed loop with at most `window` messages not durable."""
    folder = fresh(base)
    total = int(rate * seconds) if rate else 0
    size = (total or int(100_000 * seconds)) * record_bytes(payload) + MIB
    store = STORES[kind](folder, size)
    store.recover()
    loop = Loop(0.0)
    pending: list[tuple[Message, int]] = []
    cond = threading.Condition()
    done = [False]
    slots = threading.Semaphore(window) if window else None
    thread = threading.Thread(
        target=_committer,
        args=(store, loop, pending, cond, done, slots.release if slots is not None else None),
    )
    thread.start()
    sent = 0
    start = time.perf_counter_ns()
    try:
        if slots is not None:  # the broker sends the next message once one is acknowledged
            deadline = start + int(seconds * 1e9)
            while time.perf_counter_ns() < deadline and not done[0]:
                if not slots.acquire(timeout=0.1):
                    continue
                item = (message(sent, payload), time.perf_counter_ns())
                with cond:
                    pending.append(item)
                    cond.notify()
                sent += 1
        else:
            while sent < total and not done[0]:
                now = time.perf_counter_ns()
                due = min(total, (now - start) * rate // 10**9 + 1)
                if due > sent:
                    items = [(message(s, payload), now) for s in range(sent, due)]
                    with cond:
                        pending.extend(items)
                        cond.notify()
                    sent = due
                else:
                    time.sleep(max(0.0, (start + sent * 1e9 / rate - now) / 1e9))
    finally:
        with cond:
            done[0] = True
            cond.notify()
        thread.join()
        store.close()
        shutil.rmtree(folder, ignore_errors=True)
    loop.rate = sent / ((time.perf_counter_ns() - start) / 1e9)
    return loop


# ---- drain and crash: child processes killed with SIGKILL ---------------------------------


def _fork(child: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            child()
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    return pid


@dataclass
class Drain:
    disk: float  # bytes per message
    reopen: float  # ms: open and read back every record
    delete_half: float  # ms; SQLite only
    delete_all: float  # ms
    checkpoint: float  # ms; SQLite only
    found: int


def _disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def run_drain(kind: str, count: int, payload: bytes, base: Path) -> Drain:
    folder = fresh(base)
    size = count * record_bytes(payload) + MIB
    STORES[kind](folder, size).close()  # a zeroed segment is filled here, not in the child

    def write() -> None:
        store = STORES[kind](folder, size)
        for seq in range(0, count, 128):
            store.commit([message(s, payload) for s in range(seq, min(count, seq + 128))])
        os.kill(os.getpid(), signal.SIGKILL)

    os.waitpid(_fork(write), 0)
    disk = _disk_bytes(folder) / count
    try:
        begin = time.perf_counter()
        store = STORES[kind](folder, size)
        records, _ = store.recover()
        reopened = time.perf_counter()
        half = math.nan
        if isinstance(store, SqliteInbox):
            store.drop_through(count // 2 - 1)
            half = (time.perf_counter() - reopened) * 1e3
        begin_all = time.perf_counter()
        store.drop_through(count - 1)
        deleted = time.perf_counter()
        checkpoint = math.nan
        if isinstance(store, SqliteInbox):
            store.checkpoint()
            checkpoint = (time.perf_counter() - deleted) * 1e3
        store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return Drain(
        disk, (reopened - begin) * 1e3, half, (deleted - begin_all) * 1e3, checkpoint, len(records)
    )


def expected(seq: int) -> Message:
    """The crash check's record `seq`: every byte follows from seq."""
    length = 20 + (seq * 7919) % 580
    payload = (seq.to_bytes(8, "little") * (length // 8 + 1))[:length]
    return Message(
        seq, T0_NS + seq, seq % 7 == 0, 1 + seq % 2, seq % 65535 + 1, TOPICS[seq % 50], payload
    )


@dataclass
class Crash:
    kills: int = 0
    in_recovery: int = 0  # kills that hit a child still recovering (truncating a torn tail)
    mid_write: int = 0  # kills that hit a child committing
    acked: int = 0  # records reported durable by the children
    beyond: list[int] = field(default_factory=list)  # durable but never reported, per kill
    torn_seen: int = 0  # torn tails a kill left by itself
    planted: int = 0  # torn tails written by this check, which the reader skipped
    failures: list[str] = field(default_factory=list)


def _plant_torn_tail(store: Store, path: Path, end: int, rng: random.Random) -> bool:
    """Write a damaged next record after `end`; True if the reader still stops at `end`."""
    nxt = encode(expected(store.next_seq))
    if rng.random() < 0.3:  # whole, with one byte flipped
        at = rng.randrange(len(nxt))
        tail = nxt[:at] + bytes([nxt[at] ^ 0xFF]) + nxt[at + 1 :]
    else:  # cut short, sometimes followed by garbage
        # Cut before its last non-zero byte: a record cut in its trailing zeros and written into
        # zeros is whole again, and rightly read.
        last = max(i for i, byte in enumerate(nxt) if byte)
        tail = nxt[: rng.randrange(1, last + 1)]
        if rng.random() < 0.5:
            tail += rng.randbytes(rng.randrange(1, 64))
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, tail, end)
    finally:
        os.close(fd)
    with open(path, "rb") as file:
        return scan(file.read())[1] == end


_RECOVERED = struct.pack("<q", -2)  # the child's first report: recovery is done


def _read_until(fd: int, chunks: list[bytes], deadline: float, stop: bytes = b"") -> None:
    """Read a child's reports until `deadline`, its end, or once `stop` was read."""
    while (left := deadline - time.monotonic()) > 0:
        if stop and b"".join(chunks).startswith(stop):
            return
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            chunks.append(chunk)


def run_crash(kind: str, rounds: int, cap: int, base: Path, rng: random.Random) -> Crash:
    folder = fresh(base)
    size = rounds * cap * 700 + MIB
    STORES[kind](folder, size).close()
    crash = Crash()
    acked = -1

    def child(report: int, seed: int) -> None:
        store = STORES[kind](folder, size)
        store.recover()
        os.write(report, _RECOVERED)
        child_rng = random.Random(seed)
        seq, stop = store.next_seq, store.next_seq + cap
        while seq < stop:
            n = min(child_rng.randint(1, 32), stop - seq)
            store.commit([expected(s) for s in range(seq, seq + n)])
            seq += n
            os.write(report, struct.pack("<q", seq - 1))
        time.sleep(60)  # wait for the kill

    try:
        for index in range(rounds):
            read_end, write_end = os.pipe()
            pid = _fork(functools.partial(child, write_end, index))
            os.close(write_end)
            chunks: list[bytes] = []
            if rng.random() < 0.25:  # a kill while the child recovers (truncates a torn tail)
                _read_until(read_end, chunks, time.monotonic() + rng.uniform(0.0, 0.05))
            else:  # a kill while it commits: a random moment after its recovery
                _read_until(read_end, chunks, time.monotonic() + 30, stop=_RECOVERED)
                _read_until(read_end, chunks, time.monotonic() + rng.uniform(0.005, 0.15))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            while chunk := os.read(read_end, 65536):
                chunks.append(chunk)
            os.close(read_end)
            reports = b"".join(chunks)
            recovered = reports.startswith(_RECOVERED)
            before = acked
            if len(reports) >= 16:
                acked = struct.unpack_from("<q", reports, len(reports) // 8 * 8 - 8)[0]
            crash.kills += 1
            crash.in_recovery += not recovered
            crash.mid_write += recovered and acked - before < cap
            store = STORES[kind](folder, size)
            path = getattr(store, "path", folder)
            if not isinstance(store, SqliteInbox):
                with open(path, "rb") as file:
                    data = file.read()
                end = scan(data)[1]
                crash.torn_seen += recovered and bool(data[end : end + 65536].strip(b"\0"))
            records, _ = store.recover()
            problem = _check(records, acked)
            if isinstance(store, SqliteInbox) and store.integrity() != "ok":
                problem = f"quick_check: {store.integrity()}"
            if problem:
                crash.failures.append(f"kill {index + 1}: {problem}")
            crash.acked = acked + 1
            crash.beyond.append(len(records) - 1 - acked)
            if not isinstance(store, SqliteInbox):
                end = sum(len(encode(r)) for r in records)
                if _plant_torn_tail(store, path, end, rng):
                    crash.planted += 1
                else:
                    crash.failures.append(f"kill {index + 1}: a planted torn record was read")
            store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return crash


def _check(records: list[Message], acked: int) -> str | None:
    for position, record in enumerate(records):
        if record != expected(position):
            return f"record {position} is not what was written (seq {record.seq})"
    if len(records) <= acked:
        return f"{acked + 1} records reported durable, {len(records)} found"
    return None


# ---- report ------------------------------------------------------------------------------


def _spread(values: Sequence[float], digits: int = 2) -> str:
    mid = statistics.median(values)
    if len(values) == 1:
        return f"{mid:,.{digits}f}"
    return f"{mid:,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def section_micro(kinds: Sequence[str], repeat: int, commits: int, base: Path) -> None:
    print(f"\n### micro: back-to-back commits, {commits} per case, median (min-max) of {repeat}\n")
    print("| store | payload B | group | p50 ms | p99 ms | max ms | msg/s |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    results: dict[tuple[str, int, int], list[Micro]] = {}
    for index in range(repeat):
        order = list(kinds) if index % 2 == 0 else list(reversed(kinds))
        for size in PAYLOADS:
            for group in GROUPS:
                for kind in order:
                    run = run_micro(kind, group, payload_of(size), commits, base)
                    results.setdefault((kind, size, group), []).append(run)
    for (kind, size, group), runs in results.items():
        print(
            f"| {kind} | {size:,} | {group} | {_spread([r.p50 for r in runs])} | "
            f"{_spread([r.p99 for r in runs])} | {max(r.worst for r in runs):.1f} | "
            f"{_spread([r.rate for r in runs], 0)} |"
        )


def section_loop(kinds: Sequence[str], seconds: float, base: Path) -> None:
    payload = payload_of(100)
    print(f"\n### loop: producer at a fixed rate, group commit, {seconds:g} s each, ~100 B\n")
    print(
        "| store | offered msg/s | groups p50 / p99 / max | arrival->durable p50 / p99 / max ms"
        " | 20 / p50 msg/s |"
    )
    print("|---|--:|--:|--:|--:|")
    for rate in RATES:
        for kind in kinds:
            loop = run_loop(kind, payload, seconds, base, rate=rate)
            lat = loop.latencies
            if loop.error:
                print(f"| {kind} | {rate:,} | {loop.error} after {len(lat):,} messages | | |")
                continue
            print(
                f"| {kind} | {rate:,} ({loop.rate:,.0f}) | {percentile(loop.groups, 50):.0f} / "
                f"{percentile(loop.groups, 99):.0f} / {max(loop.groups)} | "
                f"{percentile(lat, 50):.2f} / {percentile(lat, 99):.2f} / {max(lat):.1f} | "
                f"{20 / percentile(lat, 50) * 1e3:,.0f} |"
            )


def section_window(kinds: Sequence[str], seconds: float, repeat: int, base: Path) -> None:
    payload = payload_of(100)
    print(
        f"\n### window: at most N messages not yet durable (QoS 1 in flight), {seconds:g} s, "
        f"~100 B, median (min-max) of {repeat}\n"
    )
    print("| store | in flight | msg/s | groups p50 / max | arrival->durable p50 ms | p99 ms |")
    print("|---|--:|--:|--:|--:|--:|")
    results: dict[tuple[str, int], list[Loop]] = {}
    for index in range(repeat):
        order = list(kinds) if index % 2 == 0 else list(reversed(kinds))
        for window in WINDOWS:
            for kind in order:
                results.setdefault((kind, window), []).append(
                    run_loop(kind, payload, seconds, base, window=window)
                )
    for (kind, window), loops in results.items():
        errors = [loop.error for loop in loops if loop.error]
        if errors:
            print(f"| {kind} | {window} | {errors[0]} | | | |")
            continue
        print(
            f"| {kind} | {window} | {_spread([loop.rate for loop in loops], 0)} | "
            f"{statistics.median(percentile(loop.groups, 50) for loop in loops):.0f} / "
            f"{max(max(loop.groups) for loop in loops)} | "
            f"{_spread([percentile(loop.latencies, 50) for loop in loops])} | "
            f"{_spread([percentile(loop.latencies, 99) for loop in loops])} |"
        )


def section_drain(kinds: Sequence[str], count: int, base: Path) -> None:
    print(f"\n### drain: {count:,} messages written by a child, SIGKILLed, then reopened\n")
    print(
        "| store | payload B | on disk B/msg | reopen + read back ms (us/msg) | delete half ms |"
        " delete all ms | checkpoint ms |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|")

    def ms(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:,.1f}"

    for size in PAYLOADS:
        for kind in kinds:
            run = run_drain(kind, count, payload_of(size), base)
            note = "" if run.found == count else f" (found {run.found:,}!)"
            print(
                f"| {kind} | {size:,} | {run.disk:,.0f} | {run.reopen:,.1f} "
                f"({run.reopen * 1e3 / count:.2f}){note} | {ms(run.delete_half)} | "
                f"{ms(run.delete_all)} | {ms(run.checkpoint)} |"
            )


def section_crash(kinds: Sequence[str], rounds: int, cap: int, base: Path) -> None:
    print(
        f"\n### crash: {rounds} SIGKILLs at random moments per store (<= {cap:,} records a life)\n"
    )
    print(
        "| store | kills (in recovery / mid-write) | records acked | durable beyond acked, max |"
        " torn tails left by a kill | planted torn tails skipped | failures |"
    )
    print("|---|--:|--:|--:|--:|--:|---|")
    rng = random.Random(16)
    for kind in kinds:
        crash = run_crash(kind, rounds, cap, base, rng)
        torn = "-" if kind.startswith("sqlite") else str(crash.torn_seen)
        planted = "-" if kind.startswith("sqlite") else f"{crash.planted}/{crash.kills}"
        print(
            f"| {kind} | {crash.kills} ({crash.in_recovery} / {crash.mid_write}) | "
            f"{crash.acked:,} | "
            f"{max(crash.beyond)} | {torn} | {planted} | {'; '.join(crash.failures) or 'none'} |"
        )


def _filesystem(path: Path) -> str:
    best = ("", "?")
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, point, kind, *_ = line.split()
            if str(path.resolve()).startswith(point) and len(point) > len(best[0]):
                best = (point, kind)
    return f"{best[1]} on {best[0]}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="~1.5 min: fewer commits, shorter loops"
    )
    parser.add_argument(
        "--repeat", type=int, help="repeats of the micro cases (default 3, quick 1)"
    )
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--only", default="micro,loop,window,drain,crash")
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--kills", type=int, help="SIGKILLs per store (default 20, quick 5)")
    args = parser.parse_args(argv)
    quick = args.quick
    repeat = args.repeat or (1 if quick else 3)
    kinds = args.stores.split(",")
    only = set(args.only.split(","))
    base = Path(tempfile.mkdtemp(prefix="durable-inbox-bench-", dir=args.dir))
    print(
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"Linux {platform.release()}, {_filesystem(base)} ({base}), "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    begin = time.monotonic()
    try:
        if "micro" in only:
            section_micro(kinds, repeat, 100 if quick else 400, base)
        if "loop" in only:
            section_loop(kinds, 2.0 if quick else 6.0, base)
        if "window" in only:
            section_window(kinds, 1.0 if quick else 3.0, repeat, base)
        if "drain" in only:
            section_drain(kinds, 20_000 if quick else 100_000, base)
        if "crash" in only:
            section_crash(kinds, args.kills or (5 if quick else 20), 6_000, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if SEGMENT_PREP:
        size = sum(s for s, _ in SEGMENT_PREP)
        seconds = sum(t for _, t in SEGMENT_PREP)
        print(
            f"\nzeroed segments: {size / MIB:,.0f} MiB filled at {size / MIB / seconds:,.0f} MiB/s"
        )
    print(f"\n{time.monotonic() - begin:.0f} s; load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
