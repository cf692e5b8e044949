"""The batch walker: TESAIoT telemetry messages into rows, one per metric, in columns.

`parse_batch` is the collector's hot path; `parse.single.parse_message` feeds one message to
the same walker. Topics and payload bytes are read by `parse.payload`, device times by
`parse.timestamps`.

A message arrives on `device/<device_id>/telemetry[/<sensor>/...]`; the topic gives the row's
`device_id` and `sensor_type` ("default" when there is no sensor part). The payload is JSON in
one of the shapes the platform's devices send:

- standard: `{"value": 25.5, "unit": "celsius", "timestamp": "..."}` gives one row whose
  metric is the sensor type;
- flat: `{"timestamp": ..., "temperature": 25.1, "humidity": 60}` gives a row per field;
- nested: `{"timestamp": ..., "sensor_type": "DPS368", "data": {"pressure": 1013.2}}` gives a
  row per field of `data`; deeper objects give dotted metrics (`accel.x`);
- a bare number or string gives one row; an array is parsed element by element, each element
  as a payload of its own (with its own timestamp).

Rules that hold in every shape:

- Numbers become float values; booleans 1.0 and 0.0; strings a text row (value NaN, the string
  in `value_text`); nulls are skipped; a list gives `name.0`, `name.1`, ...; NaN and Infinity
  are kept. A string that is exactly a JSON number (`"25.5"`, `"-1e3"`; not `" 25"`, `"+1"`,
  `"0012"` or `"NaN"`) is a number, as devices that quote their numbers mean it; turn this off
  with `ParseOptions(numeric_strings=False)`.
- The keys `timestamp`, `ts`, `time`, `device_id`, `sensor_type` and `unit` are never metrics.
- An object's `value` is the row named after the object (after the sensor type at the top);
  a `value` that is an object is flattened in place. A string `unit` is the unit of the
  object's `value`, or, when the object has no `value`, of all its fields; nested objects
  inherit it unless they have their own.
- `device_id` always comes from the topic. A payload's string `sensor_type` replaces the
  sensor type only when the topic has no sensor part.
- The timestamp is the first non-null of `timestamp`, `ts`, `time`: ISO 8601 (naive means
  UTC, or the zone `ParseOptions.naive_timezone` names) or epoch seconds, milliseconds,
  microseconds or nanoseconds, as a number or a numeric string (texts longer than
  `MAX_TIMESTAMP_TEXT` are not timestamps), the unit chosen by magnitude (below 1e11
  seconds, 1e14 milliseconds, 1e17 microseconds, else nanoseconds). ISO and numeric strings
  convert exactly (digits past the nanosecond are dropped); JSON floats are rounded to the
  microsecond. A missing or unreadable timestamp, or one outside what `datetime64[ns]`
  holds, falls back to the device time the message carried outside its payload
  (`RawMessage.device_ns`, an MQTT 5 user property) or else to the receive time, and then the
  row is counted in `timestamp_fallbacks`.
- Containers nested deeper than `MAX_DEPTH` are dropped, and a message gives at most
  `ParseOptions.max_rows_per_message` rows (default `MAX_ROWS_PER_MESSAGE`), the first ones in
  payload order; such messages are counted in `ColumnBatch.truncated_messages` and the rows
  beyond the limit in `ColumnBatch.rows_cut`.
- A message with the MQTT retain flag whose payload equals the last one seen on its topic is a
  broker's redelivery of a reading already taken (brokers resend retained messages on every
  (re)subscription): it becomes a `retained_duplicate` reject when the caller tracks topics
  (`parse_batch(..., last_payloads=...)`, as the collector does).

A message that yields no row becomes one `Reject` instead, so every message fed in is either
parsed (one or more rows) or rejected, never both and never lost. Every step is linear in the
size of the message (no backtracking on unbounded text).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

import orjson

from tesaiot_data.errors import ConfigError
from tesaiot_data.messages import (
    MAX_REJECT_PAYLOAD,
    ColumnBatch,
    RawMessage,
    Reject,
    RejectReason,
)
from tesaiot_data.parse.payload import (
    RESERVED_KEYS,
    TOPIC_CACHE,
    TOPIC_HELP,
    as_bytes,
    read_payload,
    read_payload_stdlib,
    short_detail,
    topic_info,
)
from tesaiot_data.parse.timestamps import (
    ISO_SECOND_CACHE,
    MAX_TIMESTAMP_TEXT,
    NaiveZone,
    timestamp_ns,
)

__all__ = [
    "LAST_PAYLOADS_MAX",
    "MAX_DEPTH",
    "MAX_ROWS_PER_MESSAGE",
    "MAX_TIMESTAMP_TEXT",
    "ParseOptions",
    "parse_batch",
]

logger = logging.getLogger(__name__)

MAX_DEPTH = 8
"""Containers (objects, arrays) nested deeper than this are dropped."""
MAX_ROWS_PER_MESSAGE = 10_000
"""Default for `ParseOptions.max_rows_per_message`: batched sensors send a few thousand."""
LAST_PAYLOADS_MAX = 100_000
"""Topics whose last payload `parse_batch` remembers for the retained check; beyond it the
memory starts afresh (a retained redelivery on a forgotten topic is then kept as a row)."""

_NAN = float("nan")
_INF = float("inf")
_NS_MIN = -(2**63) + 1  # pd.Timestamp.min; -2**63 itself is NaT
_NS_MAX = 2**63 - 1
# RFC 8259's number grammar; each step is deterministic, so matching is linear.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?", re.ASCII)
_NUMBER_START = frozenset("-0123456789")
_orjson_loads = orjson.loads
_OrjsonError = orjson.JSONDecodeError
_JSON_NAMES = {dict: "object", list: "array", type(None): "null"}
# `ISO_SECOND_CACHE` is timestamps' cache of "YYYY-MM-DDTHH:MM:SS" -> epoch ns, read by
# `_feed_all` in line to spare two calls per message; `TOPIC_CACHE` is payload's topic cache,
# read the same way. Both are only ever cleared, never replaced, so the names bound here stay
# their caches.
# "000".."999" -> nanoseconds: checks and converts an ISO timestamp's milliseconds in one look-up.
_MILLIS_NS = {f"{millis:03d}": millis * 1_000_000 for millis in range(1000)}


@dataclass(frozen=True, slots=True, kw_only=True)
class ParseOptions:
    """How payloads are read where devices differ; the defaults suit most fleets.

    Args:
        max_rows_per_message: Most rows one message may give; the rest are cut and counted
            (`ColumnBatch.rows_cut`). Batched sensors send a few thousand readings at once.
        numeric_strings: Read a string that is exactly a JSON number (`"25.5"`) as a number;
            False keeps it as text in `value_text`.
        naive_timezone: The zone of ISO timestamps that carry none (devices that send local
            time, for example `"Asia/Bangkok"` or `"+07:00"`); None reads them as UTC.

    Raises:
        ConfigError: `max_rows_per_message` is below 1 or `naive_timezone` is not a zone.
    """

    max_rows_per_message: int = MAX_ROWS_PER_MESSAGE
    numeric_strings: bool = True
    naive_timezone: str | tzinfo | None = None
    _naive: NaiveZone | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_rows_per_message, bool) or not (
            isinstance(self.max_rows_per_message, int) and self.max_rows_per_message >= 1
        ):
            raise ConfigError(
                f"max_rows_per_message={self.max_rows_per_message!r} must be an integer >= 1",
                hint=f"the default is {MAX_ROWS_PER_MESSAGE:,}",
            )
        object.__setattr__(self, "_naive", NaiveZone.parse(self.naive_timezone))


_DEFAULT_OPTIONS = ParseOptions()


def _clean_text(text: str | None) -> str | None:
    if text is None:
        return None
    return text.encode("utf-8", "replace").decode("utf-8")


def _float(number: float) -> float:
    try:
        return float(number)
    except OverflowError:  # an integer beyond float range, like 1e400 becomes inf
        return _INF if number > 0 else -_INF


# --- the one code path for batch and single messages (`parse.single` feeds one) -----------


class _Writer:
    """Appends messages to a ColumnBatch; holds its lists to spare attribute lookups."""

    __slots__ = (
        "batch",
        "clipped",
        "cut",
        "device",
        "device_ns",
        "last_payloads",
        "limit",
        "metric",
        "numeric",
        "options",
        "received",
        "sensor",
        "text",
        "timestamp",
        "unit",
        "value",
    )

    def __init__(
        self,
        batch: ColumnBatch,
        options: ParseOptions = _DEFAULT_OPTIONS,
        last_payloads: dict[str, int] | None = None,
    ) -> None:
        self.batch = batch
        self.options = options
        self.numeric = options.numeric_strings
        self.last_payloads = last_payloads
        self.timestamp = batch.timestamp_ns
        self.received = batch.received_ns
        self.device = batch.device_id
        self.sensor = batch.sensor_type
        self.metric = batch.metric
        self.value = batch.value
        self.unit = batch.unit
        self.text = batch.value_text
        self.limit = 0
        self.cut = 0
        self.clipped = False
        self.device_ns: int | None = None  # the message's own device time, if it has one

    def feed(self, topic: str, payload: bytes, received_ns: int, retain: bool) -> None:
        batch = self.batch
        batch.messages += 1
        if type(payload) is not bytes:
            payload = as_bytes(payload)
        info = topic_info(topic)
        if info is None:
            self._reject(topic, payload, RejectReason.BAD_TOPIC, TOPIC_HELP, received_ns)
            return
        last = self.last_payloads
        if last is not None:
            key = hash(payload)
            if retain and last.get(topic) == key:
                detail = "the broker sent the retained message again; it equals the last one taken"
                self._reject(topic, payload, RejectReason.RETAINED_DUPLICATE, detail, received_ns)
                return
            if len(last) >= LAST_PAYLOADS_MAX and topic not in last:
                last.clear()  # bounded by topics, never by messages
            last[topic] = key
        obj, reason, detail = read_payload(payload)
        if reason is not None:
            self._reject(topic, payload, reason, detail, received_ns)
            return
        self.take(topic, payload, info, obj, received_ns, retain=retain)

    def take(
        self,
        topic: str,
        payload: bytes,
        info: tuple[str, str, bool],
        obj: Any,
        received_ns: int,
        *,
        retain: bool,
    ) -> None:
        """The rows of a message already counted, its topic read and its payload decoded."""
        batch = self.batch
        start = len(self.metric)
        fallbacks = batch.timestamp_fallbacks
        self.limit = start + self.options.max_rows_per_message
        self.cut = 0
        self.clipped = False
        try:
            self._payload(obj, info[1], info[2], received_ns, 1)
            rows = len(self.metric) - start
            if rows and (b"\\ud" in payload or b"\\uD" in payload):
                self._clean(start)
        except Exception as exc:  # a bug, not bad input: keep the batch whole and go on
            logger.exception("could not turn a message on %r into rows", topic)
            for column in (self.timestamp, self.sensor, self.metric, self.value, self.unit):
                del column[start:]
            del self.text[start:]
            batch.timestamp_fallbacks = fallbacks
            self.cut = 0
            detail = short_detail(f"internal error: {exc!r}")
            self._reject(topic, payload, RejectReason.NO_FIELDS, detail, received_ns)
            return
        if not rows:
            detail = f"no number, boolean or text in the JSON {_JSON_NAMES.get(type(obj), 'value')}"
            if self.clipped:
                detail += f" within {MAX_DEPTH} levels of nesting"
            self._reject(topic, payload, RejectReason.NO_FIELDS, detail, received_ns)
            return
        if rows == 1:
            self.received.append(received_ns)
            self.device.append(info[0])
        else:
            self.received.extend([received_ns] * rows)
            self.device.extend([info[0]] * rows)
        batch.parsed_messages += 1
        if retain:
            batch.retained_messages += 1
        if self.clipped:
            batch.truncated_messages += 1
            batch.rows_cut += self.cut

    def _reject(
        self, topic: object, payload: bytes, reason: RejectReason, detail: str, received_ns: int
    ) -> None:
        if not isinstance(topic, str):
            topic = repr(topic)
        elif not topic.isascii():
            # Bytes that were not UTF-8 arrive as lone surrogates; write them as escapes so
            # that the reject can be printed and stored (Parquet strings are UTF-8).
            topic = topic.encode("utf-8", "backslashreplace").decode("utf-8")
        self.batch.rejects.append(
            Reject(
                topic=topic,
                payload=payload[:MAX_REJECT_PAYLOAD],
                payload_size=len(payload),
                reason=reason,
                detail=detail,
                received_ns=received_ns,
            )
        )

    def _clean(self, start: int) -> None:
        # JSON escapes can make lone surrogates, which no UTF-8 writer (Parquet) accepts.
        for column in (self.sensor, self.metric, self.unit, self.text):
            column[start:] = [_clean_text(text) for text in column[start:]]  # type: ignore[misc]

    def _payload(
        self, obj: Any, sensor: str, has_sensor: bool, received_ns: int, depth: int
    ) -> None:
        """Rows of one top-level payload (a message, or one element of an array message)."""
        start = len(self.metric)
        kind = type(obj)
        stamp = None
        if kind is dict:
            if not has_sensor:
                named = obj.get("sensor_type")
                if type(named) is str and named:
                    sensor = named
            raw = obj.get("timestamp")
            if raw is None and (raw := obj.get("ts")) is None:
                raw = obj.get("time")
            value = obj.get("value")
            if (
                (type(value) is float or type(value) is int)
                and len(obj) == 1 + ("unit" in obj) + (raw is not None)
                and start < self.limit
            ):
                # The standard shape, most of the traffic: {"value", "unit", "timestamp"}
                # and nothing else. One row without the general walk.
                unit = obj.get("unit")
                self.metric.append(sensor)
                self.value.append(value if type(value) is float else _float(value))
                self.unit.append(unit if type(unit) is str else None)
                self.text.append(None)
            else:
                self._object(obj, "", sensor, None, depth, top=True)
            if raw is not None and len(self.metric) > start:
                stamp = timestamp_ns(raw, self.options._naive, received_ns=received_ns)
        elif kind is list:
            if depth > MAX_DEPTH:
                self.clipped = True
                return
            for item in obj:
                self._payload(item, sensor, has_sensor, received_ns, depth + 1)
            return
        else:
            self._leaf(sensor, obj, None, depth)
        rows = len(self.metric) - start
        if not rows:
            return
        if stamp is None and (stamp := self.device_ns) is None:
            stamp = received_ns
            self.batch.timestamp_fallbacks += rows
        if rows == 1:
            self.timestamp.append(stamp)
            self.sensor.append(sensor)
        else:
            self.timestamp.extend([stamp] * rows)
            self.sensor.extend([sensor] * rows)

    def _object(
        self,
        obj: dict[str, Any],
        prefix: str,
        value_name: str,
        unit: str | None,
        depth: int,
        *,
        top: bool = False,
    ) -> None:
        if depth > MAX_DEPTH:
            self.clipped = True
            return
        own = obj.get("unit")
        has_value = "value" in obj
        if type(own) is not str:
            value_unit = field_unit = unit
        elif has_value:
            value_unit, field_unit = own, unit
        else:
            value_unit = field_unit = own
        for key, item in obj.items():
            if key in RESERVED_KEYS:
                continue
            if key == "value":
                if type(item) is dict:
                    self._object(item, prefix, value_name, value_unit, depth + 1)
                else:
                    self._leaf(value_name, item, value_unit, depth)
            elif top and key == "data" and type(item) is dict:
                self._object(item, prefix, value_name, field_unit, depth + 1)
            else:
                self._leaf(prefix + key, item, field_unit, depth)

    def _leaf(self, name: str, item: Any, unit: str | None, depth: int) -> None:
        """Rows of one field; `depth` is the nesting level of the container holding it."""
        kind = type(item)
        if kind is float:
            self._add(name, item, unit, None)
        elif kind is int:
            self._add(name, _float(item), unit, None)
        elif kind is str:
            if self.numeric and item and item[0] in _NUMBER_START and _JSON_NUMBER.fullmatch(item):
                self._add(name, _float(float(item)), unit, None)
            else:
                self._add(name, _NAN, unit, item)
        elif kind is bool:
            self._add(name, 1.0 if item else 0.0, unit, None)
        elif kind is dict:
            self._object(item, name + ".", name, unit, depth + 1)
        elif kind is list:
            if depth + 1 > MAX_DEPTH:
                self.clipped = True
                return
            for index, element in enumerate(item):
                self._leaf(f"{name}.{index}", element, unit, depth + 1)
        # None (and anything JSON cannot hold) gives no row

    def _add(self, name: str, value: float, unit: str | None, text: str | None) -> None:
        if len(self.metric) >= self.limit:
            # Keep walking to count what is cut: linear in the message, already decoded.
            self.cut += 1
            self.clipped = True
            return
        self.metric.append(name)
        self.value.append(value)
        self.unit.append(unit)
        self.text.append(text)


def parse_batch(
    messages: Iterable[RawMessage],
    into: ColumnBatch | None = None,
    *,
    options: ParseOptions | None = None,
    last_payloads: dict[str, int] | None = None,
) -> ColumnBatch:
    """Parse many messages into columns; the collector's hot path.

    Never raises for any topic or payload: each message becomes one or more rows or exactly
    one reject. A `received_ns` that is not an integer within what `datetime64[ns]` holds
    is replaced by the current time. Work is linear in the size of each message.

    Args:
        messages: The messages, in arrival order.
        into: A batch to append to; a new one by default.
        options: How to read payloads; default `ParseOptions()`.
        last_payloads: Per topic, a hash of the last payload taken, kept by the caller from
            batch to batch (at most `LAST_PAYLOADS_MAX` topics). When given, a message with
            the retain flag that equals the last one on its topic becomes a
            `RejectReason.RETAINED_DUPLICATE` reject instead of rows a second time.

    Returns:
        The batch appended to.
    """
    batch = ColumnBatch() if into is None else into
    _feed_all(_Writer(batch, options or _DEFAULT_OPTIONS, last_payloads), messages)
    return batch


def _feed_all(writer: _Writer, messages: Iterable[RawMessage]) -> None:
    """Feed messages to `writer`, taking the standard shape in line.

    Most traffic is `{"value": <number>, "unit": "...", "timestamp": "...Z"}` on a topic seen
    before. Through `_Writer.feed` each such message costs ~3.2 us, most of it method calls,
    attribute lookups and the general checks; here it is ~1.8 us (orjson ~0.4 of it): one
    loop with the columns' `append`s bound once per batch. What this loop takes must give
    exactly what `_Writer.feed` gives (tests/test_parsing_fast_path.py compares the two), so
    it takes only what needs no judgment and hands the rest on: a message that is retained,
    has a topic not yet in the cache or a payload that is not bytes goes to `feed`; one whose
    decoded payload is not the standard shape goes to `take`, after the same bookkeeping.
    """
    batch = writer.batch
    feed = writer.feed
    take = writer.take
    last = writer.last_payloads
    naive = writer.options._naive
    topics = TOPIC_CACHE
    loads = _orjson_loads
    iso_seconds = ISO_SECOND_CACHE
    millis_ns = _MILLIS_NS
    add_timestamp = writer.timestamp.append
    add_received = writer.received.append
    add_device = writer.device.append
    add_sensor = writer.sensor.append
    add_metric = writer.metric.append
    add_value = writer.value.append
    add_unit = writer.unit.append
    add_text = writer.text.append
    taken = parsed = fallbacks = 0  # counted here, added to the batch once at the end
    try:
        for message in messages:
            received_ns = message.received_ns
            if type(received_ns) is not int or not _NS_MIN <= received_ns <= _NS_MAX:
                received_ns = time.time_ns()
            topic = message.topic
            payload = message.payload
            retain = message.retain
            device_ns = message.device_ns
            if device_ns is not None and type(device_ns) is int and _NS_MIN <= device_ns <= _NS_MAX:
                writer.device_ns = device_ns  # a device time outside the payload: the walk
                feed(topic, payload, received_ns, retain)
                writer.device_ns = None
                continue
            if (
                retain
                or type(payload) is not bytes
                or type(topic) is not str
                or (info := topics.get(topic)) is None
            ):
                feed(topic, payload, received_ns, retain)
                continue
            # From here on what `feed` does, in its order, for a good topic.
            taken += 1
            if last is not None:
                if len(last) >= LAST_PAYLOADS_MAX and topic not in last:
                    last.clear()  # bounded by topics, never by messages
                last[topic] = hash(payload)
            try:
                obj = loads(payload)
            except _OrjsonError:
                obj, reason, detail = read_payload_stdlib(payload)
                if reason is not None:
                    writer._reject(topic, payload, reason, detail, received_ns)
                    continue
                take(topic, payload, info, obj, received_ns, retain=retain)
                continue
            # The standard shape as `_Writer._payload` sees it: a number `value`, a
            # `timestamp` and, maybe, a `unit`; nothing else (so no `sensor_type` either).
            if (
                type(obj) is not dict
                or (type(value := obj.get("value")) is not float and type(value) is not int)
                or (raw := obj.get("timestamp")) is None
                or len(obj) != 2 + ("unit" in obj)
            ):
                take(topic, payload, info, obj, received_ns, retain=retain)
                continue
            # No `_Writer._clean` here: orjson refuses escaped lone surrogates (such payloads
            # go the `json` way, above), so what it decoded is clean UTF-8.
            unit = obj.get("unit")
            if type(unit) is not str:
                unit = None
            # `parse.timestamps`' own fast path, on its own cache, without two calls:
            # "2025-12-09T10:30:45.123Z" is the second (cached) plus the milliseconds.
            if (
                type(raw) is str
                and len(raw) == 24
                and raw[19] == "."
                and raw[23] == "Z"
                and (millis := millis_ns.get(raw[20:23])) is not None
                and (second := iso_seconds.get(raw[:19])) is not None
            ):
                stamp = second + millis
            else:
                read = timestamp_ns(raw, naive, received_ns=received_ns)
                if read is None:
                    read = received_ns
                    fallbacks += 1
                stamp = read
            parsed += 1
            add_timestamp(stamp)
            add_received(received_ns)
            add_device(info[0])
            add_sensor(info[1])
            add_metric(info[1])
            add_value(value if type(value) is float else _float(value))
            add_unit(unit)
            add_text(None)
    finally:
        batch.messages += taken
        batch.parsed_messages += parsed
        batch.timestamp_fallbacks += fallbacks
