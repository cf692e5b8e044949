"""Rows back to telemetry payloads: a recording's rows as the messages that give them back.

The replay's encoder (see `tesaiot_data.replay` for the three payload shapes and the rows that
cannot come back): rows are grouped by device, sensor type, timestamp and receive time, and
each group becomes one or more JSON payloads on `device/<id>/telemetry/<sensor_type>` that the
parser turns back into exactly those rows. Rows no message can carry are counted by reason
(`SKIP_REASONS`), never sent: a topic a broker refuses makes it close the connection
(Mosquitto 2.0) or paho raise. numpy only: a frame is read through its columns, so neither
pandas nor pyarrow is imported here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import orjson

from tesaiot_data.parse.payload import RESERVED_KEYS

__all__ = ["MAX_TOPIC_BYTES", "SKIP_REASONS", "MessagePlan", "ReplayMessage", "messages_of"]

MAX_TOPIC_BYTES = 65_535
"""The longest MQTT topic, in bytes of UTF-8 (a two-byte length prefix)."""

SKIP_REASONS = {
    "reserved_metric": "a metric named like a key the parser never reads as a metric",
    "no_device_id": "no device id",
    "wildcard_or_slash": "a device id holding '+', '#' or '/'",
    "control_character": "a device id holding a control character (U+0000-001F, U+007F-009F)",
    "non_character": "a device id holding a Unicode non-character (U+FDD0-FDEF, U+xFFFE, U+xFFFF)",
    "not_utf8": "a device id holding a lone surrogate, which is not UTF-8",
    "topic_too_long": f"a device id whose topic is longer than {MAX_TOPIC_BYTES:,} bytes (UTF-8)",
}
"""Why a row cannot be replayed (the keys of `ReplayResult.skipped_by_reason`): what each means."""

_NS = 1_000_000_000
_ROWS_PER_MESSAGE = 1_000  # well under the collector's default max_rows_per_message
_CHUNK_ROWS = 50_000  # rows turned into Python objects at a time
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Keys the parser never reads as a metric, and `value`, which it reads as the enclosing
# object's own metric: such metrics can only come back as a sensor type's top-level value.
_NOT_A_KEY = RESERVED_KEYS | {"value"}
# What MQTT brokers refuse in a topic (MQTT 5 section 1.5.4; Mosquitto 2.0 closes the
# connection of a client that sends one): control characters, NUL included, and the Unicode
# non-characters U+FDD0..U+FDEF and the last two code points of every plane.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NON_CHARACTER = re.compile(
    r"[\ufdd0-\ufdef" + "".join(rf"\U{plane:04x}fffe\U{plane:04x}ffff" for plane in range(17)) + "]"
)


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
        self, *, shift_ns: int = 0, skipped: MutableMapping[str, int] | None = None
    ) -> Iterator[ReplayMessage]:
        """The messages that give back the rows, in replay order.

        Args:
            shift_ns: Added to every timestamp, in nanoseconds.
            skipped: Rows no message can reproduce are counted here by reason (the keys of
                `SKIP_REASONS`) and not sent.

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


def _level_fault(text: str | None, *, single: bool) -> str | None:
    """Why `text` cannot be in a topic as one level (`single`) or as levels; None when it can."""
    if not text:
        return "no_device_id"
    if "+" in text or "#" in text or (single and "/" in text) or "" in text.split("/"):
        return "wildcard_or_slash"
    if _CONTROL.search(text):
        return "control_character"
    if _NON_CHARACTER.search(text):
        return "non_character"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "not_utf8"
    return None


def _topic_fits(topic: str) -> bool:
    # A character is at most 4 bytes: most topics need no encoding to be measured.
    return len(topic) * 4 <= MAX_TOPIC_BYTES or len(topic.encode()) <= MAX_TOPIC_BYTES


class _Encoder:
    """Turns the rows of one recorded message into the payloads that give them back."""

    def __init__(self, names: dict[str, list[str | None]]) -> None:
        self.devices = names["device_id"]
        self.sensors = names["sensor_type"]
        self.metrics = names["metric"]
        self.units = names["unit"]
        self.texts = names["value_text"]
        self._topics: dict[tuple[int, int], tuple[str, str | None] | str] = {}
        self._second = -1
        self._prefix = ""

    def _topic(self, device: int, sensor: int) -> tuple[str, str | None] | str:
        """(topic, sensor_type for the payload or None), or why the device cannot be sent.

        A sensor type that cannot be in a topic travels in the payload, which the parser
        reads when the topic has no sensor part; a device id has no such way.
        """
        key = (device, sensor)
        try:
            return self._topics[key]
        except KeyError:
            pass
        device_id, sensor_type = self.devices[device], self.sensors[sensor]
        found: tuple[str, str | None] | str
        fault = _level_fault(device_id, single=True)
        if fault is not None:
            found = fault
        elif not _topic_fits(bare := f"device/{device_id}/telemetry"):
            found = "topic_too_long"
        elif (
            sensor_type is not None
            and _level_fault(sensor_type, single=False) is None
            and _topic_fits(topic := f"{bare}/{sensor_type}")
        ):
            found = (topic, None)
        else:
            found = (bare, sensor_type)
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
        skipped: MutableMapping[str, int] | None,
    ) -> Iterator[ReplayMessage]:
        where = self._topic(device, sensor)
        if isinstance(where, str):
            if skipped is not None:
                skipped[where] = skipped.get(where, 0) + len(rows)
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
                    skipped["reserved_metric"] = skipped.get("reserved_metric", 0) + 1
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
