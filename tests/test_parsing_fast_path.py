"""The in-line fast path of `parse_batch` gives exactly what the general `_Writer.feed` gives.

`parsing._feed_all` takes standard-shape messages (`{"value", "unit", "timestamp"}` on a
cached topic) without the general walk. These properties feed the same messages both ways,
the reference being `_Writer.feed` one message at a time, and compare every column bit for bit,
every reject, every counter and the retained-payload memory.
"""

from __future__ import annotations

import json
import struct
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tesaiot_data.messages import ColumnBatch, RawMessage
from tesaiot_data.parse import rows as parsing
from tesaiot_data.parse.payload import parse_topic
from tesaiot_data.parse.rows import ParseOptions, parse_batch

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RECEIVED_NS = 1_765_276_300_000_000_000
MISSING = object()  # a key left out of the payload

topics = st.sampled_from(
    [
        "device/d1/telemetry/temp",
        "device/d2/telemetry/temp",
        "device/d1/telemetry/bme280/t",
        "device/d1/telemetry",  # no sensor part: a payload's sensor_type counts
        "device/d1/telemetry/é",
        "device//telemetry/x",  # a bad topic
        "sensors/d1",
    ]
)
values = st.one_of(
    st.floats(),  # NaN and infinities too: json.dumps writes NaN and Infinity
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.integers(min_value=-(10**400), max_value=10**400),  # beyond 64 bits and float range
    st.booleans(),
    st.sampled_from(["25.5", "NaN", " 25", "-1e3", "", "text", None, MISSING]),
    st.just({"x": 1.5}),
    st.just([1, 2]),
)
units = st.one_of(
    st.sampled_from(["C", "celsius", "°C", "\ud800", "m/s\udfff", "", None, MISSING, 5, ["C"]]),
    st.text(max_size=4),
)
timestamps = st.one_of(
    # The fast path's own form, and near misses of it.
    st.builds(
        lambda second, millis, form: form.format(
            datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
            millis,
        ),
        # A few seconds again and again, so that their conversion is cached; and any other.
        st.one_of(
            st.sampled_from([1_765_276_245, 1_765_276_246, 0, -1]),
            st.integers(min_value=-(10**10), max_value=9 * 10**9),
        ),
        st.integers(min_value=0, max_value=999),
        st.sampled_from(
            [
                "{}.{:03d}Z",
                "{}.{:03d}z",
                "{}.{:03d}",
                "{}.{:03d}+07:00",
                "{}.{:04d}Z",
                "{},{:03d}Z",
                "{}Z#{:03d}",
                "{}.{:03d}Z ",
                "{}.{:03d}Z+07:00",
            ]
        ),
    ),
    st.sampled_from(
        [
            "2025-12-09T10:30:45.123Z",
            "2025-12-09T10:30:45Z",
            "2025-12-09 10:30:45.123Z",
            "2025-12-09T10:30:45.123456789Z",
            "2025-12-09T17:30:45.1+07:00",
            "2025-12-09T10:30:45.12٣Z",  # a non-ASCII digit in the milliseconds
            "2025-13-09T10:30:45.123Z",
            "2025-12-09T24:30:45.123Z",
            "   2025-12-09T10:30.123Z",
            "2262-04-11T23:47:16.999Z",  # just beyond what datetime64[ns] holds
            "1677-09-21T00:12:43.145Z",
            "1765276245123",
            "1765276245.5",
            "",
            "now",
        ]
    ),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(),
    st.booleans(),
    st.none(),
    st.just(MISSING),
    st.just({"t": 1}),
)
extras = st.dictionaries(
    st.sampled_from(["ts", "time", "sensor_type", "device_id", "x", "data", "unit2"]),
    st.one_of(st.just("DPS368"), st.just(1765276245), st.floats(), st.none()),
    max_size=2,
)


def _payload_dict(value: Any, unit: Any, stamp: Any, extra: dict[str, Any], order: int) -> Any:
    fields = [("value", value), ("unit", unit), ("timestamp", stamp)]
    fields = fields[order % 3 :] + fields[: order % 3]
    body = {key: item for key, item in fields if item is not MISSING}
    body.update(extra)
    return body


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):  # the standard shape, which the fast path takes
        value = draw(st.one_of(st.floats(), st.integers(-(2**70), 2**70)))
        body = _payload_dict(value, draw(units), draw(timestamps), {}, draw(st.integers(0, 2)))
    else:
        body = _payload_dict(
            draw(values), draw(units), draw(timestamps), draw(extras), draw(st.integers(0, 2))
        )
    how = draw(st.sampled_from(["compact", "spaced", "ascii", "utf8", "bytes"]))
    if how == "bytes":
        return draw(
            st.sampled_from([b"", b"{", b"\xff", b"25.5", b'"x"', b"[]", b"{}", b"\xef\xbb\xbf{}"])
        )
    separators = (",", ":") if how == "compact" else (", ", ": ")
    text = json.dumps(body, separators=separators, ensure_ascii=how != "utf8")
    return text.encode("utf-8", "surrogatepass")


messages = st.builds(
    RawMessage,
    topics,
    payloads(),
    st.one_of(st.just(RECEIVED_NS), st.integers(0, 2**62)),
    st.booleans(),
    st.one_of(st.none(), st.just(RECEIVED_NS - 10**9)),  # a device time from a property
)
options = st.sampled_from(
    [
        ParseOptions(),
        ParseOptions(naive_timezone="+07:00"),
        ParseOptions(numeric_strings=False),
        ParseOptions(max_rows_per_message=1),
    ]
)


def reference(
    fed: list[RawMessage], options: ParseOptions, last: dict[str, int] | None
) -> ColumnBatch:
    """The general path alone: `_Writer.feed` for every message, as before the fast path."""
    batch = ColumnBatch()
    writer = parsing._Writer(batch, options, last)
    for message in fed:
        writer.device_ns = message.device_ns  # a device time from outside the payload
        writer.feed(message.topic, message.payload, message.received_ns, message.retain)
    return batch


def snapshot(batch: ColumnBatch) -> dict[str, Any]:
    """Everything a batch holds, floats as their bits (NaN == NaN, -0.0 != 0.0)."""
    return {
        "timestamp_ns": batch.timestamp_ns,
        "received_ns": batch.received_ns,
        "device_id": batch.device_id,
        "sensor_type": batch.sensor_type,
        "metric": batch.metric,
        "value": [struct.pack("<d", value) for value in batch.value],
        "value_types": {type(value) for value in batch.value},
        "unit": batch.unit,
        "value_text": batch.value_text,
        "rejects": batch.rejects,
        "counters": (
            batch.messages,
            batch.parsed_messages,
            batch.timestamp_fallbacks,
            batch.truncated_messages,
            batch.rows_cut,
            batch.retained_messages,
        ),
    }


@FAST
@given(
    fed=st.lists(messages, max_size=12).map(lambda fed: fed + fed[: len(fed) // 2]),
    opts=options,
    remember=st.booleans(),
    warm=st.booleans(),
)
def test_a_batch_equals_the_general_path(
    fed: list[RawMessage], opts: ParseOptions, remember: bool, warm: bool
) -> None:
    # The second half repeats messages: retained redeliveries, and topics already cached.
    if warm:  # every topic cached before the batch, so even the first message may go fast
        for message in fed:
            parse_topic(message.topic)
    fast_last: dict[str, int] | None = {} if remember else None
    slow_last: dict[str, int] | None = {} if remember else None
    fast = parse_batch(fed, options=opts, last_payloads=fast_last)
    slow = reference(fed, opts, slow_last)
    assert snapshot(fast) == snapshot(slow)
    assert fast_last == slow_last


@FAST
@given(fed=st.lists(messages, min_size=1, max_size=8), opts=options)
def test_a_batch_equals_its_messages_parsed_alone(
    fed: list[RawMessage], opts: ParseOptions
) -> None:
    batch = parse_batch(fed, options=opts)
    alone = ColumnBatch()
    for message in fed:
        writer = parsing._Writer(alone, opts)
        writer.device_ns = message.device_ns
        writer.feed(message.topic, message.payload, message.received_ns, message.retain)
    assert snapshot(batch) == snapshot(alone)


def test_the_fast_path_takes_the_standard_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    # Guards the properties above: they compare the fast path only while it is taken.
    general: list[str] = []
    feed, take = parsing._Writer.feed, parsing._Writer.take

    def counted_feed(self: parsing._Writer, topic: str, *args: Any) -> None:
        general.append("feed")
        feed(self, topic, *args)

    def counted_take(self: parsing._Writer, topic: str, *args: Any, **kwargs: Any) -> None:
        general.append("take")
        take(self, topic, *args, **kwargs)

    monkeypatch.setattr(parsing._Writer, "feed", counted_feed)
    monkeypatch.setattr(parsing._Writer, "take", counted_take)
    topic = "device/fast-path-1/telemetry/temp"
    fed = [
        RawMessage(
            topic,
            json.dumps(
                {"value": 20 + i / 8, "unit": "C", "timestamp": f"2025-12-09T10:30:45.{i:03d}Z"}
            ).encode(),
            RECEIVED_NS + i,
        )
        for i in range(100)
    ]
    fed.append(RawMessage(topic, b'{"value": 1, "unit": "C", "x": 2}', RECEIVED_NS))
    batch = parse_batch(fed, last_payloads={})
    # The first sight of the topic (`feed`, which ends in `take`), then the odd shape alone.
    assert general == ["feed", "take", "take"]
    assert batch.value[:3] == [20.0, 20.125, 20.25]
    assert batch.timestamp_ns[1] == 1_765_276_245_001_000_000
    assert (batch.messages, batch.parsed_messages, len(batch)) == (101, 101, 102)
