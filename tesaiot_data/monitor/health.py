"""Per-device health: when each device was last seen, how often it sends, and how well.

`DeviceHealth` is fed every batch on the collector's worker thread (`observe`) and read from
any thread (`frame`, `last_seen`). Its memory is bounded by the number of devices, not by
the rows: each device has a fixed-size ring of its recent arrival times and clock offsets,
and a minute of message counts in `RATE_BUCKET_S`-second buckets, all in shared numpy arrays
(about 1 KB a device with its bookkeeping). Devices not seen for `forget_after` seconds,
or the least recently seen beyond `max_devices`, are forgotten and counted in `evicted`.

A device's usual interval is the time between its *updates*, not between its messages: a
device that publishes one topic per sensor (ESPHome, Tasmota, Home Assistant) sends a burst
of messages a fraction of a millisecond apart, and the gap inside a burst says nothing about
when the next update is due. A message that arrives less than `BURST_GAP_S` after the
device's previous message belongs to the same update; the next one starts an update, and
the usual interval is the median gap between the starts of the last `ARRIVALS_KEPT`
updates (NaN until the second update). A device whose messages never leave that gap for a
second (a steady stream faster than 20 a second) is judged by the median gap between its
messages instead.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from tesaiot_data.messages import Reject, RejectReason
from tesaiot_data.monitor.events import DEVICE_ALIAS
from tesaiot_data.window.chunk import Chunk

__all__ = [
    "ARRIVALS_KEPT",
    "BURST_GAP_S",
    "FORGET_AFTER_S",
    "HEALTH_COLUMNS",
    "MAX_DEVICES",
    "RATE_WINDOW_S",
    "SILENT_FACTOR",
    "SILENT_FLOOR_S",
    "DeviceHealth",
    "device_of_topic",
]

ARRIVALS_KEPT = 32
"""Recent messages (and updates) per device behind `usual_interval_s` and `clock_skew_s`."""
BURST_GAP_S = 0.05
"""Messages of one device closer than this (seconds) are one update (a burst)."""
RATE_BUCKET_S = 5
RATE_WINDOW_S = 60
"""Seconds behind `msgs_per_s` (in `RATE_BUCKET_S`-second buckets)."""
SILENT_FACTOR = 5.0
"""A device is silent after this many of its usual intervals without a message..."""
SILENT_FLOOR_S = 5.0
"""... and never sooner than this many seconds."""
SILENT_UNKNOWN_S = 60.0
"""Silence threshold for a device seen once (no usual interval yet)."""
FORGET_AFTER_S = 86_400.0
"""Devices not seen for this long are forgotten (counted in `DeviceHealth.evicted`)."""
MAX_DEVICES = 10_000
"""Most devices tracked; beyond it the least recently seen is forgotten."""
MAX_METRICS_PER_DEVICE = 256

HEALTH_COLUMNS = (
    "device_id",
    "last_seen",
    "age_s",
    "msgs_per_s",
    "usual_interval_s",
    "silent",
    "clock_skew_s",
    "messages",
    "rejected",
    "reject_share",
    "metrics",
    DEVICE_ALIAS,
)
"""The columns of `DeviceHealth.frame` and `Collector.health()`, in order; the last, `device`,
is the 0.1 name of `device_id` (a copy of it, deprecated)."""

_BUCKETS = RATE_WINDOW_S // RATE_BUCKET_S
_BUCKET_NS = RATE_BUCKET_S * 1_000_000_000
_BURST_NS = round(BURST_GAP_S * 1e9)
_STEADY_NS = 1_000_000_000
_NS = 1e9
_SKEW_MAX = 9e18  # ns; a clock centuries off still fits int64
_NO_SKEW = np.iinfo(np.int64).min  # in the skew ring: a message without a device time
_METRICS_ALWAYS_ROWS = 512
_METRICS_EVERY_S = 1.0


def device_of_topic(topic: str) -> str | None:
    """Return `<id>` of a `device/<id>/...` topic, or None for any other topic."""
    parts = topic.split("/", 2)
    if len(parts) >= 2 and parts[0] == "device" and parts[1]:
        return parts[1]
    return None


class DeviceHealth:
    """Per-device arrival statistics, bounded by the number of devices.

    Args:
        max_devices: Most devices tracked at once.
        forget_after: Seconds without a message after which a device is forgotten.
    """

    def __init__(
        self, *, max_devices: int = MAX_DEVICES, forget_after: float = FORGET_AFTER_S
    ) -> None:
        if max_devices < 1:
            raise ValueError("max_devices must be at least 1")
        self.max_devices = max_devices
        self.forget_after_ns = int(forget_after * _NS)
        self.evicted = 0
        self._lock = threading.Lock()
        self._slots: OrderedDict[str, int] = OrderedDict()  # least recently seen first
        self._free: list[int] = []
        self._metrics: list[set[str]] = []
        self._names: list[str] = []  # slot -> device id
        self._capacity = 0
        self._alloc(64)
        # Per dictionary generation: device code -> slot, and (device, metric) codes seen.
        self._generation: list[str] | None = None
        self._code_slot = np.full(0, -1, dtype=np.int64)
        self._pairs_seen: set[int] = set()
        self._metrics_sizes = (-1, -1)
        self._metrics_at = 0.0
        self._warned: set[str] = set()  # metric names reported by unknown_metrics

    # ---------------------------------------------------------------- storage

    def _alloc(self, capacity: int) -> None:
        old = self._capacity

        def grow(array: np.ndarray | None, shape: tuple[int, ...], fill: int) -> np.ndarray:
            new = np.full(shape, fill, dtype=np.int64)
            if array is not None:
                new[:old] = array
            return new

        get = self.__dict__.get
        self._arrivals = grow(get("_arrivals"), (capacity, ARRIVALS_KEPT), 0)
        self._arrived = grow(get("_arrived"), (capacity,), 0)  # messages ever put in the ring
        self._updates = grow(get("_updates"), (capacity, ARRIVALS_KEPT), 0)  # update starts
        self._updated = grow(get("_updated"), (capacity,), 0)  # updates ever put in the ring
        self._skews = grow(get("_skews"), (capacity, ARRIVALS_KEPT), _NO_SKEW)
        self._bucket_id = grow(get("_bucket_id"), (capacity, _BUCKETS), -1)
        self._bucket_n = grow(get("_bucket_n"), (capacity, _BUCKETS), 0)
        self._first = grow(get("_first"), (capacity,), 0)
        self._last = grow(get("_last"), (capacity,), 0)
        self._messages = grow(get("_messages"), (capacity,), 0)
        self._rejected = grow(get("_rejected"), (capacity,), 0)
        self._metrics.extend(set() for _ in range(capacity - old))
        self._names.extend("" for _ in range(capacity - old))
        self._free.extend(range(capacity - 1, old - 1, -1))
        self._capacity = capacity

    def _slot(self, device: str, now_ns: int) -> int:
        slot = self._slots.get(device)
        if slot is not None:
            return slot
        if len(self._slots) >= self.max_devices:
            self._forget(next(iter(self._slots)))
        if not self._free:
            self._alloc(min(self._capacity * 2, max(self.max_devices, 64)))
        slot = self._free.pop()
        self._slots[device] = slot
        self._names[slot] = device
        self._arrived[slot] = self._updated[slot] = 0
        self._skews[slot] = _NO_SKEW
        self._bucket_id[slot] = -1
        self._bucket_n[slot] = 0
        self._first[slot] = self._last[slot] = now_ns
        self._messages[slot] = self._rejected[slot] = 0
        self._metrics[slot] = set()
        return slot

    def _forget(self, device: str) -> None:
        slot = self._slots.pop(device)
        self._free.append(slot)
        self._metrics[slot] = set()
        self.evicted += 1
        # Codes of the current generation may point at the freed slot: look them up again.
        self._code_slot[self._code_slot == slot] = -1
        self._pairs_seen.clear()

    # ----------------------------------------------------------------- writes

    def observe(
        self,
        chunk: Chunk | None,
        rejects: Sequence[Reject] = (),
        *,
        retained_ns: Sequence[int] = (),
    ) -> None:
        """Count one batch: its rows (a chunk from the window) and its rejected messages.

        Rows of one message are consecutive and share device and receive time, which is how
        messages are told apart. Retained messages (a broker's stored value, not a sign of
        life) and `retained_duplicate` rejects are left out.

        Args:
            chunk: The batch's rows, as stored by the window, or None.
            rejects: The batch's rejected messages; the device comes from the topic.
            retained_ns: Receive times (epoch ns) of the batch's messages that carried the
                MQTT retain flag.
        """
        with self._lock:
            if chunk is not None and len(chunk):
                self._observe_rows(chunk, retained_ns)
            if rejects:
                self._observe_rejects(rejects)

    def _observe_rows(self, chunk: Chunk, retained_ns: Sequence[int]) -> None:
        dev, rec, stamp = chunk.codes["device_id"], chunk.received, chunk.timestamp
        starts = np.ones(len(rec), dtype=bool)
        starts[1:] = (rec[1:] != rec[:-1]) | (dev[1:] != dev[:-1])
        if len(retained_ns):
            starts &= ~np.isin(rec, np.asarray(retained_ns, dtype=np.int64))
        first = np.flatnonzero(starts)
        if not len(first):
            return
        slots = self._slots_of(chunk, dev[first].astype(np.int64), int(rec[first[0]]))
        keep = slots >= 0
        if not keep.all():
            first, slots = first[keep], slots[keep]
        times = rec[first]
        # A fallback timestamp equals the receive time exactly: it says nothing of the clock.
        skew = np.clip(stamp[first].astype(np.float64) - times, -_SKEW_MAX, _SKEW_MAX)
        skews = np.where(stamp[first] != times, skew.astype(np.int64), _NO_SKEW)
        self._record(slots, times, skews)
        self._note_metrics(chunk, dev)

    def _observe_rejects(self, rejects: Sequence[Reject]) -> None:
        slots: list[int] = []
        times: list[int] = []
        for reject in rejects:
            if reject.reason is RejectReason.RETAINED_DUPLICATE:
                continue
            device = device_of_topic(reject.topic)
            if device is None:
                continue
            slots.append(self._slot(device, reject.received_ns))
            times.append(reject.received_ns)
        if slots:
            slot_array = np.array(slots, dtype=np.int64)
            self._record(
                slot_array,
                np.array(times, dtype=np.int64),
                np.full(len(slots), _NO_SKEW, dtype=np.int64),
            )
            np.add.at(self._rejected, slot_array, 1)

    def _slots_of(self, chunk: Chunk, codes: np.ndarray, now_ns: int) -> np.ndarray:
        names = chunk.categories["device_id"]
        if names is not self._generation:
            self._generation = names
            self._code_slot = np.full(0, -1, dtype=np.int64)
            self._pairs_seen.clear()
        top = int(codes.max()) + 1
        if top > len(self._code_slot):
            grown = np.full(max(top, 2 * len(self._code_slot)), -1, dtype=np.int64)
            grown[: len(self._code_slot)] = self._code_slot
            self._code_slot = grown
        safe = np.maximum(codes, 0)
        slots = np.where(codes >= 0, self._code_slot[safe], -2)
        unknown = np.unique(codes[slots == -1])
        if len(unknown):
            for code in unknown.tolist():
                self._code_slot[code] = self._slot(names[code], now_ns)
            slots = np.where(codes >= 0, self._code_slot[safe], -2)
        return slots

    def _record(self, slots: np.ndarray, times: np.ndarray, skews: np.ndarray) -> None:
        """Count messages: their slots, receive times and clock skews, in arrival order."""
        order = np.argsort(slots, kind="stable")  # by device, in arrival order within one
        slots, times, skews = slots[order], times[order], skews[order]
        n = len(slots)
        head = np.flatnonzero(np.r_[True, slots[1:] != slots[:-1]])
        sizes = np.diff(np.r_[head, n])
        devices = slots[head]
        # A message starts an update unless it came within BURST_GAP_S of the device's last.
        previous = np.r_[0, times[:-1]]
        previous[head] = self._last[devices]
        fresh = np.zeros(n, dtype=bool)
        fresh[head] = self._arrived[devices] == 0
        starts = fresh | (times - previous >= _BURST_NS)
        self._messages[devices] += sizes
        self._last[devices] = np.maximum(self._last[devices], np.maximum.reduceat(times, head))
        _push(
            self._arrivals, self._arrived, slots, times, other_ring=self._skews, other_values=skews
        )
        if starts.any():
            _push(self._updates, self._updated, slots[starts], times[starts])
        # Message counts per RATE_BUCKET_S bucket; a batch mostly falls in one bucket.
        buckets = times // _BUCKET_NS
        tail = head + sizes - 1
        if np.array_equal(buckets[head], buckets[tail]):
            keys_slot, keys_bucket, counts = devices, buckets[head], sizes
        else:
            recent = buckets > int(buckets.max()) - _BUCKETS
            keys, counts = np.unique(
                slots[recent] * (1 << 40) + buckets[recent], return_counts=True
            )
            keys_slot, keys_bucket = keys >> 40, keys & ((1 << 40) - 1)
        column = keys_bucket % _BUCKETS
        held = self._bucket_id[keys_slot, column]
        newer = keys_bucket > held
        self._bucket_id[keys_slot[newer], column[newer]] = keys_bucket[newer]
        self._bucket_n[keys_slot[newer], column[newer]] = 0
        same = keys_bucket >= held
        self._bucket_n[keys_slot[same], column[same]] += counts[same]
        move = self._slots.move_to_end
        names = self._names
        for slot in devices.tolist():  # least recently seen first, for eviction
            move(names[slot])

    def _note_metrics(self, chunk: Chunk, dev: np.ndarray) -> None:
        """Note which metrics each device sent.

        Large batches are looked at when a new device or metric name appeared, and at
        least every `_METRICS_EVERY_S`: a device's metrics recur, and a unique over every
        row of every large batch would cost more than the rest of `observe`.
        """
        metric = chunk.codes["metric"]
        names = chunk.categories["metric"]
        sizes = (len(names), len(chunk.categories["device_id"]))
        now = time.monotonic()
        if (
            len(metric) > _METRICS_ALWAYS_ROWS
            and sizes == self._metrics_sizes
            and now - self._metrics_at < _METRICS_EVERY_S
        ):
            return
        self._metrics_sizes, self._metrics_at = sizes, now
        valid = (dev >= 0) & (metric >= 0)
        pairs = np.unique(dev[valid].astype(np.int64) * (1 << 32) + metric[valid])
        new = set(pairs.tolist()) - self._pairs_seen
        for pair in new:
            device_code, metric_code = pair >> 32, pair & 0xFFFFFFFF
            slot = int(self._code_slot[device_code]) if device_code < len(self._code_slot) else -1
            if slot < 0:
                continue
            seen = self._metrics[slot]
            if len(seen) < MAX_METRICS_PER_DEVICE:
                seen.add(names[metric_code])
            self._pairs_seen.add(pair)

    def evict(self, now_ns: int) -> int:
        """Forget devices not seen for `forget_after`; return how many went."""
        cutoff = now_ns - self.forget_after_ns
        gone = 0
        with self._lock:
            while self._slots:
                device, slot = next(iter(self._slots.items()))
                if self._last[slot] >= cutoff:
                    break
                self._forget(device)
                gone += 1
        return gone

    # ------------------------------------------------------------------ reads

    @property
    def devices(self) -> int:
        """Devices tracked now."""
        return len(self._slots)

    def metric_names(self) -> set[str]:
        """Return the metrics any tracked device sent (at most 256 a device are noted)."""
        with self._lock:
            return set().union(*(self._metrics[s] for s in self._slots.values()))

    def unknown_metrics(self, names: Iterable[str]) -> tuple[list[str], list[str]]:
        """Return the names no device has sent, each only the first time asked, and the known.

        For the "a metric never seen" warning of `alert(metric=...)` and friends: before
        any metric is seen nothing is unknown (the devices may not have sent yet), and a
        name is reported once per `DeviceHealth`.

        Returns:
            The new unknown names, in the order given, and the known metrics, sorted.
        """
        known = self.metric_names()
        if not known:
            return [], []
        with self._lock:
            new = [n for n in dict.fromkeys(names) if n not in known and n not in self._warned]
            self._warned.update(new)
        return new, sorted(known)

    def last_seen(self) -> dict[str, int]:
        """Return each tracked device's last receive time, in epoch ns."""
        with self._lock:
            devices = list(self._slots)
            slots = np.fromiter(self._slots.values(), dtype=np.int64, count=len(devices))
            last = self._last[slots].tolist()
        return dict(zip(devices, last, strict=True))

    def frame(self, *, now_ns: int, silent_after: float | None = None) -> pd.DataFrame:
        """Return one row per tracked device, silent devices first, then by device id.

        Args:
            now_ns: The present, in epoch ns.
            silent_after: Seconds without a message after which every device counts as
                silent; None uses each device's own pace (see `HEALTH_COLUMNS` in the
                collector's `health()` docstring).

        Returns:
            A frame with the columns of `HEALTH_COLUMNS` and a RangeIndex.
        """
        with self._lock:
            devices = list(self._slots)
            slots = np.fromiter(self._slots.values(), dtype=np.int64, count=len(devices))
            arrivals = self._arrivals[slots]
            arrived = self._arrived[slots]
            updates = self._updates[slots]
            updated = self._updated[slots]
            skews = self._skews[slots]
            bucket_id = self._bucket_id[slots]
            bucket_n = self._bucket_n[slots]
            first = self._first[slots]
            last = self._last[slots]
            messages = self._messages[slots]
            rejected = self._rejected[slots]
            metrics = [",".join(sorted(self._metrics[s])) for s in slots.tolist()]
        age = (now_ns - last) / _NS
        interval = _median_interval(updates, updated)
        # One update so far: a first burst (pace unknown yet), or one endless update, a
        # steady stream faster than the burst gap, told apart by how long it has lasted.
        steady = (updated < 2) & (last - updates[:, 0] >= _STEADY_NS)
        interval[steady] = _median_interval(arrivals[steady], arrived[steady])
        now_bucket = now_ns // _BUCKET_NS
        in_window = bucket_id > now_bucket - _BUCKETS
        recent = np.where(in_window, bucket_n, 0).sum(axis=1)
        window_start = (now_bucket - _BUCKETS + 1) * _BUCKET_NS
        span = (now_ns - np.maximum(window_start, first)) / _NS
        rate = recent / np.maximum(span, 1.0)
        if silent_after is None:
            limit = np.where(
                np.isnan(interval),
                SILENT_UNKNOWN_S,
                np.maximum(SILENT_FACTOR * np.nan_to_num(interval), SILENT_FLOOR_S),
            )
        else:
            limit = np.full(len(devices), float(silent_after))
        skew = _median_skew(skews) / _NS
        ids = pd.Series(devices, dtype=str)
        frame = pd.DataFrame(
            {
                "device_id": ids,
                "last_seen": pd.DatetimeIndex(last.view("M8[ns]")).tz_localize("UTC"),
                "age_s": age.astype(np.float64),
                "msgs_per_s": rate.astype(np.float64),
                "usual_interval_s": interval,
                "silent": age > limit,
                "clock_skew_s": skew,
                "messages": messages,
                "rejected": rejected,
                "reject_share": np.where(messages > 0, rejected / np.maximum(messages, 1), np.nan),
                "metrics": pd.Series(metrics, dtype=str),
                DEVICE_ALIAS: ids.copy(),
            }
        )
        frame = frame.sort_values(["silent", "device_id"], ascending=[False, True], kind="stable")
        return frame.reset_index(drop=True)


def _push(
    ring: np.ndarray,
    filled: np.ndarray,
    slots: np.ndarray,
    values: np.ndarray,
    *,
    other_ring: np.ndarray | None = None,
    other_values: np.ndarray | None = None,
) -> None:
    """Put values (grouped by slot, in arrival order) in per-slot rings, keeping the last few.

    `other_ring` (same shape as `ring`) takes `other_values` at the same places; `filled`
    counts what each slot ever put in its ring.
    """
    n = len(slots)
    head = np.flatnonzero(np.r_[True, slots[1:] != slots[:-1]])
    sizes = np.diff(np.r_[head, n])
    devices = slots[head]
    k = ring.shape[1]
    rank = np.arange(n) - np.repeat(head, sizes)
    kept = rank >= np.repeat(sizes - k, sizes)
    at = (np.repeat(filled[devices], sizes) + rank) % k
    rows, columns = slots[kept], at[kept]
    ring[rows, columns] = values[kept]
    if other_ring is not None and other_values is not None:
        other_ring[rows, columns] = other_values[kept]
    filled[devices] += sizes


def _ring_values(ring: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Rings as float rows in arrival order, NaN where not filled yet."""
    k = ring.shape[1]
    count = np.minimum(filled, k)
    # Oldest entry first: the ring index of the i-th oldest is (filled - count + i) % k.
    index = (filled[:, None] - count[:, None] + np.arange(k)[None, :]) % k
    values = np.take_along_axis(ring, index, axis=1).astype(np.float64)
    values[np.arange(k)[None, :] >= count[:, None]] = np.nan
    return values


def _median_skew(ring: np.ndarray) -> np.ndarray:
    values = ring.astype(np.float64)
    values[ring == _NO_SKEW] = np.nan
    out = np.full(len(ring), np.nan)
    some = ~np.isnan(values).all(axis=1)
    out[some] = np.nanmedian(values[some], axis=1)
    return out


def _median_interval(arrivals: np.ndarray, arrived: np.ndarray) -> np.ndarray:
    if not len(arrivals):
        return np.zeros(0, dtype=np.float64)
    gaps = np.diff(_ring_values(arrivals, arrived), axis=1) / _NS
    out = np.full(len(arrivals), np.nan)
    some = arrived > 1
    out[some] = np.nanmedian(gaps[some], axis=1)
    return out
