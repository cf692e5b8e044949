"""One message as rows of pandas values: `parse_message`, `Row` and `ParseResult`.

For per-message use (a callback, a test, a notebook cell): the message goes through the same
batch walker as the collector's (`parse.rows.parse_batch`), and its columns come back as
frozen `Row`s with pandas Timestamps. pandas is imported when a message is parsed, not here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from tesaiot_data.messages import RawMessage, Reject
from tesaiot_data.parse.rows import ParseOptions, parse_batch
from tesaiot_data.parse.timestamps import seconds_ns

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ParseResult", "Row", "parse_message"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_SECOND = timedelta(seconds=1)


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


def _received_ns(received_at: float | datetime | pd.Timestamp) -> int:
    import pandas as pd  # noqa: PLC0415  (parse/ imports no pandas until it is used)

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
    import pandas as pd  # noqa: PLC0415  (parse/ imports no pandas until it is used)

    received_ns = _received_ns(received_at)
    batch = parse_batch([RawMessage(topic, payload, received_ns)], options=options)
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
