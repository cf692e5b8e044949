"""Turn TESAIoT telemetry messages into rows: one row per metric, in columns ready for pandas.

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
  holds, falls back to the receive time, and the row is counted in `timestamp_fallbacks`.
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

import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any

import orjson

from tesaiot_data.errors import ConfigError
from tesaiot_data.messages import (
    MAX_REJECT_PAYLOAD,
    ColumnBatch,
    RawMessage,
    Reject,
    RejectReason,
)
from tesaiot_data.parse.timestamps import _SECONDS as _ISO_SECONDS
from tesaiot_data.parse.timestamps import MAX_TIMESTAMP_TEXT, NaiveZone, seconds_ns, timestamp_ns

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "MAX_DEPTH",
    "MAX_ROWS_PER_MESSAGE",
    "MAX_TIMESTAMP_TEXT",
    "ParseOptions",
    "ParseResult",
    "Row",
    "decode_payload",
    "parse_batch",
    "parse_message",
    "parse_topic",
]

logger = logging.getLogger(__name__)

MAX_DEPTH = 8
"""Containers (objects, arrays) nested deeper than this are dropped."""
MAX_ROWS_PER_MESSAGE = 10_000
"""Default for `ParseOptions.max_rows_per_message`: batched sensors send a few thousand."""
LAST_PAYLOADS_MAX = 100_000
"""Topics whose last payload `parse_batch` remembers for the retained check; beyond it the
memory starts afresh (a retained redelivery on a forgotten topic is then kept as a row)."""

_MAX_DETAIL = 200
_TOPIC_CACHE_MAX_LENGTH = 512  # longer topics are parsed every time rather than pinned in memory
_NAN = float("nan")
_INF = float("inf")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_SECOND = timedelta(seconds=1)
_RESERVED = frozenset(("timestamp", "ts", "time", "device_id", "sensor_type", "unit"))
_CACHE_SIZE = 4096
_NS_MIN = -(2**63) + 1  # pd.Timestamp.min; -2**63 itself is NaT
_NS_MAX = 2**63 - 1
# RFC 8259's number grammar; each step is deterministic, so matching is linear.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?", re.ASCII)
_NUMBER_START = frozenset("-0123456789")
_orjson_loads = orjson.loads
_OrjsonError = orjson.JSONDecodeError
# A run of 19 digits may be an integer beyond 64 bits (-9223372036854775809 has 19).
_LONG_DIGITS = re.compile(rb"\d{19}")
_JSON_NAMES = {dict: "object", list: "array", type(None): "null"}
# `_ISO_SECONDS` is timestamps' cache of "YYYY-MM-DDTHH:MM:SS" -> epoch ns, read by `_feed_all`
# in line to spare two calls per message; it is only ever cleared, never replaced, so the name
# bound here stays its cache.
# "000".."999" -> nanoseconds: checks and converts an ISO timestamp's milliseconds in one look-up.
_MILLIS_NS = {f"{millis:03d}": millis * 1_000_000 for millis in range(1000)}
_TOPIC_HELP = "expected device/<device_id>/telemetry[/<sensor>...]"


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


@dataclass(frozen=True, slots=True)
class Row:
    """One metric of one message.

    Args:
        timestamp: The device's timestamp, or the receive time when it had none (UTC).
        received_at: When the message arrived (UTC).
        device_id: From the topic.
        sensor_type: From the topic, or the payload's when the topic has no sensor part.
        metric: The sensor type for a single value, else the field name, dotted when nested.
        value: The number; NaN for text rows.
        unit: The unit, when the payload gives one.
        value_text: The text of a text row.
    """

    timestamp: pd.Timestamp
    received_at: pd.Timestamp
    device_id: str
    sensor_type: str
    metric: str
    value: float
    unit: str | None = None
    value_text: str | None = None


@dataclass(frozen=True, slots=True)
class ParseResult:
    """What one message became.

    Args:
        rows: The rows, in payload order; empty when the message was rejected.
        reject: The reject, or None when the message gave rows.
        timestamp_fallbacks: How many rows got the receive time as their timestamp.
    """

    rows: tuple[Row, ...]
    reject: Reject | None
    timestamp_fallbacks: int


# --- topics -------------------------------------------------------------------------------

# topic -> (device_id, sensor_type, topic has a sensor part), or None for a bad topic
_topic_cache: dict[str, tuple[str, str, bool] | None] = {}


def _split_topic(topic: str) -> tuple[str, str, bool] | None:
    levels = topic.split("/")
    if len(levels) < 3 or levels[0] != "device" or levels[2] != "telemetry":
        return None
    if "" in levels or "+" in topic or "#" in topic or "\x00" in topic:
        return None
    try:
        topic.encode("utf-8")  # lone surrogates would break Parquet later
    except UnicodeEncodeError:
        return None
    if len(levels) == 3:
        return levels[1], "default", False
    return levels[1], "/".join(levels[3:]), True


def _topic_info(topic: str) -> tuple[str, str, bool] | None:
    try:
        return _topic_cache[topic]
    except KeyError:
        pass
    except TypeError:  # not a string: unhashable
        return None
    if type(topic) is not str:
        return None
    info = _split_topic(topic)
    if len(topic) <= _TOPIC_CACHE_MAX_LENGTH:
        if len(_topic_cache) >= _CACHE_SIZE:
            _topic_cache.clear()  # atomic, so safe to share between threads; refills in a blink
        _topic_cache[topic] = info
    return info


def parse_topic(topic: str) -> tuple[str, str] | None:
    """Split a telemetry topic into device id and sensor type.

    Results are cached (a bounded cache), so calling this per message is cheap.

    Args:
        topic: For example `device/abc/telemetry/bme280` or `device/abc/telemetry`.

    Returns:
        `(device_id, sensor_type)`, where the sensor type is the levels after `telemetry`
        joined with `/`, or `"default"` when there are none; None when the topic is not
        `device/<id>/telemetry[/<sensor>...]`, has an empty level or contains a wildcard.
    """
    info = _topic_info(topic)
    return None if info is None else (info[0], info[1])


# --- payloads -----------------------------------------------------------------------------


def _short(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def _as_bytes(payload: object) -> bytes:
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogatepass")
    if payload is None:
        return b""
    return str(payload).encode("utf-8", "surrogatepass")


def _loads(payload: bytes) -> tuple[Any, RejectReason | None, str]:
    """Decode a payload: (value, None, "") or (the text or bytes, reason, detail).

    orjson reads almost every payload, from bytes, without a separate UTF-8 decode. What it
    refuses goes to `_loads_json`, which says why (the same reasons and details as ever) or
    accepts what `json` accepts and orjson does not: NaN and Infinity, numbers beyond float
    range (they become infinities), escaped lone surrogates and a byte order mark.
    """
    try:
        return _orjson_loads(payload), None, ""
    except _OrjsonError:
        return _loads_json(payload)


def _loads_json(payload: bytes) -> tuple[Any, RejectReason | None, str]:
    """`_loads` with the standard library's decoder alone: slower, and the reference."""
    if not payload:
        return payload, RejectReason.EMPTY, "the payload is empty"
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return payload, RejectReason.INVALID_UTF8, _short(str(exc))
    try:
        return json.loads(text), None, ""
    except RecursionError:
        return text, RejectReason.NOT_JSON, "JSON nested too deeply to decode"
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        error = exc
    if not text.strip():
        return text, RejectReason.EMPTY, "the payload is only whitespace"
    if text[0] == "\ufeff":  # some devices prefix a byte order mark
        try:
            return json.loads(text[1:]), None, ""
        except (ValueError, RecursionError):
            pass
    return text, RejectReason.NOT_JSON, _short(str(error))


def decode_payload(payload: bytes) -> Any:
    """Decode a payload for per-message use, keeping whatever cannot be decoded.

    Args:
        payload: The raw payload.

    Returns:
        The JSON value; the text (str) when the payload is UTF-8 but not JSON (an empty
        payload gives `""`); the bytes themselves when it is not UTF-8. Integers of any
        size stay exact integers.
    """
    if type(payload) is not bytes:
        payload = _as_bytes(payload)
    # orjson reads integers beyond 64 bits as floats; the rows do too, but a caller of this
    # may hold an id, so such payloads (rare) are read by json, which keeps them exact.
    loads = _loads_json if _LONG_DIGITS.search(payload) else _loads
    value, reason, _ = loads(payload)
    return "" if reason is RejectReason.EMPTY and not payload else value


def _clean_text(text: str | None) -> str | None:
    if text is None:
        return None
    return text.encode("utf-8", "replace").decode("utf-8")


def _float(number: float) -> float:
    try:
        return float(number)
    except OverflowError:  # an integer beyond float range, like 1e400 becomes inf
        return _INF if number > 0 else -_INF


# --- the one code path for batch and single messages --------------------------------------


class _Writer:
    """Appends messages to a ColumnBatch; holds its lists to spare attribute lookups."""

    __slots__ = (
        "batch",
        "clipped",
        "cut",
        "device",
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

    def feed(self, topic: str, payload: bytes, received_ns: int, retain: bool) -> None:
        batch = self.batch
        batch.messages += 1
        if type(payload) is not bytes:
            payload = _as_bytes(payload)
        info = _topic_info(topic)
        if info is None:
            self._reject(topic, payload, RejectReason.BAD_TOPIC, _TOPIC_HELP, received_ns)
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
        obj, reason, detail = _loads(payload)
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
            detail = _short(f"internal error: {exc!r}")
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
                stamp = timestamp_ns(raw, self.options._naive)
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
        if stamp is None:
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
            if key in _RESERVED:
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
    topics = _topic_cache
    loads = _orjson_loads
    iso_seconds = _ISO_SECONDS
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
                obj, reason, detail = _loads_json(payload)
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
            # `timestamps._text_ns`'s own fast path, on its own cache, without two calls:
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
                read = timestamp_ns(raw, naive)
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


def _received_ns(received_at: float | datetime | pd.Timestamp) -> int:
    import pandas as pd  # noqa: PLC0415  (parse_batch, the hot path, needs no pandas)

    ns: int | None
    if isinstance(received_at, pd.Timestamp):
        stamp = received_at if received_at.tz is not None else received_at.tz_localize("UTC")
        ns = stamp.value
    elif isinstance(received_at, datetime):
        if received_at is pd.NaT:  # a datetime subclass, but no time at all
            ns = None
        else:
            aware = received_at
            if aware.tzinfo is None or aware.utcoffset() is None:
                aware = aware.replace(tzinfo=timezone.utc)
            ns = seconds_ns((aware - _EPOCH) / _ONE_SECOND)
    elif isinstance(received_at, (int, float)) and not isinstance(received_at, bool):
        ns = seconds_ns(received_at)
    else:
        raise TypeError(
            f"received_at must be epoch seconds, a datetime or a pandas Timestamp, "
            f"not {type(received_at).__name__}"
        )
    return time.time_ns() if ns is None else ns


def parse_message(
    topic: str,
    payload: bytes,
    received_at: float | datetime | pd.Timestamp,
    *,
    options: ParseOptions | None = None,
) -> ParseResult:
    """Parse one message into rows, on the same code path as `parse_batch`.

    Args:
        topic: The MQTT topic.
        payload: The raw payload.
        received_at: When it arrived: epoch seconds, a datetime or a pandas Timestamp; naive
            ones are UTC. NaN, infinite or out-of-range values are replaced by the current
            time.
        options: How to read payloads; default `ParseOptions()`.

    Returns:
        The rows, or the reject.

    Raises:
        TypeError: `received_at` is not a number, datetime or Timestamp.
    """
    import pandas as pd  # noqa: PLC0415  (parse_batch, the hot path, needs no pandas)

    received_ns = _received_ns(received_at)
    batch = ColumnBatch()
    _Writer(batch, options or _DEFAULT_OPTIONS).feed(topic, payload, received_ns, False)
    if batch.rejects:
        return ParseResult(rows=(), reject=batch.rejects[0], timestamp_fallbacks=0)
    received = pd.Timestamp(received_ns, unit="ns", tz="UTC")
    stamps: dict[int, pd.Timestamp] = {received_ns: received}
    rows = []
    for i, ns in enumerate(batch.timestamp_ns):
        stamp = stamps.get(ns)
        if stamp is None:
            stamp = stamps[ns] = pd.Timestamp(ns, unit="ns", tz="UTC")
        rows.append(
            Row(
                timestamp=stamp,
                received_at=received,
                device_id=batch.device_id[i],
                sensor_type=batch.sensor_type[i],
                metric=batch.metric[i],
                value=batch.value[i],
                unit=batch.unit[i],
                value_text=batch.value_text[i],
            )
        )
    return ParseResult(rows=tuple(rows), reject=None, timestamp_fallbacks=batch.timestamp_fallbacks)
