"""Property tests of tesaiot_data.parse: any topic and any bytes, and the invariants hold."""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tesaiot_data.messages import MAX_REJECT_PAYLOAD, ColumnBatch, RawMessage
from tesaiot_data.parse import payload as parse_payload
from tesaiot_data.parse.payload import decode_payload
from tesaiot_data.parse.rows import MAX_ROWS_PER_MESSAGE, parse_batch
from tesaiot_data.parse.single import parse_message

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
NS_MAX = 2**63 - 1

levels = st.text(st.characters(blacklist_characters="/"), max_size=8)
topics = st.one_of(
    st.text(max_size=40),
    st.builds(lambda device: f"device/{device}/telemetry", levels),
    st.builds(lambda d, s: f"device/{d}/telemetry/{s}", levels, levels),
    st.sampled_from(["device/dev-1/telemetry", "device/dev-1/telemetry/bme280/t"]),
)
keys = st.one_of(
    st.sampled_from(["value", "unit", "data", "timestamp", "ts", "time", "sensor_type", "x"]),
    st.text(max_size=6),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),  # NaN and infinities too: json.dumps writes them as NaN/Infinity
    st.text(max_size=12),
    st.sampled_from(["2025-12-09T10:30:45Z", "1765276245123", "2025-12-09T17:30:45.1+07:00"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=40,
)
payloads = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda value: json.dumps(value).encode(), json_values),
    st.builds(lambda text: text.encode("utf-8", "surrogatepass"), st.text(max_size=60)),
    st.builds(lambda size: b"[" * size, st.integers(0, 3000)),
    st.builds(lambda size: b'"' + b"x" * size + b'"', st.integers(0, 9000)),
)
received = st.one_of(
    st.integers(min_value=0, max_value=4 * 10**18),  # epoch ns, as time.time_ns() gives
    st.integers(),  # beyond datetime64[ns] too: replaced by now
    st.floats(),  # not an integer at all: replaced by now
)
# A device time from outside the payload (an MQTT 5 user property), mostly absent.
device_times = st.one_of(st.none(), st.none(), received)
messages = st.builds(RawMessage, topics, payloads, received, st.booleans(), device_times)


def check_invariants(batch: ColumnBatch, fed: list[RawMessage]) -> None:
    rows = len(batch)
    assert len(batch.timestamp_ns) == len(batch.received_ns) == len(batch.device_id) == rows
    assert len(batch.sensor_type) == len(batch.metric) == len(batch.value) == rows
    assert len(batch.unit) == len(batch.value_text) == rows
    assert batch.messages == len(fed) == batch.parsed_messages + len(batch.rejects)
    assert rows >= batch.parsed_messages
    assert rows <= batch.parsed_messages * MAX_ROWS_PER_MESSAGE
    assert 0 <= batch.timestamp_fallbacks <= rows
    assert 0 <= batch.truncated_messages <= batch.parsed_messages
    for ns in (*batch.timestamp_ns, *batch.received_ns):
        assert type(ns) is int
        assert -NS_MAX <= ns <= NS_MAX
    for value, text in zip(batch.value, batch.value_text, strict=True):
        assert type(value) is float
        assert text is None or (type(text) is str and math.isnan(value))
    for column in (batch.device_id, batch.sensor_type, batch.metric, batch.unit, batch.value_text):
        for text in column:
            if text is not None:
                assert type(text) is str
                text.encode("utf-8")  # strict: no lone surrogates reach Parquet
    kept = {(message.payload[:MAX_REJECT_PAYLOAD], len(message.payload)) for message in fed}
    for reject in batch.rejects:
        assert len(reject.payload) <= MAX_REJECT_PAYLOAD
        assert (reject.payload, reject.payload_size) in kept
        assert isinstance(reject.detail, str)
        assert reject.detail


@FAST
@given(st.lists(messages, max_size=8))
def test_parse_batch_never_raises_and_keeps_its_invariants(fed: list[RawMessage]) -> None:
    check_invariants(parse_batch(fed), fed)


@FAST
@given(messages)
def test_parse_message_agrees_with_parse_batch(message: RawMessage) -> None:
    message = message._replace(device_ns=None)  # parse_message takes no device time
    received = message.received_ns
    if type(received) is not int or abs(received) > 9 * 10**18:
        return  # an unusable receive time becomes "now", which differs between two calls
    result = parse_message(message.topic, message.payload, pd.Timestamp(received, tz="UTC"))
    batch = parse_batch([message])
    check_invariants(batch, [message])
    assert result.reject == (batch.rejects[0] if batch.rejects else None)
    assert result.timestamp_fallbacks == batch.timestamp_fallbacks
    assert [row.timestamp.value for row in result.rows] == batch.timestamp_ns
    assert [row.received_at.value for row in result.rows] == batch.received_ns
    assert [row.metric for row in result.rows] == batch.metric
    assert repr([row.value for row in result.rows]) == repr(batch.value)
    assert [row.value_text for row in result.rows] == batch.value_text


@FAST
@given(json_values)
def test_decode_payload_returns_the_json_value(value: Any) -> None:
    decoded = decode_payload(json.dumps(value).encode())
    assert repr(decoded) == repr(json.loads(json.dumps(value)))


@FAST
@given(payloads)
def test_decode_payload_never_raises(payload: bytes) -> None:
    decoded = decode_payload(payload)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        assert decoded == payload
    else:
        assert not isinstance(decoded, bytes)
        if isinstance(decoded, str) and decoded == text:
            return  # not JSON, or the JSON string equal to its own text
        assert repr(decoded) == repr(json.loads(text.lstrip("\ufeff")))


zones = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
moments = st.datetimes(min_value=datetime(1700, 1, 1), max_value=datetime(2260, 1, 1))


@FAST
@given(moments, zones, st.integers(0, 999), st.floats(-1e6, 1e6, allow_nan=False))
def test_iso_timestamps_convert_exactly(
    moment: datetime, zone: timezone, nanos: int, value: float
) -> None:
    aware = moment.replace(tzinfo=zone)
    text = aware.isoformat(timespec="microseconds")
    # put three more digits after the microseconds: nanosecond resolution
    text = text[:26] + f"{nanos:03d}" + text[26:]
    expected = (aware - EPOCH) // timedelta(microseconds=1) * 1000 + nanos
    payload = json.dumps({"value": value, "unit": "u", "timestamp": text}).encode()
    batch = parse_batch([RawMessage("device/d/telemetry/s", payload, 10**9)])
    assert batch.timestamp_ns == [expected]
    assert batch.value == [value]
    assert batch.timestamp_fallbacks == 0


epoch_ns = st.integers(min_value=10**17, max_value=NS_MAX - 10**9)  # 1973 .. 2262


@FAST
@given(epoch_ns, st.sampled_from([10**9, 10**6, 10**3, 1]), st.booleans())
def test_epoch_numbers_pick_their_unit_by_magnitude(ns: int, per_unit: int, as_text: bool) -> None:
    number = ns // per_unit
    raw: Any = str(number) if as_text else number
    payload = json.dumps({"timestamp": raw, "v": 1}).encode()
    batch = parse_batch([RawMessage("device/d/telemetry", payload, 10**9)])
    assert batch.timestamp_ns == [number * per_unit]
    assert batch.timestamp_fallbacks == 0


MEGABYTE = 1_000_000


def _one_megabyte_messages(char: str) -> list[RawMessage]:
    text = char * MEGABYTE
    quoted = json.dumps(text)
    return [
        RawMessage("device/d/telemetry/s", text.encode("utf-8", "surrogatepass"), 10**9),
        RawMessage("device/d/telemetry/s", b'{"timestamp": %s, "v": 1}' % quoted.encode(), 10**9),
        RawMessage("device/d/telemetry/s", b'{"v": %s}' % quoted.encode(), 10**9),
        RawMessage("device/d/telemetry/s", b'{"%s": 1}' % quoted[1:-1].encode(), 10**9),
        RawMessage(f"device/{text}/telemetry/s", b"1", 10**9),
    ]


@given(st.characters())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_megabyte_of_one_repeated_character_parses_in_linear_time(char: str) -> None:
    # Issue: 60,000 digits in a timestamp took 18 s (a backtracking pattern) and froze the
    # process past its keepalive. Quadratic work on 1 MB would take hours; linear takes ms.
    messages = _one_megabyte_messages(char)
    started = time.perf_counter()
    batch = parse_batch(messages)
    elapsed = time.perf_counter() - started
    assert batch.messages == len(messages)
    assert elapsed < 1.0, f"{elapsed:.2f} s for {char!r}"


def same_json(fast: Any, reference: Any) -> bool:
    """Whether orjson's value equals json's: NaN as NaN, integers beyond 64 bits as floats."""
    if type(reference) is int and type(fast) is float:
        return not -(2**63) <= reference < 2**64 and fast == float(reference)
    if type(reference) is float and math.isnan(reference):
        return type(fast) is float and math.isnan(fast)
    if type(reference) is list:
        return (
            type(fast) is list
            and len(fast) == len(reference)
            and all(same_json(a, b) for a, b in zip(fast, reference, strict=True))
        )
    if type(reference) is dict:
        return (
            type(fast) is dict
            and list(fast) == list(reference)
            and all(same_json(fast[key], reference[key]) for key in reference)
        )
    return type(fast) is type(reference) and fast == reference


@FAST
@given(st.one_of(payloads, st.builds(lambda value: json.dumps(value).encode(), scalars)))
def test_orjson_first_decodes_as_json_alone_did(payload: bytes) -> None:
    value, reason, detail = parse_payload.read_payload(payload)
    ref_value, ref_reason, ref_detail = parse_payload.read_payload_stdlib(payload)
    assert (reason, detail) == (ref_reason, ref_detail)
    assert same_json(value, ref_value)
