"""The types that travel from the network to the window and the sinks.

A `RawMessage` comes off the wire; the parser turns messages into a `ColumnBatch` of rows and
`Reject`s, each with a `RejectReason`. The client, the window and the sinks import these
types from here, not the parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

__all__ = ["MAX_REJECT_PAYLOAD", "ColumnBatch", "RawMessage", "Reject", "RejectReason"]

MAX_REJECT_PAYLOAD = 4096
"""Bytes of the raw payload kept in a `Reject`."""


class RejectReason(str, Enum):
    """Why a message produced no row."""

    BAD_TOPIC = "bad_topic"
    """The topic is not `device/<id>/telemetry[/<sensor>...]`."""
    EMPTY = "empty"
    """The payload is empty or only whitespace."""
    INVALID_UTF8 = "invalid_utf8"
    """The payload is not UTF-8 text."""
    NOT_JSON = "not_json"
    """The payload is text but not JSON (or JSON nested too deeply for the decoder)."""
    NO_FIELDS = "no_usable_field"
    """The payload is JSON but nothing in it gives a row (`{}`, `null`, only a timestamp)."""
    RETAINED_DUPLICATE = "retained_duplicate"
    """A retained message the broker sent again (on a reconnect) that equals the last
    message taken on its topic; its rows are already held."""


class RawMessage(NamedTuple):
    """A message as it came off the wire.

    A named tuple rather than a frozen dataclass: one is made for every message on the
    network thread, and a tuple costs half as much to build.

    Args:
        topic: The MQTT topic.
        payload: The raw payload.
        received_ns: When it arrived, in epoch nanoseconds UTC (`time.time_ns()`, stamped
            once on the network thread).
        retain: The MQTT retain flag: True when the broker sent a stored (retained) message,
            as it does on every (re)subscription, rather than a live one.
        device_ns: The device time the message carried outside its payload, in epoch ns UTC
            (an MQTT 5 user property, see `TESAIoTMQTTClient(timestamp_property=...)`), or
            None. Rows whose payload has no timestamp take it instead of `received_ns`.
    """

    topic: str
    payload: bytes
    received_ns: int
    retain: bool = False
    device_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """A message that produced no row, kept so that it can be counted and looked at.

    Args:
        topic: The MQTT topic.
        payload: The raw payload, cut to `MAX_REJECT_PAYLOAD` bytes.
        payload_size: The payload's original length in bytes.
        reason: Why it was rejected.
        detail: A short explanation, for example the JSON decoder's message.
        received_ns: When it arrived, in epoch nanoseconds UTC.
    """

    topic: str
    payload: bytes
    payload_size: int
    reason: RejectReason
    detail: str
    received_ns: int


class ColumnBatch:
    """Rows of many messages, column by column, ready to become a DataFrame.

    `parse_batch` appends to it. All row columns always have the same length, and
    `messages == parsed_messages + len(rejects)`.

    Attributes:
        timestamp_ns: Row timestamps, epoch nanoseconds UTC.
        received_ns: Receive times, epoch nanoseconds UTC.
        device_id: Device ids.
        sensor_type: Sensor types.
        metric: Metric names.
        value: Values; NaN for text rows.
        unit: Units, or None.
        value_text: Texts of text rows, else None.
        rejects: Messages that gave no row.
        messages: Messages fed in.
        parsed_messages: Messages that gave at least one row.
        timestamp_fallbacks: Rows whose timestamp is the receive time.
        truncated_messages: Parsed messages that lost rows to `MAX_DEPTH` or
            `ParseOptions.max_rows_per_message`.
        rows_cut: Rows not kept because their message reached `max_rows_per_message`.
        retained_messages: Parsed messages that carried the MQTT retain flag.
    """

    __slots__ = (
        "device_id",
        "messages",
        "metric",
        "parsed_messages",
        "received_ns",
        "rejects",
        "retained_messages",
        "rows_cut",
        "sensor_type",
        "timestamp_fallbacks",
        "timestamp_ns",
        "truncated_messages",
        "unit",
        "value",
        "value_text",
    )

    def __init__(self) -> None:
        self.timestamp_ns: list[int] = []
        self.received_ns: list[int] = []
        self.device_id: list[str] = []
        self.sensor_type: list[str] = []
        self.metric: list[str] = []
        self.value: list[float] = []
        self.unit: list[str | None] = []
        self.value_text: list[str | None] = []
        self.rejects: list[Reject] = []
        self.messages = 0
        self.parsed_messages = 0
        self.timestamp_fallbacks = 0
        self.truncated_messages = 0
        self.rows_cut = 0
        self.retained_messages = 0

    def __len__(self) -> int:
        return len(self.value)

    def __repr__(self) -> str:
        return (
            f"ColumnBatch(rows={len(self)}, messages={self.messages}, "
            f"rejects={len(self.rejects)}, timestamp_fallbacks={self.timestamp_fallbacks})"
        )
