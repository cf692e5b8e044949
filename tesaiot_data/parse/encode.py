"""Rows back to telemetry payloads: a recording's rows as the messages that give them back.

The replay's encoder (see `tesaiot_data.replay` for the three payload shapes and the rows that
cannot come back): rows are grouped by device, sensor type, timestamp and receive time, and
each group becomes one or more JSON payloads on `device/<id>/telemetry/<sensor_type>` that the
parser turns back into exactly those rows. numpy only: a frame is read through its columns, so
neither pandas nor pyarrow is imported here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import orjson

from tesaiot_data.parse.payload import RESERVED_KEYS

__all__ = ["MessagePlan", "ReplayMessage", "messages_of"]

_NS = 1_000_000_000
_ROWS_PER_MESSAGE = 1_000  # well under the collector's default max_rows_per_message
_CHUNK_ROWS = 50_000  # rows turned into Python objects at a time
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Keys the parser never reads as a metric, and `value`, which it reads as the enclosing
# object's own metric: such metrics can only come back as a sensor type's top-level value.
_NOT_A_KEY = RESERVED_KEYS | {"value"}


@dataclass(frozen=True, slots=True)
class ReplayMessage:
    """One message of a replay.

    Args:
        topic: `device/<id>/telemetry/<sensor_type>` (or `device/<id>/telemetry`).
        payload: UTF-8 JSON.
        received_ns: When the rows it carries were received, epoch nanoseconds UTC.
        rows: How many recorded rows it carries.
    """

    topic: str
    payload: bytes
    received_ns: int
    rows: int


class MessagePlan:
    """A recording's rows in replay order (by receive time), grouped into its messages.

    Args:
        frame: Rows in the canonical columns, as `load_recording()` returns them (a pandas
            DataFrame; read through its columns, so pandas is never imported here).

    Attributes:
        rows: How many rows.
        timestamp: The device timestamps in replay order, int64 epoch ns, shape (rows,).
        received: The receive times in replay order, int64 epoch ns, shape (rows,).
        starts: The index of each recorded message's first row, int64, ascending.
        span_ns: Last receive time minus first, in ns (0 without rows).
    """

    def __init__(self, frame: Any) -> None:
        order = np.argsort(_ns(frame["received_at"]), kind="stable")
        self.rows = len(order)
        self.timestamp = _ns(frame["timestamp"])[order]
        self.received = _ns(frame["received_at"])[order]
        names: dict[str, list[str | None]] = {}
        codes: dict[str, np.ndarray] = {}
        for column in ("device_id", "sensor_type", "metric", "unit", "value_text"):
            categorical = frame[column].astype("category").array
            names[column] = [str(name) for name in categorical.categories]
            codes[column] = np.asarray(categorical.codes)[order]
        self.names = names
        self.codes = codes
        self.value = np.asarray(frame["value"], dtype=np.float64)[order]
        if self.rows:
            same = (
                (codes["device_id"][1:] == codes["device_id"][:-1])
                & (codes["sensor_type"][1:] == codes["sensor_type"][:-1])
                & (self.timestamp[1:] == self.timestamp[:-1])
                & (self.received[1:] == self.received[:-1])
            )
            self.starts = np.flatnonzero(np.concatenate(([True], ~same)))
        else:
            self.starts = np.zeros(0, dtype=np.int64)
        self.span_ns = int(self.received[-1] - self.received[0]) if self.rows else 0

    def messages(
        self, *, shift_ns: int = 0, skipped: list[int] | None = None
    ) -> Iterator[ReplayMessage]:
        """The messages that give back the rows, in replay order.

        Args:
            shift_ns: Added to every timestamp, in nanoseconds.
            skipped: A one-item counter: rows no message can reproduce are added to
                `skipped[0]` and not sent.

        Yields:
            The messages of each recorded message: one, or more when it held more than
            1,000 rows or one metric twice.
        """
        encoder = _Encoder(self.names)
        bounds = np.append(self.starts, self.rows)
        group = 0
        groups = len(self.starts)
        while group < groups:
            # A chunk of whole messages, turned into Python objects at once.
            last = int(np.searchsorted(bounds, bounds[group] + _CHUNK_ROWS, side="right")) - 1
            last = max(last, group + 1)
            low, high = int(bounds[group]), int(bounds[last])
            columns = (
                self.codes["metric"][low:high].tolist(),
                self.value[low:high].tolist(),
                self.codes["unit"][low:high].tolist(),
                self.codes["value_text"][low:high].tolist(),
            )
            for index in range(group, last):
                start, end = int(bounds[index]), int(bounds[index + 1])
                yield from encoder.encode(
                    int(self.codes["device_id"][start]),
                    int(self.codes["sensor_type"][start]),
                    timestamp_ns=int(self.timestamp[start]) + shift_ns,
                    received_ns=int(self.received[start]),
                    columns=columns,
                    rows=range(start - low, end - low),
                    skipped=skipped,
                )
            group = last


def _ns(column: Any) -> np.ndarray:
    values = column.array
    asi8 = getattr(values, "asi8", None)
    if asi8 is not None:
        return np.asarray(asi8, dtype=np.int64)
    return np.asarray(column.astype("datetime64[ns, UTC]").array.asi8, dtype=np.int64)


def _topic_level_ok(text: str) -> bool:
    return "" not in text.split("/") and not any(char in text for char in "+#\x00")


class _Encoder:
    """Turns the rows of one recorded message into the payloads that give them back."""

    def __init__(self, names: dict[str, list[str | None]]) -> None:
        self.devices = names["device_id"]
        self.sensors = names["sensor_type"]
        self.metrics = names["metric"]
        self.units = names["unit"]
        self.texts = names["value_text"]
        self._topics: dict[tuple[int, int], tuple[str, str | None] | None] = {}
        self._second = -1
        self._prefix = ""

    def _topic(self, device: int, sensor: int) -> tuple[str, str | None] | None:
        """(topic, sensor_type for the payload or None); None when the device cannot be sent."""
        key = (device, sensor)
        try:
            return self._topics[key]
        except KeyError:
            pass
        device_id, sensor_type = self.devices[device], self.sensors[sensor]
        found: tuple[str, str | None] | None
        if device_id is None or "/" in device_id or not _topic_level_ok(device_id):
            found = None
        elif sensor_type is not None and _topic_level_ok(sensor_type):
            found = (f"device/{device_id}/telemetry/{sensor_type}", None)
        else:
            found = (f"device/{device_id}/telemetry", sensor_type)
        self._topics[key] = found
        return found

    def iso(self, ns: int) -> str:
        """Epoch nanoseconds as `YYYY-MM-DDTHH:MM:SS.fffffffffZ`, exactly."""
        second, nanos = divmod(ns, _NS)
        if second != self._second:
            self._second = second
            moment = _EPOCH + timedelta(seconds=second)
            self._prefix = moment.replace(tzinfo=None).isoformat(timespec="seconds")
        return f"{self._prefix}.{nanos:09d}Z"

    def encode(
        self,
        device: int,
        sensor: int,
        *,
        timestamp_ns: int,
        received_ns: int,
        columns: tuple[list[int], list[float], list[int], list[int]],
        rows: range,
        skipped: list[int] | None,
    ) -> Iterator[ReplayMessage]:
        where = self._topic(device, sensor)
        if where is None:
            if skipped is not None:
                skipped[0] += len(rows)
            return
        sensor_type = self.sensors[sensor] or ""
        place = (*where, sensor_type)
        metric_codes, values, unit_codes, text_codes = columns
        stamp = self.iso(timestamp_ns)
        batch: list[tuple[str, float | str, str | None]] = []
        seen: set[str] = set()
        for row in rows:
            metric = self.metrics[metric_codes[row]] or ""
            if metric != sensor_type and metric in _NOT_A_KEY:
                if skipped is not None:
                    skipped[0] += 1
                continue
            if metric in seen or len(batch) >= _ROWS_PER_MESSAGE:
                # A JSON object holds a key once: the rest goes in the next message.
                yield self._message(place, stamp, received_ns, batch)
                batch, seen = [], set()
            seen.add(metric)
            text_code = text_codes[row]
            unit_code = unit_codes[row]
            value: float | str = (self.texts[text_code] or "") if text_code >= 0 else values[row]
            batch.append((metric, value, self.units[unit_code] if unit_code >= 0 else None))
        if batch:
            yield self._message(place, stamp, received_ns, batch)

    @staticmethod
    def _message(
        place: tuple[str, str | None, str],
        stamp: str,
        received_ns: int,
        batch: list[tuple[str, float | str, str | None]],
    ) -> ReplayMessage:
        topic, payload_sensor, sensor_type = place
        obj: dict[str, Any]
        units = {unit for _, _, unit in batch}
        if len(batch) == 1 and batch[0][0] == sensor_type:
            _, value, unit = batch[0]
            obj = {"value": value} if unit is None else {"value": value, "unit": unit}
            obj["timestamp"] = stamp
        elif len(units) == 1 and not any(metric in _NOT_A_KEY for metric, _, _ in batch):
            (unit,) = units
            obj = {"timestamp": stamp} if unit is None else {"timestamp": stamp, "unit": unit}
            for metric, value, _ in batch:
                obj[metric] = value
        else:
            obj = {"timestamp": stamp}
            data: dict[str, Any] = {}
            for metric, value, unit in batch:
                if metric == sensor_type:
                    obj["value"] = value
                    if unit is not None:
                        obj["unit"] = unit
                else:
                    data[metric] = (
                        {"value": value} if unit is None else {"value": value, "unit": unit}
                    )
            obj["data"] = data
        if payload_sensor is not None:
            obj["sensor_type"] = payload_sensor
        return ReplayMessage(topic, _dumps(obj, batch), received_ns, len(batch))


def _dumps(obj: dict[str, Any], batch: list[tuple[str, float | str, str | None]]) -> bytes:
    if all(isinstance(value, str) or math.isfinite(value) for _, value, _ in batch):
        return orjson.dumps(obj)
    # orjson writes NaN and infinities as null; the parser reads json's NaN and Infinity.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def messages_of(frame: Any, *, shift_ns: int = 0) -> Iterator[ReplayMessage]:
    """The messages that give back a frame's rows, in the order a replay sends them.

    Args:
        frame: Rows in the canonical columns, as `load_recording()` returns them.
        shift_ns: Added to every timestamp, in nanoseconds.

    Returns:
        An iterator of messages, ordered by receive time (stable).
    """
    return MessagePlan(frame).messages(shift_ns=shift_ns)
