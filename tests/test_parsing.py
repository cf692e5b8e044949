"""Unit tests of tesaiot_data.parse: payload shapes, timestamps, topics, rejects and caps."""

from __future__ import annotations

import json
import math
import time
from dataclasses import fields
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import pandas as pd
import pytest

from tesaiot_data.messages import MAX_REJECT_PAYLOAD, ColumnBatch, RawMessage, Reject, RejectReason
from tesaiot_data.parse import payload as parse_payload
from tesaiot_data.parse import rows as parsing
from tesaiot_data.parse.payload import decode_payload, parse_topic
from tesaiot_data.parse.rows import (
    MAX_DEPTH,
    MAX_ROWS_PER_MESSAGE,
    MAX_TIMESTAMP_TEXT,
    ParseOptions,
    parse_batch,
)
from tesaiot_data.parse.single import ParseResult, Row, parse_message

S = 1_000_000_000  # nanoseconds per second
T0 = 1_765_276_245 * S  # 2025-12-09T10:30:45Z
ISO0 = "2025-12-09T10:30:45Z"
RECEIVED = 1_765_276_300.5  # 2025-12-09T10:31:40.5Z, when the test messages "arrived"
RECEIVED_NS = 1_765_276_300_500_000_000
TOPIC = "device/dev-1/telemetry/temperature"
# (metric, value, unit, value_text) of one parsed row
MetricRow = tuple[str, Any, str | None, str | None]
NAN = "NaN"  # stands for a NaN value in expected rows, since NaN != NaN


def encode(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


def batch_of(
    *messages: tuple[str, Any], received_ns: Any = RECEIVED_NS, options: ParseOptions | None = None
) -> ColumnBatch:
    return parse_batch(
        (RawMessage(topic, encode(body), received_ns) for topic, body in messages), options=options
    )


def columns(batch: ColumnBatch) -> list[list[Any]]:
    return [
        batch.timestamp_ns,
        batch.received_ns,
        batch.device_id,
        batch.sensor_type,
        batch.metric,
        batch.value,
        batch.unit,
        batch.value_text,
    ]


def metrics(payload: Any, topic: str = TOPIC) -> list[MetricRow]:
    """(metric, value, unit, value_text) of each row of one message that must parse."""
    batch = batch_of((topic, payload))
    assert batch.rejects == [], batch.rejects
    assert batch.parsed_messages == 1
    assert all(type(value) is float for value in batch.value)
    return [
        (metric, NAN if math.isnan(value) else value, unit, text)
        for metric, value, unit, text in zip(
            batch.metric, batch.value, batch.unit, batch.value_text, strict=True
        )
    ]


def only_reject(topic: str, payload: bytes) -> Reject:
    batch = parse_batch([RawMessage(topic, payload, RECEIVED_NS)])
    assert len(batch) == 0
    assert batch.messages == 1
    assert batch.parsed_messages == 0
    assert len(batch.rejects) == 1
    return batch.rejects[0]


def stamp_of(payload: dict[str, Any]) -> tuple[int, int]:
    """(timestamp_ns of the first row, timestamp_fallbacks) for a payload with one metric."""
    batch = batch_of((TOPIC, payload))
    assert batch.rejects == []
    return batch.timestamp_ns[0], batch.timestamp_fallbacks


def test_time_constants_agree_with_the_standard_library() -> None:
    utc = timezone.utc
    assert datetime(2025, 12, 9, 10, 30, 45, tzinfo=utc).timestamp() * S == T0
    assert datetime(2025, 12, 9, 10, 31, 40, 500000, tzinfo=utc).timestamp() == RECEIVED
    assert round(RECEIVED * 1e6) * 1000 == RECEIVED_NS


# --- the standard shape ---------------------------------------------------------------------


def test_standard_shape_gives_one_exact_row() -> None:
    payload = {"value": 25.5, "unit": "celsius", "timestamp": "2025-12-09T10:30:45.000Z"}
    batch = batch_of((TOPIC, payload))
    assert columns(batch) == [
        [T0],
        [RECEIVED_NS],
        ["dev-1"],
        ["temperature"],
        ["temperature"],
        [25.5],
        ["celsius"],
        [None],
    ]
    assert type(batch.timestamp_ns[0]) is int
    assert type(batch.received_ns[0]) is int
    assert type(batch.value[0]) is float
    assert len(batch) == 1
    assert (batch.messages, batch.parsed_messages, batch.timestamp_fallbacks) == (1, 1, 0)
    assert (batch.rejects, batch.truncated_messages) == ([], 0)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param({"value": 25}, [("temperature", 25.0, None, None)], id="int"),
        pytest.param({"value": -0.5, "unit": 7}, [("temperature", -0.5, None, None)], id="unit"),
        pytest.param({"unit": "celsius", "value": 1}, [("temperature", 1.0, "celsius", None)]),
        pytest.param({"value": True, "unit": "on"}, [("temperature", 1.0, "on", None)], id="bool"),
        pytest.param({"value": False}, [("temperature", 0.0, None, None)], id="false"),
        pytest.param(
            {"value": "warm", "unit": "state"}, [("temperature", NAN, "state", "warm")], id="text"
        ),
        pytest.param(
            {"value": {"x": 1, "y": -2.5}, "unit": "g"},
            [("x", 1.0, "g", None), ("y", -2.5, "g", None)],
            id="object",
        ),
        pytest.param(
            {"value": [20, 21.5]},
            [("temperature.0", 20.0, None, None), ("temperature.1", 21.5, None, None)],
            id="list",
        ),
        pytest.param(
            {"value": 25.5, "unit": "celsius", "battery": 3.7},
            [("temperature", 25.5, "celsius", None), ("battery", 3.7, None, None)],
            id="extra-field",
        ),
        pytest.param(
            {"value": 25.5, "unit": "celsius", "sensor_type": "other", "device_id": "x"},
            [("temperature", 25.5, "celsius", None)],
            id="reserved-keys",
        ),
        pytest.param({"value": 1e300}, [("temperature", 1e300, None, None)], id="big"),
    ],
)
def test_standard_shape_variants(payload: dict[str, Any], expected: list[MetricRow]) -> None:
    assert metrics(payload) == expected


def test_the_fast_path_and_the_general_walk_agree() -> None:
    fast = {"value": 25.5, "unit": "celsius", "timestamp": ISO0}
    walked = {"value": 25.5, "unit": "celsius", "timestamp": ISO0, "quality": None}
    assert columns(batch_of((TOPIC, fast))) == columns(batch_of((TOPIC, walked)))


# --- the flat and nested shapes -------------------------------------------------------------


def test_flat_shape_gives_a_row_per_field_in_payload_order() -> None:
    payload = {"timestamp": ISO0, "temperature": 25.1, "humidity": 60, "battery": 3.7}
    batch = batch_of(("device/env-7/telemetry/bme280", payload))
    assert columns(batch) == [
        [T0] * 3,
        [RECEIVED_NS] * 3,
        ["env-7"] * 3,
        ["bme280"] * 3,
        ["temperature", "humidity", "battery"],
        [25.1, 60.0, 3.7],
        [None] * 3,
        [None] * 3,
    ]
    assert batch.timestamp_fallbacks == 0


def test_reserved_keys_are_never_metrics_and_a_lone_unit_applies_to_all_fields() -> None:
    payload = {
        "ts": 1,
        "time": 2,
        "device_id": "someone-else",
        "sensor_type": "other",
        "unit": "celsius",
        "inside": 21,
        "outside": 4.5,
    }
    assert metrics(payload) == [
        ("inside", 21.0, "celsius", None),
        ("outside", 4.5, "celsius", None),
    ]


def test_nested_shape_on_a_topic_without_sensor_takes_the_payloads_sensor_type() -> None:
    payload = {
        "timestamp": ISO0,
        "device_id": "not-this-one",
        "sensor_type": "DPS368",
        "data": {"pressure": 1013.2, "temperature": 24.9},
    }
    batch = batch_of(("device/dev-9/telemetry", payload))
    assert columns(batch) == [
        [T0] * 2,
        [RECEIVED_NS] * 2,
        ["dev-9"] * 2,
        ["DPS368"] * 2,
        ["pressure", "temperature"],
        [1013.2, 24.9],
        [None] * 2,
        [None] * 2,
    ]


@pytest.mark.parametrize(
    ("topic", "payload", "sensor"),
    [
        pytest.param("device/d/telemetry/baro", {"sensor_type": "DPS368"}, "baro", id="suffix"),
        pytest.param("device/d/telemetry/default", {"sensor_type": "X"}, "default", id="explicit"),
        pytest.param("device/d/telemetry", {}, "default", id="none"),
        pytest.param("device/d/telemetry", {"sensor_type": ""}, "default", id="empty"),
        pytest.param("device/d/telemetry", {"sensor_type": 5}, "default", id="number"),
        pytest.param("device/d/telemetry", {"sensor_type": "a/b"}, "a/b", id="slash"),
    ],
)
def test_sensor_type_comes_from_the_topic_unless_it_has_no_sensor_part(
    topic: str, payload: dict[str, Any], sensor: str
) -> None:
    batch = batch_of((topic, {**payload, "data": {"pressure": 1}}))
    assert batch.sensor_type == [sensor]
    assert batch.metric == ["pressure"]
    assert batch.device_id == ["d"]


def test_nested_objects_give_dotted_metrics_and_value_unit_leaves() -> None:
    payload = {
        "data": {
            "accel": {"x": 1, "y": -2.5, "z": {"raw": 3}},
            "temp": {"value": 24.9, "unit": "celsius"},
            "gyro": {"x": 0.5, "unit": "dps"},
            "humidity": {"value": 60, "unit": "%", "quality": "good"},
        }
    }
    assert metrics(payload, "device/d/telemetry/imu") == [
        ("accel.x", 1.0, None, None),
        ("accel.y", -2.5, None, None),
        ("accel.z.raw", 3.0, None, None),
        ("temp", 24.9, "celsius", None),
        ("gyro.x", 0.5, "dps", None),
        ("humidity", 60.0, "%", None),
        ("humidity.quality", NAN, None, "good"),
    ]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param({"data": 5}, [("data", 5.0, None, None)], id="number"),
        pytest.param(
            {"data": [1, 2]}, [("data.0", 1.0, None, None), ("data.1", 2.0, None, None)], id="list"
        ),
        pytest.param({"data": {"value": 7}}, [("temperature", 7.0, None, None)], id="value"),
        pytest.param(
            {"a": {"data": {"b": 1}}}, [("a.data.b", 1.0, None, None)], id="only-at-the-top"
        ),
        pytest.param(
            {"data": {"x": 1}, "battery": 3.7},
            [("x", 1.0, None, None), ("battery", 3.7, None, None)],
            id="beside-fields",
        ),
        pytest.param(
            {"unit": "g", "data": {"x": 1, "m": {"y": 2, "unit": "mg"}}},
            [("x", 1.0, "g", None), ("m.y", 2.0, "mg", None)],
            id="inherited-unit",
        ),
        pytest.param(
            {"data": {"v": {"value": {"a": 1}, "unit": "V"}}},
            [("v.a", 1.0, "V", None)],
            id="value-object-in-object",
        ),
    ],
)
def test_data_and_unit_rules(payload: dict[str, Any], expected: list[MetricRow]) -> None:
    assert metrics(payload) == expected


# --- fields of every kind -------------------------------------------------------------------


def test_booleans_texts_nulls_and_lists() -> None:
    payload = {
        "ok": True,
        "bad": False,
        "ai_prediction": "normal",
        "missing": None,
        "samples": [1, 2.5, None, "x", True],
        "matrix": [[1, 2], [3]],
        "points": [{"x": 1}, {"x": 2, "note": None}],
        "empty": [],
        "nothing": {},
    }
    assert metrics(payload) == [
        ("ok", 1.0, None, None),
        ("bad", 0.0, None, None),
        ("ai_prediction", NAN, None, "normal"),
        ("samples.0", 1.0, None, None),
        ("samples.1", 2.5, None, None),
        ("samples.3", NAN, None, "x"),
        ("samples.4", 1.0, None, None),
        ("matrix.0.0", 1.0, None, None),
        ("matrix.0.1", 2.0, None, None),
        ("matrix.1.0", 3.0, None, None),
        ("points.0.x", 1.0, None, None),
        ("points.1.x", 2.0, None, None),
    ]


@pytest.mark.parametrize(
    ("text", "number"),
    [("25.5", 25.5), ("-3", -3.0), ("0", 0.0), ("1e3", 1000.0), ("-0.5E-2", -0.005)],
)
def test_strings_that_are_json_numbers_are_numbers(text: str, number: float) -> None:
    assert metrics({"temperature": text}) == [("temperature", number, None, None)]
    assert metrics({"value": text, "unit": "celsius"}) == [("temperature", number, "celsius", None)]
    assert metrics(text) == [("temperature", number, None, None)]  # a bare JSON string


@pytest.mark.parametrize(
    "text", ["25.5 ", " 25", "+1", "0012", "1.", ".5", "NaN", "Infinity", "0x1f", "1_000", "25,5"]
)
def test_strings_that_are_not_exactly_json_numbers_stay_text(text: str) -> None:
    assert metrics({"level": text}) == [("level", NAN, None, text)]


def test_numeric_strings_can_stay_text() -> None:
    batch = batch_of((TOPIC, {"level": "25.5"}), options=ParseOptions(numeric_strings=False))
    assert (batch.value_text, math.isnan(batch.value[0])) == (["25.5"], True)


def test_nan_infinity_and_huge_numbers_are_kept_as_floats() -> None:
    payload = b'{"a": NaN, "b": Infinity, "c": -Infinity, "d": 1e400, "e": 1%s, "f": -1%s}' % (
        b"0" * 400,
        b"0" * 400,
    )
    assert metrics(payload) == [
        ("a", NAN, None, None),
        ("b", math.inf, None, None),
        ("c", -math.inf, None, None),
        ("d", math.inf, None, None),
        ("e", math.inf, None, None),
        ("f", -math.inf, None, None),
    ]


def test_escaped_lone_surrogates_are_replaced_so_the_text_stays_utf8() -> None:
    payload = b'{"\\udc00k": "\\ud800x", "smile": "\\ud83d\\ude00"}'
    assert metrics(payload) == [("?k", NAN, None, "?x"), ("smile", NAN, None, "\U0001f600")]


def test_a_byte_order_mark_is_skipped() -> None:
    assert metrics(b'\xef\xbb\xbf{"value": 1}') == [("temperature", 1.0, None, None)]


# --- orjson first, json for what orjson refuses ---------------------------------------------


def nested_list(levels: int, inner: bytes = b"1") -> bytes:
    return b"[" * levels + inner + b"]" * levels


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"a": NaN, "b": -Infinity}', id="nan-infinity"),
        pytest.param(b'{"a": 1e400}', id="float-beyond-range"),
        pytest.param(b'{"a": 1%s}' % (b"0" * 400), id="integer-beyond-float-range"),
        pytest.param(b'{"a": 18446744073709551616, "b": -9223372036854775809}', id="int-65-bits"),
        pytest.param(b'{"\\udc00k": "\\ud800x"}', id="lone-surrogate-escapes"),
        pytest.param(b'\xef\xbb\xbf{"value": 1}', id="byte-order-mark"),
        pytest.param(b'{"x": 1, "d": %s}' % nested_list(900), id="nested-900"),
    ],
)
def test_payloads_orjson_refuses_or_reads_differently_give_the_rows_json_gives(
    payload: bytes,
) -> None:
    assert parsing._orjson_loads is not json.loads  # the fast path is really orjson
    value, reason, detail = parse_payload.read_payload_stdlib(payload)
    assert (reason, detail) == (None, "")
    assert repr(columns(batch_of((TOPIC, payload)))) == repr(
        columns(batch_of((TOPIC, json.dumps(value, allow_nan=True).encode())))
    )


def test_integers_beyond_64_bits_give_the_nearest_float() -> None:
    payload = b'{"a": 18446744073709551617, "b": -9223372036854775809, "c": %s}' % (b"9" * 300)
    assert metrics(payload) == [
        ("a", float(2**64 + 1), None, None),
        ("b", float(-(2**63) - 1), None, None),
        ("c", float(10**300 - 1), None, None),
    ]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"[18446744073709551616, -9223372036854775809]", [2**64, -(2**63) - 1]),
        (b'{"id": 123456789012345678901234567890}', {"id": 123456789012345678901234567890}),
        (b"9223372036854775807", 2**63 - 1),
    ],
)
def test_decode_payload_keeps_integers_of_any_size_exact(payload: bytes, expected: Any) -> None:
    assert decode_payload(payload) == expected
    assert repr(decode_payload(payload)) == repr(expected)  # ints, not floats


@pytest.mark.parametrize("levels", [1_100, 5_000])
def test_json_nested_beyond_what_the_decoders_take_is_not_json(levels: int) -> None:
    reject = only_reject(TOPIC, nested_list(levels))
    assert reject.reason is RejectReason.NOT_JSON
    assert reject.detail == "JSON nested too deeply to decode"


def test_json_nested_deeply_but_within_orjsons_limit_keeps_its_shallow_fields() -> None:
    # json gave up near 1,000 levels (Python's recursion limit); orjson reads 1,024.
    batch = batch_of((TOPIC, b'{"x": 1, "deep": %s}' % nested_list(1_000)))
    assert (batch.metric, batch.truncated_messages) == (["x"], 1)


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        (b"", RejectReason.EMPTY, "the payload is empty"),
        (b" \t\r\n", RejectReason.EMPTY, "the payload is only whitespace"),
        (b"\x0c", RejectReason.EMPTY, "the payload is only whitespace"),  # str.strip's space
        (b'{"value": 1', RejectReason.NOT_JSON, "Expecting ',' delimiter: line 1 column 12"),
        (b"\xef\xbb\xbf{", RejectReason.NOT_JSON, "Unexpected UTF-8 BOM"),
        (b"hello", RejectReason.NOT_JSON, "Expecting value: line 1 column 1 (char 0)"),
        (b"\xff", RejectReason.INVALID_UTF8, "'utf-8' codec can't decode byte 0xff"),
        (b'"\xed\xa0\x80"', RejectReason.INVALID_UTF8, "'utf-8' codec can't decode byte 0xed"),
    ],
)
def test_rejects_keep_the_reasons_and_details_of_json(
    payload: bytes, reason: RejectReason, detail: str
) -> None:
    reject = only_reject(TOPIC, payload)
    assert reject.reason is reason
    assert reject.detail.startswith(detail)
    assert parse_payload.read_payload(payload)[1:] == parse_payload.read_payload_stdlib(payload)[1:]


# --- bare values and arrays -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param(b"25.5", [("temperature", 25.5, None, None)], id="number"),
        pytest.param(b"-3", [("temperature", -3.0, None, None)], id="int"),
        pytest.param(b'"normal"', [("temperature", NAN, None, "normal")], id="string"),
        pytest.param(b"true", [("temperature", 1.0, None, None)], id="bool"),
        pytest.param(
            b'[1, "a", null, [2], {"value": 3, "unit": "c"}, {"x": 4}]',
            [
                ("temperature", 1.0, None, None),
                ("temperature", NAN, None, "a"),
                ("temperature", 2.0, None, None),
                ("temperature", 3.0, "c", None),
                ("x", 4.0, None, None),
            ],
            id="array",
        ),
    ],
)
def test_bare_values_and_arrays(payload: bytes, expected: list[MetricRow]) -> None:
    assert metrics(payload) == expected


def test_bare_values_take_the_receive_time() -> None:
    batch = batch_of((TOPIC, b"25.5"))
    assert batch.timestamp_ns == [RECEIVED_NS]
    assert batch.timestamp_fallbacks == 1


def test_array_elements_have_their_own_timestamps_and_sensor_types() -> None:
    payload = [
        {"value": 1, "timestamp": ISO0},
        {"value": 2, "timestamp": "2025-12-09T10:30:46Z", "sensor_type": "B"},
        {"a": 3, "b": 4},
        5,
    ]
    batch = batch_of(("device/d/telemetry", payload))
    assert batch.timestamp_ns == [T0, T0 + S, RECEIVED_NS, RECEIVED_NS, RECEIVED_NS]
    assert batch.sensor_type == ["default", "B", "default", "default", "default"]
    assert batch.metric == ["default", "B", "a", "b", "default"]
    assert batch.value == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert batch.timestamp_fallbacks == 3
    assert (batch.messages, batch.parsed_messages) == (1, 1)


# --- timestamps -----------------------------------------------------------------------------

MS = 1_000_000


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-12-09T10:30:45Z", T0),
        ("2025-12-09T10:30:45.000Z", T0),
        ("2025-12-09T10:30:45.123Z", T0 + 123 * MS),
        ("2025-12-09T10:30:45.123456Z", T0 + 123_456_000),
        ("2025-12-09T10:30:45.123456789Z", T0 + 123_456_789),
        ("2025-12-09T10:30:45.1234567899Z", T0 + 123_456_789),
        ("2025-12-09T10:30:45,5Z", T0 + 500 * MS),
        ("2025-12-09T17:30:45+07:00", T0),
        ("2025-12-09T17:30:45.25+07:00", T0 + 250 * MS),
        ("2025-12-09T17:30:45+0700", T0),
        ("2025-12-09T17:30:45+07", T0),
        ("2025-12-09T09:00:45-01:30", T0),
        ("2025-12-09T10:30:45+00:00", T0),
        ("2025-12-09T10:30:45", T0),
        ("2025-12-09 10:30:45", T0),
        ("2025-12-09 10:30:45 +00:00", T0),
        ("2025-12-09t10:30:45z", T0),
        ("  2025-12-09T10:30:45Z\n", T0),
        ("2025-12-09T10:30Z", T0 - 45 * S),
        ("2025-12-09", T0 - (10 * 3600 + 30 * 60 + 45) * S),
        ("2024-02-29T00:00:00Z", 1_709_164_800 * S),
        ("1970-01-01T00:00:00Z", 0),
        (1_765_276_245, T0),
        (1_765_276_245.5, T0 + 500 * MS),
        (1_765_276_245.123, T0 + 123 * MS),
        (1_765_276_245_123, T0 + 123 * MS),
        (1_765_276_245_123.0, T0 + 123 * MS),
        (1_765_276_245_123_456, T0 + 123_456_000),
        (1_765_276_245_123_456_789, T0 + 123_456_789),
        ("1765276245", T0),
        ("1765276245.123456789", T0 + 123_456_789),
        ("1765276245123", T0 + 123 * MS),
        ("1765276245123.5", T0 + 123 * MS + 500_000),
        ("1765276245123456", T0 + 123_456_000),
        ("1765276245123456789", T0 + 123_456_789),
        ("1.765276245e9", T0),
        (0, 0),
        (-1, -S),
        ("-1.5", -1_500_000_000),
    ],
)
def test_timestamp_formats(raw: Any, expected: int) -> None:
    assert stamp_of({"value": 1, "timestamp": raw}) == (expected, 0)


@pytest.mark.parametrize(
    "raw",
    [
        "garbage",
        "",
        "2025-12-09T10:30:45 UTC",
        "2025-13-01T00:00:00Z",
        "2025-02-29T00:00:00Z",
        "2025-12-09T24:00:00Z",
        "2025-12-09T10:60:00Z",
        "2025-12-09T10:30:60Z",
        "2025-12-09T10:30:45+24:00",
        "2025-12-09T10:30:45+07:60",
        "0000-01-01T00:00:00Z",
        "1500-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "2025-12-09:45",
        "\u0661\u0667\u0666\u0665\u0662\u0667\u0666\u0662\u0664\u0665",  # Arabic-Indic digits
        "1_765_276_245",
        "0x10",
        "nan",
        "inf",
        "1" * 30,
        True,
        False,
        [1_765_276_245],
        {"seconds": 1_765_276_245},
        math.nan,
        math.inf,
        1e300,
        10**19,
        -(10**19),
        9_300_000_000,  # seconds, but after 2262: beyond datetime64[ns]
    ],
)
def test_unreadable_timestamps_fall_back_to_the_receive_time(raw: Any) -> None:
    payload = {"value": 1, "timestamp": raw}
    assert stamp_of(payload) == (RECEIVED_NS, 1)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param({"timestamp": ISO0, "ts": 1, "time": 2}, T0, id="timestamp-first"),
        pytest.param({"ts": ISO0, "time": 2}, T0, id="then-ts"),
        pytest.param({"time": ISO0}, T0, id="then-time"),
        pytest.param({"timestamp": None, "ts": ISO0}, T0, id="null-is-absent"),
        pytest.param({"timestamp": "garbage", "ts": ISO0}, RECEIVED_NS, id="bad-is-not-absent"),
    ],
)
def test_which_timestamp_key_counts(payload: dict[str, Any], expected: int) -> None:
    stamp, _ = stamp_of({**payload, "x": 1})
    assert stamp == expected


def test_fallbacks_are_counted_per_row() -> None:
    batch = batch_of(
        (TOPIC, {"a": 1, "b": 2, "c": 3}),
        (TOPIC, {"timestamp": ISO0, "d": 4}),
        (TOPIC, {"timestamp": "nope", "e": 5, "f": "x"}),
    )
    assert batch.timestamp_ns == [RECEIVED_NS] * 3 + [T0] + [RECEIVED_NS] * 2
    assert batch.timestamp_fallbacks == 5


# --- topics ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("device/abc/telemetry", ("abc", "default")),
        ("device/abc/telemetry/bme280", ("abc", "bme280")),
        ("device/abc/telemetry/a/b", ("abc", "a/b")),
        ("device/abc/telemetry/default", ("abc", "default")),
        ("device/3f2a-01 x/telemetry/DPS368", ("3f2a-01 x", "DPS368")),
        ("", None),
        ("device", None),
        ("device/abc", None),
        ("device/abc/telemetry/", None),
        ("device//telemetry", None),
        ("device/abc/telemetry//x", None),
        ("/device/abc/telemetry", None),
        ("devices/abc/telemetry", None),
        ("Device/abc/telemetry", None),
        ("device/abc/status", None),
        ("device/abc/status/telemetry", None),
        ("device/+/telemetry", None),
        ("device/a+b/telemetry", None),
        ("device/abc/telemetry/#", None),
        ("device/#", None),
        ("device/abc/telemetry\x00", None),
        ("device/ab\x00c/telemetry", None),
        ("device/\ud800/telemetry", None),
    ],
)
def test_parse_topic(topic: str, expected: tuple[str, str] | None) -> None:
    assert parse_topic(topic) == expected
    assert parse_topic(topic) == expected  # the cached answer is the same


def test_parse_topic_of_a_non_string_is_none() -> None:
    assert parse_topic(None) is None  # type: ignore[arg-type]
    assert parse_topic(["device", "x", "telemetry"]) is None  # type: ignore[arg-type]


def test_the_topic_cache_stays_bounded() -> None:
    for i in range(parse_payload.TOPIC_CACHE_SIZE * 2 + 5):
        assert parse_topic(f"device/d{i}/telemetry") == (f"d{i}", "default")
    assert 0 < len(parse_payload.TOPIC_CACHE) <= parse_payload.TOPIC_CACHE_SIZE
    assert parse_topic("x" * 10_000) is None
    assert "x" * 10_000 not in parse_payload.TOPIC_CACHE


# --- rejects --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("device/abc/status", b'{"value": 1}', RejectReason.BAD_TOPIC),
        ("device/+/telemetry", b'{"value": 1}', RejectReason.BAD_TOPIC),
        ("nope", b"", RejectReason.BAD_TOPIC),  # the topic is checked first
        (TOPIC, b"", RejectReason.EMPTY),
        (TOPIC, b" \r\n\t ", RejectReason.EMPTY),
        (TOPIC, b"\xff\xfe{}", RejectReason.INVALID_UTF8),
        (TOPIC, b'{"value": "\xed\xa0\x80"}', RejectReason.INVALID_UTF8),  # a raw surrogate
        (TOPIC, b'{"value": 1}\xc3', RejectReason.INVALID_UTF8),
        (TOPIC, b"hello", RejectReason.NOT_JSON),
        (TOPIC, b'{"value": 1', RejectReason.NOT_JSON),
        (TOPIC, b"{'value': 1}", RejectReason.NOT_JSON),
        (TOPIC, b"25.5 C", RejectReason.NOT_JSON),
        (TOPIC, b"[" * 100_000, RejectReason.NOT_JSON),
        (TOPIC, b"1" * 5000, RejectReason.NOT_JSON),
        (TOPIC, b"{}", RejectReason.NO_FIELDS),
        (TOPIC, b"null", RejectReason.NO_FIELDS),
        (TOPIC, b"[]", RejectReason.NO_FIELDS),
        (TOPIC, b"[null, {}, [], [[]]]", RejectReason.NO_FIELDS),
        (TOPIC, b'{"timestamp": "2025-12-09T10:30:45Z"}', RejectReason.NO_FIELDS),
        (TOPIC, b'{"timestamp": 1, "device_id": "x", "unit": "c"}', RejectReason.NO_FIELDS),
        (TOPIC, b'{"value": null, "unit": "celsius"}', RejectReason.NO_FIELDS),
        (TOPIC, b'{"data": {}, "list": []}', RejectReason.NO_FIELDS),
    ],
)
def test_rejects(topic: str, payload: bytes, reason: RejectReason) -> None:
    reject = only_reject(topic, payload)
    assert reject.reason is reason
    assert reject.topic == topic
    assert reject.payload == payload[:MAX_REJECT_PAYLOAD]
    assert reject.payload_size == len(payload)
    assert reject.received_ns == RECEIVED_NS
    assert isinstance(reject.detail, str)
    assert 0 < len(reject.detail) <= 200


def test_reject_reasons_are_strings() -> None:
    assert [reason.value for reason in RejectReason] == [
        "bad_topic",
        "empty",
        "invalid_utf8",
        "not_json",
        "no_usable_field",
        "retained_duplicate",
    ]
    # The str mixin makes a member equal its value; mypy types the member as a Literal apart.
    assert cast(str, RejectReason.NOT_JSON) == "not_json"
    assert isinstance(RejectReason.EMPTY, str)


def test_reject_details_say_what_went_wrong() -> None:
    assert "Expecting" in only_reject(TOPIC, b'{"value": 1').detail
    assert "utf-8" in only_reject(TOPIC, b"\xff").detail
    assert "telemetry" in only_reject("x", b"1").detail
    assert "object" in only_reject(TOPIC, b"{}").detail


def test_a_reject_keeps_at_most_max_reject_payload_bytes() -> None:
    payload = b"x" * (MAX_REJECT_PAYLOAD * 3)
    reject = only_reject(TOPIC, payload)
    assert reject.reason is RejectReason.NOT_JSON
    assert reject.payload == b"x" * MAX_REJECT_PAYLOAD
    assert reject.payload_size == MAX_REJECT_PAYLOAD * 3


def test_a_non_string_topic_is_a_bad_topic() -> None:
    reject = only_reject(None, b"1")  # type: ignore[arg-type]
    assert (reject.reason, reject.topic) == (RejectReason.BAD_TOPIC, "None")


def test_bytearray_and_memoryview_payloads_are_read_like_bytes() -> None:
    for payload in (bytearray(b'{"value": 2}'), memoryview(b'{"value": 2}')):
        batch = parse_batch([RawMessage(TOPIC, payload, RECEIVED_NS)])  # type: ignore[arg-type]
        assert batch.value == [2.0]


# --- caps -----------------------------------------------------------------------------------


def nested(levels: int) -> dict[str, Any]:
    """`levels` objects inside each other, the innermost holding a=1."""
    payload: dict[str, Any] = {"a": 1}
    for _ in range(levels - 1):
        payload = {"a": payload}
    return payload


def test_constants() -> None:
    assert (MAX_REJECT_PAYLOAD, MAX_DEPTH, MAX_ROWS_PER_MESSAGE) == (4096, 8, 10_000)
    assert MAX_TIMESTAMP_TEXT == 64
    assert ParseOptions().max_rows_per_message == MAX_ROWS_PER_MESSAGE


def test_objects_nested_up_to_max_depth_are_read() -> None:
    assert metrics(nested(MAX_DEPTH)) == [(".".join(["a"] * MAX_DEPTH), 1.0, None, None)]
    assert batch_of((TOPIC, nested(MAX_DEPTH))).truncated_messages == 0


def test_deeper_objects_are_dropped_and_the_message_counted() -> None:
    reject = only_reject(TOPIC, encode(nested(MAX_DEPTH + 1)))
    assert reject.reason is RejectReason.NO_FIELDS
    assert f"within {MAX_DEPTH} levels" in reject.detail
    batch = batch_of((TOPIC, {"x": 1, "deep": nested(MAX_DEPTH)}))
    assert batch.metric == ["x"]
    assert batch.truncated_messages == 1


def test_lists_count_as_levels() -> None:
    ok: Any = 1
    for _ in range(MAX_DEPTH - 1):
        ok = [ok]
    assert metrics({"a": ok}) == [("a" + ".0" * (MAX_DEPTH - 1), 1.0, None, None)]
    assert only_reject(TOPIC, encode({"a": [ok]})).reason is RejectReason.NO_FIELDS
    assert metrics([[[1]]]) == [("temperature", 1.0, None, None)]
    too_deep = b"[" * (MAX_DEPTH + 1) + b"1" + b"]" * (MAX_DEPTH + 1)
    assert only_reject(TOPIC, too_deep).reason is RejectReason.NO_FIELDS


@pytest.mark.parametrize(
    ("payload", "first_metrics", "period"),
    [
        pytest.param({f"f{i}": i for i in range(1500)}, ["f0", "f1"], 1500, id="fields"),
        pytest.param({"v": list(range(1500))}, ["v.0", "v.1"], 1500, id="list"),
        pytest.param([{"value": i} for i in range(1500)], ["temperature"] * 2, 1500, id="array"),
        pytest.param({"a": [{"b": list(range(600))}] * 3}, ["a.0.b.0", "a.0.b.1"], 600, id="deep"),
    ],
)
def test_a_message_keeps_its_first_max_rows_and_counts_the_cut_ones(
    payload: Any, first_metrics: list[str], period: int
) -> None:
    limit = 1000
    options = ParseOptions(max_rows_per_message=limit)
    batch = batch_of((TOPIC, payload), (TOPIC, {"value": -1}), options=options)
    assert len(batch) == limit + 1
    assert batch.metric[:2] == first_metrics
    assert batch.value == [float(i % period) for i in range(limit)] + [-1.0]
    assert batch.truncated_messages == 1
    assert batch.rows_cut == (1800 if period == 600 else 1500) - limit
    assert (batch.messages, batch.parsed_messages) == (2, 2)


def test_the_default_limit_keeps_a_batched_sensors_few_thousand_readings() -> None:
    readings = [{"value": i, "timestamp": 1_765_276_245_000 + i} for i in range(1500)]
    batch = batch_of((TOPIC, readings))
    assert len(batch) == 1500
    assert (batch.truncated_messages, batch.rows_cut) == (0, 0)


def test_exactly_max_rows_is_not_truncation() -> None:
    options = ParseOptions(max_rows_per_message=1000)
    batch = batch_of((TOPIC, {f"f{i}": i for i in range(1000)}), options=options)
    assert len(batch) == 1000
    assert (batch.truncated_messages, batch.rows_cut) == (0, 0)


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "10"])
def test_max_rows_per_message_must_be_a_positive_integer(limit: Any) -> None:
    with pytest.raises(ValueError, match="max_rows_per_message"):
        ParseOptions(max_rows_per_message=limit)


# --- work linear in the message -------------------------------------------------------------


@pytest.mark.parametrize("digits", [60_000, 1_000_000])
def test_a_huge_digit_timestamp_is_not_a_timestamp_and_costs_linear_time(digits: int) -> None:
    # The scientific-notation pattern backtracked quadratically: 60,000 digits took 18 s.
    started = time.perf_counter()
    batch = batch_of((TOPIC, {"value": 1, "timestamp": "1" * digits}))
    assert batch.timestamp_fallbacks == 1
    assert batch.value == [1.0]
    assert time.perf_counter() - started < 2.0  # quadratic would take hours; this is ~10 ms


def test_timestamps_up_to_the_text_limit_are_read() -> None:
    padded = " " * (MAX_TIMESTAMP_TEXT - len(ISO0)) + ISO0
    assert batch_of((TOPIC, {"value": 1, "timestamp": padded})).timestamp_ns == [T0]
    too_long = " " + padded
    assert batch_of((TOPIC, {"value": 1, "timestamp": too_long})).timestamp_fallbacks == 1


# --- zone-less device clocks ----------------------------------------------------------------


@pytest.mark.parametrize("zone", ["Asia/Bangkok", "+07:00", "+0700"])
def test_naive_timestamps_are_read_in_the_naive_timezone(zone: str) -> None:
    options = ParseOptions(naive_timezone=zone)
    local = {"value": 1, "timestamp": "2025-12-09T17:30:45"}  # 10:30:45 UTC
    marked = {"value": 2, "timestamp": "2025-12-09T10:30:45Z"}  # an explicit zone wins
    batch = batch_of((TOPIC, local), (TOPIC, marked), options=options)
    assert batch.timestamp_ns == [T0, T0]
    assert batch_of((TOPIC, local)).timestamp_ns == [T0 + 7 * 3600 * S]  # default: UTC


def test_the_naive_timezone_follows_daylight_saving_time() -> None:
    options = ParseOptions(naive_timezone="Europe/Berlin")
    winter = {"value": 1, "timestamp": "2025-01-15T12:00:00"}
    summer = {"value": 1, "timestamp": "2025-07-15T12:00:00"}
    batch = batch_of((TOPIC, winter), (TOPIC, summer), options=options)
    assert [pd.Timestamp(ns, tz="UTC").hour for ns in batch.timestamp_ns] == [11, 10]


@pytest.mark.parametrize("zone", ["Mars/Olympus", "+25:00", "", 7])
def test_an_unknown_naive_timezone_is_a_config_error(zone: Any) -> None:
    from tesaiot_data.errors import ConfigError  # noqa: PLC0415

    with pytest.raises(ConfigError, match="naive_timezone"):
        ParseOptions(naive_timezone=zone)


# --- retained redeliveries ------------------------------------------------------------------


def test_a_retained_redelivery_of_the_last_payload_becomes_a_reject() -> None:
    last: dict[str, int] = {}
    live = RawMessage(TOPIC, b'{"value": 1}', RECEIVED_NS)
    first = parse_batch([live._replace(retain=True)], last_payloads=last)  # on subscribing
    assert (len(first), first.retained_messages) == (1, 1)
    again = parse_batch(
        [live._replace(retain=True, received_ns=RECEIVED_NS + 9 * S)], last_payloads=last
    )
    assert len(again) == 0
    assert [r.reason for r in again.rejects] == [RejectReason.RETAINED_DUPLICATE]
    assert again.rejects[0].payload == b'{"value": 1}'
    # A live repeat is kept (a device may send the same value twice); a new retained
    # payload is kept; without the caller's memory nothing is dropped.
    assert len(parse_batch([live], last_payloads=last)) == 1
    newer = RawMessage(TOPIC, b'{"value": 2}', RECEIVED_NS, retain=True)
    assert len(parse_batch([newer], last_payloads=last)) == 1
    assert len(parse_batch([newer, newer])) == 2


def test_the_retained_memory_is_bounded_by_topics() -> None:
    last: dict[str, int] = {}
    messages = (
        RawMessage(f"device/d{i}/telemetry/t", b"1", RECEIVED_NS)
        for i in range(parsing.LAST_PAYLOADS_MAX + 10)
    )
    parse_batch(messages, last_payloads=last)
    assert len(last) <= parsing.LAST_PAYLOADS_MAX


# --- batches --------------------------------------------------------------------------------


MIXED: list[tuple[str, bytes]] = [
    (TOPIC, encode({"value": 25.5, "unit": "celsius", "timestamp": ISO0})),
    ("device/x/telemetry", b"{}"),
    ("device/x/telemetry/env", encode({"timestamp": 1_765_276_245_000, "t": 1, "h": 2})),
    ("bad", b"1"),
    ("device/x/telemetry", encode({"sensor_type": "S", "data": {"p": 1, "q": {"r": "s"}}})),
    (TOPIC, b"\xff"),
    (TOPIC, b"[1, 2, 3]"),
    (TOPIC, b"not json"),
    (TOPIC, b""),
]


def test_every_message_is_parsed_or_rejected_and_columns_stay_aligned() -> None:
    batch = parse_batch(RawMessage(topic, payload, RECEIVED_NS) for topic, payload in MIXED)
    assert batch.messages == len(MIXED) == batch.parsed_messages + len(batch.rejects)
    assert (batch.parsed_messages, len(batch)) == (4, 1 + 2 + 2 + 3)
    assert [reject.reason for reject in batch.rejects] == [
        RejectReason.NO_FIELDS,
        RejectReason.BAD_TOPIC,
        RejectReason.INVALID_UTF8,
        RejectReason.NOT_JSON,
        RejectReason.EMPTY,
    ]
    assert {len(column) for column in columns(batch)} == {len(batch)}
    assert batch.metric == [
        "temperature",
        "t",
        "h",
        "p",
        "q.r",
        "temperature",
        "temperature",
        "temperature",
    ]
    assert batch.timestamp_fallbacks == 2 + 3
    assert "rows=8" in repr(batch)


def test_parse_batch_appends_into_a_given_batch() -> None:
    messages = [RawMessage(topic, payload, RECEIVED_NS) for topic, payload in MIXED]
    batch = parse_batch(messages)
    same = parse_batch(messages, into=batch)
    assert same is batch
    assert (batch.messages, batch.parsed_messages, len(batch.rejects)) == (18, 8, 10)
    assert len(batch) == 16
    assert batch.metric[:8] == batch.metric[8:]
    assert batch.timestamp_fallbacks == 10


def test_an_empty_batch() -> None:
    batch = parse_batch([])
    assert len(batch) == 0
    assert columns(batch) == [[]] * 8
    assert (batch.messages, batch.parsed_messages, batch.timestamp_fallbacks) == (0, 0, 0)
    assert len(ColumnBatch()) == 0


@pytest.mark.parametrize("received_ns", [math.nan, 1.5e18, 2**63, -(2**63), None, "1"])
def test_an_unusable_receive_time_becomes_now(received_ns: Any) -> None:
    before = time.time_ns()
    batch = batch_of((TOPIC, b"1"), (TOPIC, b"x"), received_ns=received_ns)
    after = time.time_ns()
    assert before <= batch.received_ns[0] <= after
    assert batch.timestamp_ns == batch.received_ns
    assert before <= batch.rejects[0].received_ns <= after


def test_a_bug_in_the_walk_becomes_a_reject_and_the_batch_stays_aligned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: Any, name: str, *args: Any) -> None:
        if name == "boom":
            raise RuntimeError("bug")
        original(self, name, *args)

    original = parsing._Writer._leaf
    monkeypatch.setattr(parsing._Writer, "_leaf", broken)
    batch = batch_of((TOPIC, {"a": 1}), (TOPIC, [{"b": 2}, {"boom": 3}]), (TOPIC, {"c": 4}))
    assert batch.metric == ["a", "c"]
    assert {len(column) for column in columns(batch)} == {2}
    assert [reject.reason for reject in batch.rejects] == [RejectReason.NO_FIELDS]
    assert "bug" in batch.rejects[0].detail
    assert batch.timestamp_fallbacks == 2


# --- parse_message --------------------------------------------------------------------------


def test_parse_message_gives_typed_rows() -> None:
    payload = encode({"value": 25.5, "unit": "celsius", "timestamp": "2025-12-09T17:30:45+07:00"})
    result = parse_message(TOPIC, payload, RECEIVED)
    assert isinstance(result, ParseResult)
    assert result.reject is None
    assert result.timestamp_fallbacks == 0
    assert result.rows == (
        Row(
            timestamp=pd.Timestamp("2025-12-09T10:30:45Z"),
            received_at=pd.Timestamp("2025-12-09T10:31:40.5Z"),
            device_id="dev-1",
            sensor_type="temperature",
            metric="temperature",
            value=25.5,
            unit="celsius",
            value_text=None,
        ),
    )
    row = result.rows[0]
    assert isinstance(row.timestamp, pd.Timestamp)
    assert str(row.timestamp.tz) == "UTC"
    assert str(row.received_at.tz) == "UTC"
    assert row.timestamp.value == T0


def test_parse_message_keeps_nanoseconds() -> None:
    result = parse_message(TOPIC, b'{"value": 1, "ts": "2025-12-09T10:30:45.123456789Z"}', 0.0)
    assert result.rows[0].timestamp.value == T0 + 123_456_789
    assert result.rows[0].received_at.value == 0


def test_parse_message_reports_a_reject() -> None:
    result = parse_message(TOPIC, b"not json", RECEIVED)
    assert result.rows == ()
    assert result.timestamp_fallbacks == 0
    reject = result.reject
    assert reject is not None
    assert (reject.topic, reject.payload, reject.payload_size) == (TOPIC, b"not json", 8)
    assert (reject.reason, reject.received_ns) == (RejectReason.NOT_JSON, RECEIVED_NS)
    assert reject.detail.startswith("Expecting value")


@pytest.mark.parametrize(("topic", "payload"), MIXED)
def test_parse_message_agrees_with_parse_batch(topic: str, payload: bytes) -> None:
    result = parse_message(topic, payload, RECEIVED)
    batch = parse_batch([RawMessage(topic, payload, RECEIVED_NS)])
    assert result.reject == (batch.rejects[0] if batch.rejects else None)
    assert result.timestamp_fallbacks == batch.timestamp_fallbacks
    as_columns = [
        [row.timestamp.value for row in result.rows],
        [row.received_at.value for row in result.rows],
        *([getattr(row, field.name) for row in result.rows] for field in fields(Row)[2:]),
    ]
    assert repr(as_columns) == repr(columns(batch))  # repr: NaN == NaN


UTC = timezone.utc


@pytest.mark.parametrize(
    "received_at",
    [
        RECEIVED,
        datetime(2025, 12, 9, 10, 31, 40, 500000),
        datetime(2025, 12, 9, 10, 31, 40, 500000, tzinfo=UTC),
        datetime(2025, 12, 9, 17, 31, 40, 500000, tzinfo=timezone(timedelta(hours=7))),
        pd.Timestamp("2025-12-09 10:31:40.5"),
        pd.Timestamp("2025-12-09 17:31:40.5+07:00"),
        pd.Timestamp("2025-12-09 10:31:40.500", tz="UTC").as_unit("ms"),
    ],
)
def test_parse_message_accepts_every_kind_of_receive_time(received_at: Any) -> None:
    result = parse_message(TOPIC, b"1", received_at)
    assert result.rows[0].received_at.value == RECEIVED_NS
    assert result.rows[0].timestamp.value == RECEIVED_NS
    reject = parse_message(TOPIC, b"", received_at).reject
    assert reject is not None
    assert reject.received_ns == RECEIVED_NS


def test_parse_message_keeps_nanoseconds_of_a_receive_timestamp() -> None:
    received = pd.Timestamp(RECEIVED_NS + 7, tz="UTC")
    assert parse_message(TOPIC, b"1", received).rows[0].received_at.value == RECEIVED_NS + 7


@pytest.mark.parametrize("received_at", [math.nan, pd.NaT])
def test_parse_message_replaces_a_missing_receive_time_with_now(received_at: Any) -> None:
    before = time.time_ns()
    row = parse_message(TOPIC, b"1", received_at).rows[0]
    assert before <= row.received_at.value <= time.time_ns()


def test_parse_message_rejects_a_receive_time_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match="received_at"):
        parse_message(TOPIC, b"1", "2025-12-09")


# --- decode_payload -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"value": 25.5, "unit": "celsius"}', {"value": 25.5, "unit": "celsius"}),
        (b"25.5", 25.5),
        (b"[1, null]", [1, None]),
        (b'"normal"', "normal"),
        (b"null", None),
        (b"true", True),
        (b"hello", "hello"),
        (b"{'a': 1}", "{'a': 1}"),
        (b"", ""),
        (b"  \n", "  \n"),
        (b"\xef\xbb\xbf[1]", [1]),
        (b"\xff\x00", b"\xff\x00"),
        (b"caf\xc3\xa9", "caf\u00e9"),
    ],
)
def test_decode_payload(payload: bytes, expected: Any) -> None:
    decoded = decode_payload(payload)
    assert decoded == expected
    assert type(decoded) is type(expected)


def test_decode_payload_keeps_nan() -> None:
    assert math.isnan(decode_payload(b"NaN"))


@pytest.mark.parametrize(
    "stamp",
    [
        "2025-12-09T10:30:45.123Z",
        "2025-12-09T10:30:45.999Z",
        "2025-12-09T10:30:45.000Z",
        "1969-12-31T23:59:59.500Z",
        "2024-02-29T00:00:00.001Z",
    ],
)
def test_the_millisecond_fast_path_agrees_with_datetime(stamp: str) -> None:
    expected = pd.Timestamp(stamp).value
    for _ in range(2):  # the second call takes the cached second
        result = parse_message(
            "device/d/telemetry/t", f'{{"value": 1, "timestamp": "{stamp}"}}'.encode(), 0.0
        )
        assert result.timestamp_fallbacks == 0
        assert result.rows[0].timestamp.value == expected


@pytest.mark.parametrize("stamp", ["2025-13-09T10:30:45.123Z", "2025-12-09T10:30:45.1x3Z"])
def test_the_fast_path_leaves_bad_stamps_to_the_fallback(stamp: str) -> None:
    result = parse_message(
        "device/d/telemetry/t", f'{{"value": 1, "timestamp": "{stamp}"}}'.encode(), 0.0
    )
    assert result.timestamp_fallbacks == 1
