"""Device times: the timestamps devices send, as epoch nanoseconds UTC.

Pure functions on the hot path (no pandas): `timestamp_ns()` reads what devices send, in time
linear in the text. `NaiveZone` holds the zone of devices that send local time without one.
What users type (durations, `since`/`until`) is read by `tesaiot_data.arguments`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tesaiot_data.errors import ConfigError

__all__ = [
    "ISO_SECOND_CACHE",
    "MAX_TIMESTAMP_TEXT",
    "NaiveZone",
    "seconds_ns",
    "timestamp_ns",
]

MAX_TIMESTAMP_TEXT = 64
"""Longer texts are not read as timestamps (the longest ISO 8601 form is about 35)."""

_NS_MIN = -(2**63) + 1  # pd.Timestamp.min; -2**63 itself is NaT
_NS_MAX = 2**63 - 1
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_CACHE_SIZE = 4096
_ISO = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[Tt ](\d{2}:\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"( ?(?:[Zz]|[+-]\d{2}(?::?\d{2})?))?",
    re.ASCII,
)
_DECIMAL = re.compile(r"([+-]?)(\d{1,20})(?:\.(\d*))?", re.ASCII)
_SCIENTIFIC = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)[eE][+-]?\d{1,3}", re.ASCII)
_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})", re.ASCII)
# (magnitude limit, ns per unit, fraction digits kept) for seconds, ms, us; beyond them ns
_EPOCH_UNITS = ((10**11, 10**9, 9), (10**14, 10**6, 6), (10**17, 10**3, 3))


class NaiveZone:
    """The zone of device timestamps that carry none, with its offsets cached per minute.

    A local time in the hour repeated when daylight saving time ends (02:30 in Berlin on
    the last Sunday of October) names two instants an hour apart; `timestamp_ns` picks
    the one nearer the message's receive time when it is given (`received_ns`), else the
    first (pandas' `ambiguous="infer"` cannot be used message by message).

    Args:
        zone: The zone; daylight saving time is followed.
    """

    __slots__ = ("_offsets", "zone")

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self._offsets: dict[str, tuple[int, int] | None] = {}

    def __repr__(self) -> str:
        return f"NaiveZone({self.zone!s})"

    @classmethod
    def parse(cls, value: str | tzinfo | None) -> NaiveZone | None:
        """Return the zone a user named, or None for UTC.

        Args:
            value: An IANA name (`"Asia/Bangkok"`), an offset (`"+07:00"`, `"-0330"`), a
                `tzinfo`, or None.

        Raises:
            ConfigError: `value` names no zone.
        """
        if value is None:
            return None
        if isinstance(value, tzinfo):
            return cls(value)
        if not isinstance(value, str):
            raise ConfigError(
                f"naive_timezone={value!r} is not a time zone",
                hint="pass an IANA name such as 'Asia/Bangkok', an offset such as '+07:00', "
                "or None",
            )
        if (match := _OFFSET.fullmatch(value.strip())) is not None:
            sign, hours, minutes = match.groups()
            offset = timedelta(hours=int(hours), minutes=int(minutes))
            if offset >= timedelta(hours=24):
                raise ConfigError(
                    f"naive_timezone={value!r} is out of range", hint="use -23:59..+23:59"
                )
            return cls(timezone(-offset if sign == "-" else offset))
        try:
            return cls(ZoneInfo(value.strip()))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(
                f"naive_timezone={value!r} is not a known time zone ({exc})",
                hint="pass an IANA name such as 'Asia/Bangkok' or an offset such as '+07:00'",
            ) from None

    def offset(self, minute: str) -> int | None:
        """Seconds east of UTC at local `YYYY-MM-DD[THH:MM]`; None when no such time.

        In the repeated hour, the offset of its first pass (see `offsets`).
        """
        both = self.offsets(minute)
        return None if both is None else both[0]

    def offsets(self, minute: str) -> tuple[int, int] | None:
        """Seconds east of UTC at local `YYYY-MM-DD[THH:MM]`, first and second pass.

        The two differ only in the hour repeated when daylight saving time ends (the
        first pass has the larger offset: the earlier instant); None when no such time.
        """
        offsets = self._offsets
        try:
            return offsets[minute]
        except KeyError:
            pass
        both: tuple[int, int] | None
        try:
            hour, mins = (int(minute[11:13]), int(minute[14:16])) if len(minute) > 10 else (0, 0)
            local = datetime(int(minute[0:4]), int(minute[5:7]), int(minute[8:10]), hour, mins)
            first = local.replace(tzinfo=self.zone).utcoffset()
            second = local.replace(tzinfo=self.zone, fold=1).utcoffset()
            if first is None or second is None:
                both = None
            else:
                both = (int(first.total_seconds()), int(second.total_seconds()))
        except (ValueError, OverflowError):
            both = None
        if len(offsets) >= _CACHE_SIZE:
            offsets.clear()  # atomic, so safe to share between threads
        offsets[minute] = both
        return both


def _in_range(ns: int) -> int | None:
    return ns if _NS_MIN <= ns <= _NS_MAX else None


def _minute_seconds(text: str) -> int | None:
    """Epoch seconds of `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM`; None when no such time."""
    try:
        days = date(int(text[0:4]), int(text[5:7]), int(text[8:10])).toordinal()
    except ValueError:
        return None
    hour, minute = (int(text[11:13]), int(text[14:16])) if len(text) > 10 else (0, 0)
    if hour > 23 or minute > 59:
        return None
    return (days - _EPOCH_ORDINAL) * 86400 + hour * 3600 + minute * 60


def _zone_seconds(zone: str) -> int | None:
    """Seconds east of UTC of `Z`, `+07:00`, `+0700` or `+07`; None when out of range."""
    zone = zone.strip()
    if zone in ("Z", "z"):
        return 0
    hours, minutes = int(zone[1:3]), int(zone[-2:]) if len(zone) > 3 else 0
    if hours > 23 or minutes > 59:
        return None
    offset = hours * 3600 + minutes * 60
    return -offset if zone[0] == "-" else offset


# The date-and-minute and the zone of ISO timestamps repeat from message to message, so their
# (slow) conversions are cached; both caches are bounded.
_minute_cache: dict[str, int | None] = {}
_zone_cache: dict[str, int | None] = {}


def _cached(
    cache: dict[str, int | None], key: str, convert: Callable[[str], int | None]
) -> int | None:
    try:
        return cache[key]
    except KeyError:
        value = convert(key)
        if len(cache) >= _CACHE_SIZE:
            cache.clear()  # atomic, so safe to share between threads
        cache[key] = value
        return value


def _iso_ns(
    text: str, match: re.Match[str], naive: NaiveZone | None, received_ns: int | None
) -> int | None:
    clock, second, fraction, zone = match.groups()
    minute = text[:16] if clock else text[:10]
    base = _cached(_minute_cache, minute, _minute_seconds)
    if base is None:
        return None
    later = 0  # the repeated hour: seconds to add for its second pass, if nearer
    if not zone and naive is not None:
        local = naive.offsets(minute)
        if local is None:
            return None
        base -= local[0]
        if received_ns is not None:
            later = local[0] - local[1]
    if second:
        seconds = int(second)
        if seconds > 59:  # leap seconds are not representable either
            return None
        base += seconds
    if zone:
        offset = _cached(_zone_cache, zone, _zone_seconds)
        if offset is None:
            return None
        base -= offset
    nanos = int(fraction[:9].ljust(9, "0")) if fraction else 0
    ns = base * 1_000_000_000 + nanos
    if later > 0 and received_ns is not None:
        second_pass = ns + later * 1_000_000_000
        if abs(second_pass - received_ns) < abs(ns - received_ns):
            ns = second_pass
    return _in_range(ns)


def _epoch_int_ns(number: int) -> int | None:
    magnitude = -number if number < 0 else number
    for limit, scale, _ in _EPOCH_UNITS:
        if magnitude < limit:
            return _in_range(number * scale)
    return _in_range(number)


def _epoch_float_ns(number: float) -> int | None:
    if not math.isfinite(number):
        return None
    magnitude = abs(number)
    # Rounded to the microsecond: a float holds no more for today's epoch seconds.
    if magnitude < 1e11:
        return _in_range(round(number * 1e6) * 1000)
    if magnitude < 1e14:
        return _in_range(round(number * 1e3) * 1000)
    if magnitude < 1e17:
        return _in_range(round(number) * 1000)
    return _in_range(round(number))


def _epoch_text_ns(match: re.Match[str]) -> int | None:
    sign, whole, fraction = match.groups()
    number = int(whole)
    for limit, scale, digits in _EPOCH_UNITS:
        if number < limit:
            nanos = number * scale
            if fraction:
                nanos += int(fraction[:digits].ljust(digits, "0"))
            break
    else:
        nanos = number
    return _in_range(-nanos if sign == "-" else nanos)


ISO_SECOND_CACHE: dict[str, int] = {}
"""Text "YYYY-MM-DDTHH:MM:SS" -> epoch ns of that second (UTC), bounded; the batch walker's
fast path reads it directly. Only ever cleared, never replaced, so a name bound to it stays
the cache; only seconds whose every millisecond fits in int64 nanoseconds are held."""
_SECONDS_MAX = 4096


def _text_ns(
    text: str, naive: NaiveZone | None = None, received_ns: int | None = None
) -> int | None:
    if len(text) > MAX_TIMESTAMP_TEXT:  # keeps every step below linear in the message size
        return None
    # Fast path for what the platform's devices send, "2025-12-09T10:30:45.123Z": the
    # second is looked up (a stream repeats it), the milliseconds added. 3x the regex path.
    # Only a head shaped "YYYY-MM-DDTHH:MM:SS" is cached (not "   2025-12-09T10:30", which
    # reads as a minute once stripped), and only seconds whose every millisecond fits in
    # int64 nanoseconds: `parse.rows` adds milliseconds to cache hits without a range check.
    if len(text) == 24 and text[19] == "." and text[23] == "Z" and text[13] == text[16] == ":":
        millis = text[20:23]
        if millis.isascii() and millis.isdigit():
            head = text[:19]
            second = ISO_SECOND_CACHE.get(head)
            if second is None and (second := _text_ns(head + "Z")) is not None:
                if len(ISO_SECOND_CACHE) >= _SECONDS_MAX:
                    ISO_SECOND_CACHE.clear()
                if second <= _NS_MAX - 999_000_000:
                    ISO_SECOND_CACHE[head] = second
            if second is not None:
                return _in_range(second + int(millis) * 1_000_000)
    if (match := _ISO.fullmatch(text)) is not None:
        return _iso_ns(text, match, naive, received_ns)
    if (match := _DECIMAL.fullmatch(text)) is not None:
        return _epoch_text_ns(match)
    if _SCIENTIFIC.fullmatch(text) is not None:
        return _epoch_float_ns(float(text))
    stripped = text.strip()
    return _text_ns(stripped, naive, received_ns) if stripped and stripped != text else None


def timestamp_ns(
    raw: object, naive: NaiveZone | None = None, *, received_ns: int | None = None
) -> int | None:
    """Read a device timestamp as epoch nanoseconds UTC; None when it is not one.

    Args:
        raw: ISO 8601 text (`Z` or an offset; without a zone it is in `naive`, else UTC), or
            epoch seconds, milliseconds, microseconds or nanoseconds as a number or numeric
            text, the unit chosen by magnitude (below 1e11 s, 1e14 ms, 1e17 us, else ns).
            Texts longer than `MAX_TIMESTAMP_TEXT` are not timestamps, so that the work
            stays linear in the text.
        naive: The zone of ISO timestamps without one; None means UTC.
        received_ns: When the message arrived, epoch ns. A local time in `naive`'s
            repeated autumn hour is read as the pass whose instant is nearer this (a
            device's two 02:30s are an hour apart, and both arrive soon after they are
            sent); without it, the first pass.

    Returns:
        Epoch nanoseconds within what `datetime64[ns]` holds, or None.
    """
    if isinstance(raw, str):
        return _text_ns(raw, naive, received_ns)
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return _epoch_int_ns(raw)
    if isinstance(raw, float):
        return _epoch_float_ns(raw)
    return None  # an object or array: not a timestamp


def seconds_ns(seconds: float) -> int | None:
    """Epoch seconds as nanoseconds, rounded to the microsecond; None when not a time."""
    return _seconds_ns(seconds)


def _seconds_ns(seconds: float) -> int | None:
    try:
        return _in_range(round(seconds * 1_000_000) * 1000)
    except (TypeError, ValueError, OverflowError):  # not a number, NaN, infinite
        return None
