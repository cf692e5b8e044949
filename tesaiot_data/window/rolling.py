"""The rolling window: a bounded, columnar deque of telemetry chunks, with `frame(since, ...)`.

Rows arrive as parsed batches, are dictionary-coded into `Chunk`s (`window.chunk`) and leave
by age or count. Users get pandas frames (`frame()`), the sinks Arrow record batches
(`batches_of()`, `batches()`), both through the chunks' exits.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from tesaiot_data.messages import ColumnBatch
from tesaiot_data.schema import CATEGORY_COLUMNS
from tesaiot_data.window.chunk import Chunk, to_batches, to_frame

__all__ = ["RollingWindow", "WindowRead"]


class WindowRead(NamedTuple):
    """What `RollingWindow.read()` returns: rows and the watermark of one state."""

    frame: pd.DataFrame
    """The selected rows, a canonical frame the caller owns."""
    oldest_received_ns: int | None
    """The oldest `received_at` the window held (all rows, before filters), or None."""


# Batches are merged into chunks of about this many rows, so that a slow stream (one row
# a batch) does not pay numpy's per-array overhead for every row.
_SEAL_ROWS = 65_536
_SEAL_CHUNKS = 256
# With copy-on-write (always on from pandas 3) a shallow copy of a cached frame is safe to
# hand out: the caller's edits copy first. Without it, hand out deep copies.
_COPY_ON_WRITE = int(pd.__version__.split(".")[0]) >= 3 or bool(pd.options.mode.copy_on_write)
# The dictionaries are rebuilt from the rows held once they hold this many strings (or text
# bytes) more than twice what was live at the last rebuild: memory follows the rows held,
# and the rebuild's O(rows held) cost is spread over at least this many new strings.
_COMPACT_MIN_ENTRIES = 4096
_COMPACT_MIN_BYTES = 32 * 1024 * 1024


class _Dictionary:
    """A string <-> code mapping shared by the chunks of one column made in one generation.

    Codes only grow within a generation; `RollingWindow` starts a new, compacted generation
    when most strings belong to rows that are gone, so memory follows the rows held.
    """

    __slots__ = ("codes", "text_bytes", "values")

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values: list[str] = list(values)
        self.codes: dict[str | None, int] = {None: -1}
        self.codes.update((value, code) for code, value in enumerate(self.values))
        self.text_bytes = sum(len(value) for value in self.values)

    def encode(self, items: list[str | None]) -> np.ndarray:
        get = self.codes.get
        found = [get(item, -2) for item in items]
        if -2 in found:  # new strings: rare after warm-up
            for i, known in enumerate(found):
                if known == -2:
                    found[i] = self._add(items[i])
        return np.array(found, dtype=np.int32)

    def _add(self, item: str | None) -> int:
        code = self.codes.get(item)
        if code is None:  # not added earlier in this same batch
            code = self.codes[item] = len(self.values)
            self.values.append(item)  # type: ignore[arg-type]  # None is always known
            self.text_bytes += len(item)  # type: ignore[arg-type]
        return code

    def lookup(self, names: Iterable[str]) -> np.ndarray:
        return np.array([self.codes[n] for n in names if n in self.codes], dtype=np.int32)


def _code_dtypes(dictionaries: Mapping[str, _Dictionary]) -> dict[str, type]:
    # Per column: 100,000 device ids need int32 codes, but their 4 metrics still fit int8.
    return {name: _smallest_int(len(d.values)) for name, d in dictionaries.items()}


def _smallest_int(values: int) -> type[np.signedinteger]:
    if values < 127:
        return np.int8
    if values < 32_767:
        return np.int16
    return np.int32


class RollingWindow:
    """Telemetry rows kept in arrival order, bounded by age (receive time) and count.

    Appends come from one ingest thread; `frame()` may be called from any thread and
    returns a frame the caller owns.

    Args:
        window_ns: Keep rows received at most this many nanoseconds ago; None keeps any age.
        max_rows: Keep at most this many rows (the oldest go first).
    """

    def __init__(self, *, window_ns: int | None, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.window_ns = window_ns
        self.max_rows = max_rows
        self._dictionaries = {name: _Dictionary() for name in CATEGORY_COLUMNS}
        self._generation = {name: d.values for name, d in self._dictionaries.items()}
        self._entries_limit = _COMPACT_MIN_ENTRIES
        self._bytes_limit = _COMPACT_MIN_BYTES
        self._compactions = 0
        self._sealed: deque[Chunk] = deque()
        self._tail: list[Chunk] = []
        self._tail_rows = 0
        self._rows = 0
        self._appended = 0
        self._evicted = 0
        self._version = 0
        self._lock = threading.Lock()
        self._cache: tuple[object, pd.DataFrame, int | None] | None = None

    # ------------------------------------------------------------------ writes

    def append(self, batch: ColumnBatch, *, now_ns: int | None = None) -> Chunk | None:
        """Add a parsed batch's rows and evict what fell out of the window.

        Args:
            batch: Rows from `parse_batch`.
            now_ns: The current time for the age limit; default the newest receive time.

        Returns:
            The rows as stored (see `batches_of()`), or None when there were none.
        """
        if not len(batch):
            return None
        chunk = Chunk(
            np.array(batch.timestamp_ns, dtype=np.int64),
            np.array(batch.received_ns, dtype=np.int64),
            np.array(batch.value, dtype=np.float64),
            {
                name: self._dictionaries[name].encode(getattr(batch, name))
                for name in CATEGORY_COLUMNS
            },
            self._generation,
        )
        with self._lock:
            self._tail.append(chunk)
            self._tail_rows += len(chunk)
            self._rows += len(chunk)
            self._appended += len(chunk)
            if self._tail_rows >= _SEAL_ROWS or len(self._tail) >= _SEAL_CHUNKS:
                self._seal()
            self._evict(int(chunk.received[-1]) if now_ns is None else now_ns)
            self._compact_if_due()
            self._version += 1
        return chunk

    @staticmethod
    def batches_of(chunks: Sequence[Chunk]) -> list[pa.RecordBatch]:
        """Return the rows of chunks from `append()` as Arrow record batches, in order.

        The same as `window.chunk.to_batches` (which sinks import without the window).

        Args:
            chunks: Chunks returned by `append()`, in arrival order.

        Returns:
            One batch per generation run, each in `schema.ARROW_SCHEMA`; empty when
            `chunks` is.
        """
        return to_batches(chunks)

    def batches(self) -> list[pa.RecordBatch]:
        """Return the rows held now as Arrow record batches (see `batches_of()`).

        Returns:
            The held rows in arrival order: one batch, or none when the window is empty.
        """
        with self._lock:
            chunks = [*self._sealed, *self._tail]
        return self.batches_of(chunks)

    def evict(self, now_ns: int) -> int:
        """Drop rows older than the window at time `now_ns`; return how many went."""
        with self._lock:
            before = self._evicted
            self._evict(now_ns)
            if self._evicted != before:
                self._version += 1
            return self._evicted - before

    def _compact_if_due(self) -> None:
        entries = text = 0
        for dictionary in self._dictionaries.values():
            entries += len(dictionary.values)
            text += dictionary.text_bytes
        if entries > self._entries_limit or text > self._bytes_limit:
            self._compact()

    def _compact(self) -> None:
        """Start a new dictionary generation holding only the strings of the rows held.

        Held chunks are re-coded (O(rows held), at most once per `_COMPACT_MIN_ENTRIES` new
        strings or as many as were live); chunks handed out earlier keep their generation.
        """
        held = [*self._sealed, *self._tail]
        dictionaries: dict[str, _Dictionary] = {}
        remaps: dict[str, np.ndarray] = {}
        for name, old in self._dictionaries.items():
            used = np.zeros(len(old.values), dtype=bool)
            for chunk in held:
                codes = chunk.codes[name]
                used[codes[codes >= 0]] = True
            kept = np.flatnonzero(used)
            # One slot more than codes: index -1 (a missing string) maps to -1.
            remap = np.full(len(old.values) + 1, -1, dtype=np.int32)
            remap[kept] = np.arange(len(kept), dtype=np.int32)
            remaps[name] = remap
            dictionaries[name] = _Dictionary(old.values[i] for i in kept.tolist())
        generation = {name: d.values for name, d in dictionaries.items()}
        sealed_dtypes = _code_dtypes(dictionaries)
        tail_dtypes = dict.fromkeys(dictionaries, np.int32)

        def recode(chunk: Chunk, dtypes: Mapping[str, type]) -> Chunk:
            codes = {
                name: remaps[name][c].astype(dtypes[name], copy=False)
                for name, c in chunk.codes.items()
            }
            return Chunk(chunk.timestamp, chunk.received, chunk.value, codes, generation)

        self._sealed = deque(recode(c, sealed_dtypes) for c in self._sealed)
        self._tail = [recode(c, tail_dtypes) for c in self._tail]
        self._dictionaries = dictionaries
        self._generation = generation
        live_entries = sum(len(d.values) for d in dictionaries.values())
        live_bytes = sum(d.text_bytes for d in dictionaries.values())
        self._entries_limit = 2 * live_entries + _COMPACT_MIN_ENTRIES
        self._bytes_limit = 2 * live_bytes + _COMPACT_MIN_BYTES
        self._compactions += 1

    def _seal(self) -> None:
        code_dtypes = _code_dtypes(self._dictionaries)
        self._sealed.append(Chunk.concat(self._tail, code_dtypes=code_dtypes))
        self._tail = []
        self._tail_rows = 0

    def _evict(self, now_ns: int) -> None:
        excess = self._rows - self.max_rows
        if excess > 0:
            self._drop_head(excess)
        if self.window_ns is not None:
            cutoff = now_ns - self.window_ns
            while self._rows:
                head = self._head()
                if head.received[-1] < cutoff:
                    self._drop_head(len(head))
                    continue
                stale = int(np.searchsorted(head.received, cutoff, side="left"))
                if stale:
                    self._drop_head(stale)
                break

    def _head(self) -> Chunk:
        return self._sealed[0] if self._sealed else self._tail[0]

    def _drop_head(self, count: int) -> None:
        """Drop the `count` oldest rows, whole chunks first, then the front of one."""
        while count > 0 and self._rows:
            in_sealed = bool(self._sealed)
            head = self._sealed[0] if in_sealed else self._tail[0]
            n = min(count, len(head))
            if n == len(head):
                if in_sealed:
                    self._sealed.popleft()
                else:
                    self._tail.pop(0)
                    self._tail_rows -= n
            else:
                rest = head.take(slice(n, None))
                if in_sealed:
                    self._sealed[0] = rest
                else:
                    self._tail[0] = rest
                    self._tail_rows -= n
            self._rows -= n
            self._evicted += n
            count -= n

    # ------------------------------------------------------------------- reads

    @property
    def rows(self) -> int:
        """Rows held now."""
        return self._rows

    @property
    def appended(self) -> int:
        """Rows appended since the start."""
        return self._appended

    @property
    def evicted(self) -> int:
        """Rows dropped by the age or count limit since the start."""
        return self._evicted

    @property
    def version(self) -> int:
        """A number that changes whenever the held rows change."""
        return self._version

    def nbytes(self) -> int:
        """Bytes held by the rows' arrays (not counting the string dictionaries)."""
        with self._lock:
            return sum(c.nbytes() for c in (*self._sealed, *self._tail))

    @property
    def dictionary_entries(self) -> dict[str, int]:
        """Distinct strings kept now per string column (at most about twice those in use)."""
        return {name: len(d.values) for name, d in self._dictionaries.items()}

    @property
    def compactions(self) -> int:
        """How many times the string dictionaries were rebuilt to drop evicted strings."""
        return self._compactions

    def frame(
        self,
        *,
        since_ns: int | None = None,
        until_ns: int | None = None,
        devices: Iterable[str] | None = None,
        metrics: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Return the held rows (filtered) as a new canonical frame.

        Args:
            since_ns: Keep rows received at or after this epoch time in ns.
            until_ns: Keep rows received before this epoch time in ns.
            devices: Keep these device ids only.
            metrics: Keep these metrics only.

        Returns:
            A frame the caller owns, rows in arrival order.
        """
        return self.read(
            since_ns=since_ns, until_ns=until_ns, devices=devices, metrics=metrics
        ).frame

    def read(
        self,
        *,
        since_ns: int | None = None,
        until_ns: int | None = None,
        devices: Iterable[str] | None = None,
        metrics: Iterable[str] | None = None,
    ) -> WindowRead:
        """Return the held rows (filtered) and the window's oldest receive time, of one state.

        `history()` joins the window to files at the oldest receive time the window holds
        (its watermark): that time and the rows must come from the same moment, or rows
        evicted in between would be in neither source.

        Args:
            since_ns: Keep rows received at or after this epoch time in ns.
            until_ns: Keep rows received before this epoch time in ns.
            devices: Keep these device ids only.
            metrics: Keep these metrics only.

        Returns:
            A `WindowRead`: the frame (the caller's own, rows in arrival order) and the
            oldest `received_at` of every row held, in epoch ns (None when empty), before
            the filters.
        """
        device_set = None if devices is None else tuple(sorted(set(devices)))
        metric_set = None if metrics is None else tuple(sorted(set(metrics)))
        key = (self._version, since_ns, until_ns, device_set, metric_set)
        cached = self._cache
        if cached is not None and cached[0] == key:
            return WindowRead(cached[1].copy(deep=not _COPY_ON_WRITE), cached[2])
        with self._lock:
            key = (self._version, since_ns, until_ns, device_set, metric_set)
            chunks = [*self._sealed, *self._tail]
            dictionaries = self._dictionaries
        # Each chunk's receive times are sorted (frame(since_ns=) relies on it too).
        oldest = min((int(c.received[0]) for c in chunks if len(c)), default=None)
        # Every held chunk is of the current generation; its lists only grow, so what they
        # hold now covers every code in `chunks`.
        wanted = {}
        if device_set is not None:
            wanted["device_id"] = dictionaries["device_id"].lookup(device_set)
        if metric_set is not None:
            wanted["metric"] = dictionaries["metric"].lookup(metric_set)
        if since_ns is not None or until_ns is not None or wanted:
            chunks = [
                c for c in (self._select(c, since_ns, until_ns, wanted) for c in chunks) if len(c)
            ]
        if len(chunks) == 1:  # to_frame would share the window's arrays
            chunks = [chunks[0], chunks[0].take(slice(0, 0))]
        frame = to_frame(chunks)
        self._cache = (key, frame, oldest)
        return WindowRead(frame.copy(deep=not _COPY_ON_WRITE), oldest)

    @staticmethod
    def _select(
        chunk: Chunk, since_ns: int | None, until_ns: int | None, wanted: dict[str, np.ndarray]
    ) -> Chunk:
        if since_ns is not None or until_ns is not None:
            start = 0 if since_ns is None else int(np.searchsorted(chunk.received, since_ns))
            end = len(chunk) if until_ns is None else int(np.searchsorted(chunk.received, until_ns))
            if start >= end:
                return chunk.take(slice(0, 0))
            if start > 0 or end < len(chunk):
                chunk = chunk.take(slice(start, end))
        if wanted:
            mask = np.ones(len(chunk), dtype=bool)
            for name, codes in wanted.items():
                mask &= np.isin(chunk.codes[name], codes)
            chunk = chunk.take(mask)
        return chunk
