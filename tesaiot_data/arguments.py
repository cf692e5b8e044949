"""What users type: durations (`"5min"`), moments (`since`/`until`), device and metric lists.

Every reader here takes the parameter's name, so that a value it cannot read raises a
`ConfigError` (a ValueError too) that names the parameter the user set. Device times (what
devices send) are read by `tesaiot_data.parse.timestamps`. pandas is imported when a value is
read, not here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, TypeAlias

from tesaiot_data.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "TimeLike",
    "duration_seconds",
    "moment_ns",
    "name_list",
    "parse_timedelta",
]

TimeLike: TypeAlias = "str | pd.Timedelta | pd.Timestamp | datetime"
"""A moment as users give it: a duration back from now (`"7d"`, a Timedelta) or a time."""

_DURATION_HINT = "use for example '30s', '5min', '2h' or a number of seconds"
_MOMENT_HINT = "use for example '7d', '2h' or '2025-12-09 10:00' (UTC)"
# pandas 3 warns on, and pandas 4 refuses, the unit spellings "7d", "1w" and "2H" that users
# type; they mean what "7D", "1W" and "2h" mean, so they are rewritten before pandas sees them.
_OLD_UNITS = re.compile(r"(?<=[0-9\s])(d|w|H)(?![A-Za-z])")
_NEW_UNITS = {"d": "D", "w": "W", "H": "h"}


def parse_timedelta(value: str | float | pd.Timedelta) -> pd.Timedelta:
    """`pd.Timedelta(value)`, also accepting `"7d"`, `"1w"` and `"2H"` without a warning.

    Args:
        value: A duration string such as `"30s"`, `"5min"`, `"7d"`; a Timedelta; or a number
            of nanoseconds, as `pd.Timedelta` reads it.

    Returns:
        The duration.

    Raises:
        ValueError: `value` is not a duration pandas can read.
    """
    import pandas as pd  # noqa: PLC0415  (importing this module needs no pandas)

    if isinstance(value, str):
        value = _OLD_UNITS.sub(lambda match: _NEW_UNITS[match.group(1)], value)
    return pd.Timedelta(value)


def duration_seconds(value: str | float | pd.Timedelta, *, name: str) -> float:
    """A positive duration in seconds from `"15min"`, `"5s"`, a number of seconds or a Timedelta.

    Args:
        value: The duration.
        name: The parameter's name, for the error message.

    Returns:
        Seconds, > 0.

    Raises:
        ConfigError: `value` is not a positive duration (a ValueError too); the message
            names the parameter.
    """
    try:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, int | float) or (
            isinstance(value, str) and value.strip().replace(".", "", 1).isdigit()
        ):
            seconds = float(value)
        else:
            seconds = parse_timedelta(value).total_seconds()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}={value!r} is not a duration", hint=_DURATION_HINT) from exc
    if not seconds > 0:
        raise ConfigError(f"{name}={value!r} must be a positive duration", hint=_DURATION_HINT)
    return seconds


def moment_ns(
    value: TimeLike | None,
    *,
    name: str = "since",
    now_ns: int | None = None,
    hint: str = _MOMENT_HINT,
) -> int | None:
    """Epoch nanoseconds of a moment a user gives (`since=`, `until=`, `before=`).

    Args:
        value: `"5min"` or a Timedelta (back from now), a time (`"2025-12-09 10:00"`, a
            datetime or Timestamp; naive means UTC), or None.
        name: The parameter's name, for the error message.
        now_ns: The present, in epoch ns; default the clock.
        hint: What to tell the user to pass instead.

    Returns:
        The epoch nanoseconds, or None when `value` is None.

    Raises:
        ConfigError: `value` is neither a duration nor a time (a ValueError too); the
            message names the parameter.
    """
    import pandas as pd  # noqa: PLC0415  (importing this module needs no pandas)

    if value is None:
        return None
    try:
        if isinstance(value, pd.Timedelta) or (isinstance(value, str) and _is_duration(value)):
            now = time.time_ns() if now_ns is None else now_ns
            return now - int(parse_timedelta(value).total_seconds() * 1e9)
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:  # pandas' DateParseError is a ValueError
        stamp = exc
    if not isinstance(stamp, pd.Timestamp) or stamp is pd.NaT:
        raise ConfigError(f"{name}={value!r} is neither a duration nor a time", hint=hint)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value)


def name_list(names: Iterable[str] | str | None) -> list[str] | None:
    """Device ids or metrics as a list: one string is one name, not its characters.

    Args:
        names: One name, any iterable of names (each taken as `str`), or None.

    Returns:
        The names in the order given; None when `names` is None (no filter).
    """
    if names is None:
        return None
    return [names] if isinstance(names, str) else [str(name) for name in names]


def _is_duration(text: str) -> bool:
    try:
        parse_timedelta(text)
    except ValueError:
        return False
    return True
