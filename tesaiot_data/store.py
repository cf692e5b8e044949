"""A bounded, rolling, columnar store of telemetry rows that hands out pandas frames."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tesaiot_data.parsing import ColumnBatch
from tesaiot_data.schema import CATEGORY_COLUMNS, empty_frame

__all__ = ["Chunk", "RollingStore"]

_UTC = pd.DatetimeTZDtype(unit="ns", tz="UTC")
# Batches are merged into chunks of about this many rows, so that a slow stream (one row
# a batch) does not pay numpy's per-array overhead for every row.
_SEAL_ROWS = 65_536
_SEAL_CHUNKS = 256
# With copy-on-write (always on from pandas 3) a shallow copy of a cached frame is safe to
# hand out: the caller's edits copy first. Without it, hand out deep copies.
_COPY_ON_WRITE = int(pd.__version__.split(".")[0]) >= 3 or bool(pd.options.mode.copy_on_write)


class _Dictionary:
    """An append-only string <-> code mapping shared by every chunk of one column."""

    __slots__ = ("codes", "values")

    def __init__(self) -> None:
        self.codes: dict[str | None, int] = {None: -1}
        self.values: list[str] = []

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
        return code

    def lookup(self, names: Iterable[str]) -> np.ndarray:
        return np.array([self.codes[n] for n in names if n in self.codes], dtype=np.int32)


def _smallest_int(values: int) -> type[np.signedinteger]:
    if values < 127:
        return np.int8
    if values < 32_767:
        return np.int16
    return np.int32


@dataclass(slots=True)
class Chunk:
    """Rows in arrival order: int64 ns times, float64 values, integer dictionary codes.

    Chunks are never changed once made, so they can be shared with other threads.
    """

    timestamp: np.ndarray
    received: np.ndarray
    value: np.ndarray
    codes: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.received)

    def take(self, selector: slice | np.ndarray) -> Chunk:
        """Return the rows picked by a slice (views) or a boolean mask (copies)."""
        return Chunk(
            self.timestamp[selector],
            self.received[selector],
            self.value[selector],
            {name: codes[selector] for name, codes in self.codes.items()},
        )

    @classmethod
    def concat(cls, chunks: Sequence[Chunk], *, code_dtype: type | None = None) -> Chunk:
        """Return the rows of several chunks as one (the chunk itself when alone)."""
        if len(chunks) == 1 and code_dtype is None:
            return chunks[0]
        return cls(
            np.concatenate([c.timestamp for c in chunks]),
            np.concatenate([c.received for c in chunks]),
            np.concatenate([c.value for c in chunks]),
            {
                name: np.concatenate([c.codes[name] for c in chunks]).astype(
                    code_dtype or np.int32, copy=False
                )
                for name in CATEGORY_COLUMNS
            },
        )

    def nbytes(self) -> int:
        """Return the bytes held by the chunk's arrays."""
        arrays = [self.timestamp, self.received, self.value, *self.codes.values()]
        return sum(a.nbytes for a in arrays)


class RollingStore:
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
        self._sealed: deque[Chunk] = deque()
        self._tail: list[Chunk] = []
        self._tail_rows = 0
        self._rows = 0
        self._appended = 0
        self._evicted = 0
        self._version = 0
        self._lock = threading.Lock()
        self._cache: tuple[object, pd.DataFrame] | None = None

    # ------------------------------------------------------------------ writes

    def append(self, batch: ColumnBatch, *, now_ns: int | None = None) -> Chunk | None:
        """Add a parsed batch's rows and evict what fell out of the window.

        Args:
            batch: Rows from `parse_batch`.
            now_ns: The current time for the age limit; default the newest receive time.

        Returns:
            The rows as stored (see `frame_of()`), or None when there were none.
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
        )
        with self._lock:
            self._tail.append(chunk)
            self._tail_rows += len(chunk)
            self._rows += len(chunk)
            self._appended += len(chunk)
            if self._tail_rows >= _SEAL_ROWS or len(self._tail) >= _SEAL_CHUNKS:
                self._seal()
            self._evict(int(chunk.received[-1]) if now_ns is None else now_ns)
            self._version += 1
        return chunk

    def frame_of(self, chunks: Sequence[Chunk]) -> pd.DataFrame:
        """Return the rows of chunks from `append()` as one canonical frame.

        For read-only consumers (recorders, snapshot writers): a single chunk's frame shares
        its arrays. Evicted chunks work too: the string dictionaries only grow.
        """
        return self._build(chunks, self._categories())

    def evict(self, now_ns: int) -> int:
        """Drop rows older than the window at time `now_ns`; return how many went."""
        with self._lock:
            before = self._evicted
            self._evict(now_ns)
            if self._evicted != before:
                self._version += 1
            return self._evicted - before

    def _seal(self) -> None:
        code_dtype = _smallest_int(max(len(d.values) for d in self._dictionaries.values()))
        self._sealed.append(Chunk.concat(self._tail, code_dtype=code_dtype))
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

    def frame(
        self,
        *,
        since_ns: int | None = None,
        devices: Iterable[str] | None = None,
        metrics: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Return the held rows (filtered) as a new canonical frame.

        Args:
            since_ns: Keep rows received at or after this epoch time in ns.
            devices: Keep these device ids only.
            metrics: Keep these metrics only.

        Returns:
            A frame the caller owns, rows in arrival order.
        """
        device_set = None if devices is None else tuple(sorted(set(devices)))
        metric_set = None if metrics is None else tuple(sorted(set(metrics)))
        key = (self._version, since_ns, device_set, metric_set)
        cached = self._cache
        if cached is not None and cached[0] == key:
            return cached[1].copy(deep=not _COPY_ON_WRITE)
        with self._lock:
            key = (self._version, since_ns, device_set, metric_set)
            chunks = [*self._sealed, *self._tail]
        categories = self._categories()
        wanted = {}
        if device_set is not None:
            wanted["device_id"] = self._dictionaries["device_id"].lookup(device_set)
        if metric_set is not None:
            wanted["metric"] = self._dictionaries["metric"].lookup(metric_set)
        if since_ns is not None or wanted:
            chunks = [c for c in (self._select(c, since_ns, wanted) for c in chunks) if len(c)]
        if len(chunks) == 1:  # _build would share the store's arrays
            chunks = [chunks[0], chunks[0].take(slice(0, 0))]
        frame = self._build(chunks, categories)
        self._cache = (key, frame)
        return frame.copy(deep=not _COPY_ON_WRITE)

    @staticmethod
    def _select(chunk: Chunk, since_ns: int | None, wanted: dict[str, np.ndarray]) -> Chunk:
        if since_ns is not None:
            if chunk.received[-1] < since_ns:
                return chunk.take(slice(0, 0))
            chunk = chunk.take(slice(int(np.searchsorted(chunk.received, since_ns)), None))
        if wanted:
            mask = np.ones(len(chunk), dtype=bool)
            for name, codes in wanted.items():
                mask &= np.isin(chunk.codes[name], codes)
            chunk = chunk.take(mask)
        return chunk

    def _categories(self) -> dict[str, pd.Index]:
        # The dictionaries only grow, so codes written before this moment stay valid.
        return {
            name: pd.Index(list(d.values), dtype=object) for name, d in self._dictionaries.items()
        }

    @staticmethod
    def _build(chunks: Sequence[Chunk], categories: dict[str, pd.Index]) -> pd.DataFrame:
        if not chunks:
            return empty_frame()
        merged = Chunk.concat(chunks)
        data: dict[str, object] = {
            "timestamp": pd.DatetimeIndex(merged.timestamp.view("M8[ns]")).tz_localize("UTC"),
            "received_at": pd.DatetimeIndex(merged.received.view("M8[ns]")).tz_localize("UTC"),
        }
        for name in ("device_id", "sensor_type", "metric"):
            data[name] = pd.Categorical.from_codes(
                merged.codes[name], categories=categories[name], validate=False
            )
        data["value"] = merged.value
        for name in ("unit", "value_text"):
            data[name] = pd.Categorical.from_codes(
                merged.codes[name], categories=categories[name], validate=False
            )
        return pd.DataFrame(data, copy=False)
