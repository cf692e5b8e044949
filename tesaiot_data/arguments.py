"""What users type: durations (`"5min"`), moments (`since`/`until`), device and metric lists.

Every reader here takes the parameter's name, so that a value it cannot read raises a
`ConfigError` (a ValueError too) that names the parameter the user set. Device times (what
devices send) are read by `tesaiot_data.parse.timestamps`. pandas is imported when a value is
read, not here.
"""

from __future__ import annotations

import numbers
import re
import time
import warnings
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeAlias

from tesaiot_data.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "MAX_DURATION_S",
    "TimeLike",
    "duration_seconds",
    "moment_ns",
    "name_list",
    "parse_timedelta",
    "renamed_keyword",
]

TimeLike: TypeAlias = "str | pd.Timedelta | pd.Timestamp | datetime"
"""A moment as users give it: a duration back from now (`"7d"`, a Timedelta) or a time."""

MAX_DURATION_S = 36_500 * 86_400
"""The longest duration a user may give: 36,500 days (100 years).

Any such span added to or taken from a time between 1970 and 2162 stays within epoch
nanoseconds (1677-09-21 .. 2262-04-11), so no duration can overflow where it is used.
"""

_DURATION_RANGE = "positive and at most 36,500 days (100 years)"
_DURATION_HINT = "use for example '30s', '5min', '2h' or a number of seconds"
_MOMENT_HINT = "use for example '7d', '2h' or '2025-12-09 10:00' (UTC)"
_MOMENT_RANGE = "between 1677-09-21 and 2262-04-11 (UTC), the span of epoch nanoseconds"
_BARE_NUMBER_HINT = (
    "pass a duration back from now with its unit, such as '1h' or '3600s', "
    "or a time such as '2025-12-09 10:00' (UTC)"
)
# A number without a unit: pandas reads "3600" as 3600 ns back and 3600 as 3600 ns after 1970.
_BARE_NUMBER = re.compile(r"\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*")
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
        The duration, never NaT.

    Raises:
        ValueError: `value` is not a duration pandas can read (`""` and `"nan"` included);
            `pandas.errors.OutOfBoundsTimedelta` (a ValueError) when it lies beyond the
            ±292 years a Timedelta holds.
    """
    import pandas as pd  # noqa: PLC0415  (importing this module needs no pandas)

    if isinstance(value, str):
        value = _OLD_UNITS.sub(lambda match: _NEW_UNITS[match.group(1)], value)
    try:
        duration = pd.Timedelta(value)
    except OverflowError as exc:
        raise pd.errors.OutOfBoundsTimedelta(f"{value!r} is too long a duration") from exc
    if duration is pd.NaT:
        raise ValueError(f"{value!r} is not a duration")
    return duration


def duration_seconds(value: str | float | pd.Timedelta, *, name: str) -> float:
    """A positive duration in seconds from `"15min"`, `"5s"`, a number of seconds or a Timedelta.

    Args:
        value: The duration.
        name: The parameter's name, for the error message.

    Returns:
        Seconds, more than 0 and at most `MAX_DURATION_S` (100 years).

    Raises:
        ConfigError: `value` is not a duration, or not within that range (infinite, NaN,
            zero, negative, too long); a ValueError too. The message names the parameter
            and the range.
    """
    try:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, numbers.Real) or (
            isinstance(value, str) and value.strip().replace(".", "", 1).isdigit()
        ):
            seconds = float(value)
        else:
            seconds = parse_timedelta(value).total_seconds()
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(
            f"{name}={value!r} is not a duration",
            hint=f"{_DURATION_HINT}; a duration is {_DURATION_RANGE}",
        ) from exc
    if not 0 < seconds <= MAX_DURATION_S:  # NaN and inf fail too
        raise ConfigError(
            f"{name}={value!r} is out of range: a duration must be {_DURATION_RANGE}",
            hint=_DURATION_HINT,
        )
    return seconds


def moment_ns(
    value: TimeLike | timedelta | None,
    *,
    name: str = "since",
    now_ns: int | None = None,
    hint: str = _MOMENT_HINT,
) -> int | None:
    """Epoch nanoseconds of a moment a user gives (`since=`, `until=`, `before=`).

    Args:
        value: `"5min"` or a Timedelta / timedelta (back from now), a time
            (`"2025-12-09 10:00"`, a datetime or Timestamp; naive means UTC), or None. A bare
            number (`3600`, `"3600"`) is refused: it could mean seconds back or a time.
        name: The parameter's name, for the error message.
        now_ns: The present, in epoch ns; default the clock.
        hint: What to tell the user to pass instead.

    Returns:
        The epoch nanoseconds, or None when `value` is None.

    Raises:
        ConfigError: `value` is neither a duration nor a time, is a bare number, or lies
            outside 1677-09-21 .. 2262-04-11 (UTC), the span of epoch nanoseconds (a
            ValueError too); the message names the parameter (and the range).
    """
    import numpy as np  # noqa: PLC0415  (importing this module needs no pandas)
    import pandas as pd  # noqa: PLC0415

    if value is None:
        return None
    if isinstance(value, timedelta | np.timedelta64):
        value = pd.Timedelta(value)
    elif isinstance(value, bool | numbers.Number) or (
        isinstance(value, str) and _BARE_NUMBER.fullmatch(value)
    ):
        raise ConfigError(f"{name}={value!r} is a number without a unit", hint=_BARE_NUMBER_HINT)
    try:
        back = value if isinstance(value, pd.Timedelta) else _duration_or_none(value)
        if back is not None:
            ns = (time.time_ns() if now_ns is None else now_ns) - back.value
        else:
            stamp = pd.Timestamp(value)
            if stamp is pd.NaT:
                raise ValueError("NaT")
            stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
            ns = int(stamp.value)  # OverflowError outside the span of epoch ns
    except (OverflowError, pd.errors.OutOfBoundsDatetime, pd.errors.OutOfBoundsTimedelta):
        ns = None  # out of range: below
    except (TypeError, ValueError) as exc:  # pandas' DateParseError is a ValueError
        raise ConfigError(f"{name}={value!r} is neither a duration nor a time", hint=hint) from exc
    if ns is None or not pd.Timestamp.min.value <= ns <= pd.Timestamp.max.value:
        raise ConfigError(
            f"{name}={value!r} is out of range: a time must lie {_MOMENT_RANGE}", hint=hint
        )
    return ns


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


def _duration_or_none(value: object) -> pd.Timedelta | None:
    """The duration a string spells, or None when it is not one (a time, say).

    Raises:
        OutOfBoundsTimedelta: A duration longer than a Timedelta holds (±292 years).
    """
    import pandas as pd  # noqa: PLC0415  (importing this module needs no pandas)

    if not isinstance(value, str):
        return None
    try:
        return parse_timedelta(value)
    except pd.errors.OutOfBoundsTimedelta:
        raise
    except ValueError:
        return None


def renamed_keyword(old: str, old_value: object, new: str, new_value: object) -> bool:
    """Whether a renamed `Collector` keyword came by its old name (then it warns).

    Args:
        old: The old keyword's name.
        old_value: What was passed by it (None: not passed).
        new: The new keyword's name.
        new_value: What was passed by that (None: not passed).

    Returns:
        True when the value came by the old name (a `DeprecationWarning` pointing at the
        caller's `Collector(...)` line was issued): use `old_value`.

    Raises:
        ConfigError: Both names were given.
    """
    if old_value is None:
        return False
    if new_value is not None:
        raise ConfigError(
            f"{old}= and {new}= are one option; {old}= is its old name",
            hint=f"pass only {new}=",
        )
    warnings.warn(
        f"Collector({old}=...) is now Collector({new}=...); the old name will be removed "
        "in a future release",
        DeprecationWarning,
        stacklevel=3,  # the user's Collector(...) line: this function, __init__, the caller
    )
    return True
