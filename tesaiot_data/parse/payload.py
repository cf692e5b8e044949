"""Topics and bytes: a telemetry topic split into device and sensor, a payload decoded as JSON.

What the batch walker (`parse.rows`), the single-message form (`parse.single`), the client's
per-message handlers and replay share about one message before any row exists: the topic's
`device/<device_id>/telemetry[/<sensor>...]` shape and its bounded cache, the payload's JSON
(orjson first, the standard library for what orjson refuses) with the reason it could not be
read, and the keys of a payload that are never metrics.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeAlias

import orjson

from tesaiot_data.messages import RejectReason

__all__ = [
    "RESERVED_KEYS",
    "TOPIC_CACHE",
    "TOPIC_CACHE_SIZE",
    "TOPIC_HELP",
    "TopicInfo",
    "as_bytes",
    "decode_payload",
    "parse_topic",
    "read_payload",
    "read_payload_stdlib",
    "short_detail",
    "topic_info",
]

RESERVED_KEYS = frozenset(("timestamp", "ts", "time", "device_id", "sensor_type", "unit"))
"""Payload keys that are never metrics: the timestamp's three spellings and the row's labels."""
TOPIC_HELP = "expected device/<device_id>/telemetry[/<sensor>...]"
"""The detail of a `RejectReason.BAD_TOPIC` reject."""
TOPIC_CACHE_SIZE = 4096
"""Topics `topic_info` remembers; beyond it the cache starts afresh."""

TopicInfo: TypeAlias = tuple[str, str, bool]
"""(device_id, sensor_type, whether the topic has a sensor part)."""

TOPIC_CACHE: dict[str, TopicInfo | None] = {}
"""topic -> `TopicInfo`, or None for a bad topic. Filled by `topic_info`; the batch walker's
fast path reads it directly (a hit spares a call per message). Only ever cleared, never
replaced, so a name bound to it elsewhere stays the cache."""

_MAX_DETAIL = 200
_TOPIC_CACHE_MAX_LENGTH = 512  # longer topics are parsed every time rather than pinned in memory
_orjson_loads = orjson.loads
_OrjsonError = orjson.JSONDecodeError
# A run of 19 digits may be an integer beyond 64 bits (-9223372036854775809 has 19).
_LONG_DIGITS = re.compile(rb"\d{19}")


# --- topics -------------------------------------------------------------------------------


def _split_topic(topic: str) -> TopicInfo | None:
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


def topic_info(topic: str) -> TopicInfo | None:
    """Split a telemetry topic, through the bounded `TOPIC_CACHE`.

    Args:
        topic: The MQTT topic; anything that is not a str gives None.

    Returns:
        `(device_id, sensor_type, has_sensor_part)`, or None when the topic is not
        `device/<id>/telemetry[/<sensor>...]`, has an empty level, a wildcard, a NUL or a
        lone surrogate.
    """
    try:
        return TOPIC_CACHE[topic]
    except KeyError:
        pass
    except TypeError:  # not a string: unhashable
        return None
    if type(topic) is not str:
        return None
    info = _split_topic(topic)
    if len(topic) <= _TOPIC_CACHE_MAX_LENGTH:
        if len(TOPIC_CACHE) >= TOPIC_CACHE_SIZE:
            TOPIC_CACHE.clear()  # atomic, so safe to share between threads; refills in a blink
        TOPIC_CACHE[topic] = info
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
    info = topic_info(topic)
    return None if info is None else (info[0], info[1])


# --- payloads -----------------------------------------------------------------------------


def short_detail(text: str) -> str:
    """`text` cut to 200 characters (with an ellipsis), for a reject's detail."""
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def as_bytes(payload: object) -> bytes:
    """A payload that is not `bytes` as bytes: str as UTF-8 (lone surrogates kept), None empty."""
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogatepass")
    if payload is None:
        return b""
    return str(payload).encode("utf-8", "surrogatepass")


def read_payload(payload: bytes) -> tuple[Any, RejectReason | None, str]:
    """Decode a payload: `(value, None, "")`, or `(the text or bytes, reason, detail)`.

    orjson reads almost every payload, from bytes, without a separate UTF-8 decode. What it
    refuses goes to `read_payload_stdlib`, which says why (the same reasons and details as
    ever) or accepts what `json` accepts and orjson does not: NaN and Infinity, numbers
    beyond float range (they become infinities), escaped lone surrogates and a byte order
    mark.

    Args:
        payload: The raw payload.

    Returns:
        The JSON value with no reason, or what could be read with the `RejectReason` and a
        short detail.
    """
    try:
        return _orjson_loads(payload), None, ""
    except _OrjsonError:
        return read_payload_stdlib(payload)


def read_payload_stdlib(payload: bytes) -> tuple[Any, RejectReason | None, str]:
    """`read_payload` with the standard library's decoder alone: slower, and the reference.

    Args:
        payload: The raw payload.

    Returns:
        As `read_payload`.
    """
    if not payload:
        return payload, RejectReason.EMPTY, "the payload is empty"
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return payload, RejectReason.INVALID_UTF8, short_detail(str(exc))
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
    return text, RejectReason.NOT_JSON, short_detail(str(error))


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
        payload = as_bytes(payload)
    # orjson reads integers beyond 64 bits as floats; the rows do too, but a caller of this
    # may hold an id, so such payloads (rare) are read by json, which keeps them exact.
    loads = read_payload_stdlib if _LONG_DIGITS.search(payload) else read_payload
    value, reason, _ = loads(payload)
    return "" if reason is RejectReason.EMPTY and not payload else value
