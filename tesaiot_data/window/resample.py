"""Resampling telemetry rows to regular time buckets, and the watermark that finds late rows.

`resample_frame()` turns the long rows of a canonical frame (`collector.frame()`,
`load_recording()`) into a wide table: one row per time bucket, one column per
(device_id, metric). `Collector.resample()` is the live form; it also moves a `Watermark`
forward, so that rows arriving afterwards for buckets already handed out as complete are
counted as late.

Buckets are fixed-length and anchored at the Unix epoch (`origin="epoch"` in pandas terms),
so a bucket's bounds never depend on which rows the window holds: the 10 s bucket
`10:30:40` is the same in every call, before and after midnight.

In a time zone (`tz=`, or a frame whose `timestamp` column is in one, as pandas does), the
buckets follow the local clock instead: anchored at local midnight, so `"1D"` gives
calendar days, 23 hours long on the day daylight saving time starts and 25 on the day it
ends, and `"1h"` gives local hours, the repeated autumn hour twice (one bucket per pass).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from tesaiot_data.errors import ConfigError
from tesaiot_data.schema import epoch_ns

__all__ = ["HOWS", "MAX_CELLS", "Watermark", "resample_frame", "rule_ns"]

#: The aggregations `resample_frame()` accepts (pandas' names, pandas' semantics: NaN-skipping,
#: `std` with ddof=1; `first` and `last` by device time).
HOWS = ("mean", "min", "max", "sum", "count", "first", "last", "median", "std")
#: The most cells (buckets x series) a result may have: a 1 ms rule over a long window with a
#: wrong device clock would otherwise ask for billions.
MAX_CELLS = 50_000_000

_RULE_HINT = "use a fixed-length pandas offset alias such as '10s', '1min', '15min' or '1h'"
_INT64 = np.iinfo(np.int64)


def rule_ns(rule: str | pd.Timedelta) -> int:
    """Return the length of a resampling rule in nanoseconds.

    Args:
        rule: A fixed-length pandas offset alias (`"10s"`, `"250ms"`, `"1min"`, `"1h"`,
            `"1D"`) or a positive Timedelta.

    Returns:
        The bucket length, > 0.

    Raises:
        ConfigError: The rule is not an offset alias, has no fixed length (`"MS"`, `"W"`),
            or is not positive.
    """
    try:
        if isinstance(rule, pd.Timedelta):
            step = int(rule.value)
        else:
            step = int(pd.tseries.frequencies.to_offset(rule).nanos)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"rule={rule!r} is not a resampling rule: {exc}", hint=_RULE_HINT
        ) from None
    if step <= 0:
        raise ConfigError(f"rule={rule!r} must be longer than zero", hint=_RULE_HINT)
    return step


def _hows(how: str | Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """The aggregations asked for, and whether they came as a list (a third column level)."""
    many = not isinstance(how, str)
    hows = (how,) if isinstance(how, str) else tuple(how)
    unknown = [h for h in hows if not isinstance(h, str) or h not in HOWS]
    if unknown or not hows:
        raise ConfigError(
            f"how={how!r} is not an aggregation this can compute"
            + (f" ({', '.join(map(repr, unknown))} unknown)" if unknown else ": the list is empty"),
            hint=f"use one of {', '.join(HOWS)}, or a list of them",
        )
    if len(set(hows)) != len(hows):
        raise ConfigError(f"how={how!r} names an aggregation twice", hint="name each one once")
    return hows, many


def _bucket_starts(timestamps: np.ndarray, step: int) -> np.ndarray:
    """Floor int64 epoch ns to multiples of `step` (numpy's % is a floor modulo)."""
    # The floor of a time within one step of datetime64's lower bound would leave int64.
    clipped = np.maximum(timestamps, _INT64.min + 1 + step)
    starts: np.ndarray = clipped - clipped % step
    return starts


def _zone(tz: str | tzinfo | None, frame: pd.DataFrame) -> tzinfo | None:
    """The zone of the buckets: `tz`, else the frame's own; None for UTC (or no zone)."""
    if tz is None:
        own = getattr(frame["timestamp"].dtype, "tz", None)
        return None if own is None or str(own) == "UTC" else own
    if isinstance(tz, tzinfo):
        return tz
    if isinstance(tz, str) and tz.strip():
        try:
            return None if tz.strip() == "UTC" else ZoneInfo(tz.strip())
        except (ZoneInfoNotFoundError, ValueError):
            pass
    raise ConfigError(
        f"tz={tz!r} is not a time zone",
        hint="pass an IANA name such as 'Europe/Berlin', a tzinfo, or None for UTC",
    )


def _wall_ns(utc_ns: np.ndarray, zone: tzinfo) -> np.ndarray:
    """Epoch ns UTC -> the local wall-clock time in `zone`, as naive epoch ns."""
    local = pd.DatetimeIndex(utc_ns.view("M8[ns]")).tz_localize("UTC").tz_convert(zone)
    wall: np.ndarray = local.tz_localize(None).asi8
    return wall


def _local_bucket_starts(timestamps: np.ndarray, step: int, zone: tzinfo) -> np.ndarray:
    """Bucket starts (epoch ns UTC) of fixed-length buckets on the local clock of `zone`.

    Each row's wall-clock time is floored to `step` from local midnight of 1970-01-01, and
    that wall-clock start placed back in UTC with the row's own offset when that gives the
    start (so in the repeated autumn hour each pass has its own buckets); otherwise (a
    change of offset between the start and the row) with the offset at the start, moved
    forward to the end of a spring gap, the first pass of an autumn one.
    """
    wall = _wall_ns(timestamps, zone)
    starts = _bucket_starts(wall, step)
    placed = starts - (wall - timestamps)
    moved = _wall_ns(placed, zone) != starts
    if moved.any():
        local = pd.DatetimeIndex(starts[moved].view("M8[ns]")).tz_localize(
            zone, ambiguous=np.ones(int(moved.sum()), dtype=bool), nonexistent="shift_forward"
        )
        placed[moved] = local.tz_convert("UTC").tz_localize(None).asi8
    return placed


def _empty(hows: tuple[str, ...], many: bool, zone: tzinfo | None = None) -> pd.DataFrame:
    names = ["device_id", "metric", "how"] if many else ["device_id", "metric"]
    columns = pd.MultiIndex.from_arrays([[] for _ in names], names=names)
    index = pd.DatetimeIndex([], dtype="datetime64[ns, UTC]", name="timestamp")
    if zone is not None:
        index = index.tz_convert(zone)
    return pd.DataFrame(index=index, columns=columns, dtype=np.float64)


def resample_frame(
    frame: pd.DataFrame,
    rule: str | pd.Timedelta,
    *,
    how: str | Sequence[str] = "mean",
    tz: str | tzinfo | None = None,
) -> pd.DataFrame:
    """Aggregate a canonical frame's numeric values per device, metric and time bucket.

    Rows are put in buckets by their device time (`timestamp`), `[start, start + rule)`,
    anchored at the Unix epoch, or in a time zone at local midnight (see the module's
    docstring: `"1D"` then gives calendar days of 23, 24 or 25 hours). Rows without a
    number (text values such as an `ai_prediction` label) are left out. Only buckets that
    hold at least one row are returned: a device clock stuck in 1970 adds one row to the
    result, not fifty years of empty ones (`result.asfreq(rule)` adds the empty buckets
    in between as NaN; in a zone, `asfreq` counts fixed lengths, not calendar days).

    Example:
        >>> resample_frame(collector.frame(), "10s")  # doctest: +SKIP
        device_id                  sensor-01           sensor-02
        metric                  humidity temperature humidity temperature
        timestamp
        2025-12-09 10:30:40+00:00  61.20       25.10    58.00       24.20

    Args:
        frame: Rows in the canonical columns (at least timestamp, device_id, metric and
            value), in any order.
        rule: The bucket length: a fixed-length pandas offset alias (`"10s"`, `"1min"`).
        how: One aggregation of `HOWS`, or a list of them.
        tz: The zone whose local clock the buckets follow: an IANA name
            (`"Europe/Berlin"`) or a tzinfo. None uses the frame's own zone (a
            `timestamp` column converted with `.dt.tz_convert(...)`), UTC for the frames
            this package returns.

    Returns:
        A wide frame. Index: the buckets' starts, `datetime64[ns, UTC]` (in a zone:
        `datetime64[ns, <zone>]`), named `timestamp`, ascending. Columns: a MultiIndex
        (device_id, metric), both levels plain strings, sorted; with a list `how`, a
        third level `how` in the order given. Values are float64 (`count` is int64, 0
        where a series had no row in a bucket); NaN where a series had no row in a bucket.

    Raises:
        ConfigError: `rule`, `how` or `tz` is not valid, or the result would have more
            than `MAX_CELLS` cells.
    """
    step = rule_ns(rule)
    hows, many = _hows(how)
    zone = _zone(tz, frame)
    numeric = frame["value"].notna().to_numpy()
    if not numeric.any():
        return _empty(hows, many, zone)
    stamps = epoch_ns(frame["timestamp"])[numeric]
    devices = pd.Categorical(frame["device_id"])
    metrics = pd.Categorical(frame["metric"])
    device_codes = devices.codes[numeric].astype(np.int64)
    metric_codes = metrics.codes[numeric].astype(np.int64)
    values = frame["value"].to_numpy(dtype=np.float64)[numeric]

    if "first" in hows or "last" in hows:  # by device time; ties keep arrival order
        order = np.argsort(stamps, kind="stable")
        stamps, device_codes = stamps[order], device_codes[order]
        metric_codes, values = metric_codes[order], values[order]

    # Hash-based, then only the distinct keys sorted: cheaper than np.unique's full sort.
    starts = (
        _bucket_starts(stamps, step) if zone is None else _local_bucket_starts(stamps, step, zone)
    )
    bucket_of_row, buckets = pd.factorize(starts, sort=True)
    series_key = device_codes * len(metrics.categories) + metric_codes
    series_of_row, series = pd.factorize(series_key, sort=True)
    cells = len(buckets) * len(series)
    if cells > MAX_CELLS:
        raise ConfigError(
            f"resampling to {rule!r} gives {len(buckets):,} buckets x {len(series):,} series, "
            f"more than {MAX_CELLS:,} cells",
            hint="use a longer rule, or filter devices, metrics or since",
        )

    # One group per occupied cell, keyed by its position in the dense result.
    cell_of_row = bucket_of_row.astype(np.int64) * len(series) + series_of_row
    table = pd.Series(values).groupby(cell_of_row, sort=False).agg(list(hows))
    occupied = table.index.to_numpy(dtype=np.int64)

    names = np.asarray(devices.categories.astype(str), dtype=object)[
        series // len(metrics.categories)
    ]
    metric_names = np.asarray(metrics.categories.astype(str), dtype=object)[
        series % len(metrics.categories)
    ]
    column_order = np.lexsort((metric_names, names))  # device first, then metric

    blocks: dict[str, np.ndarray] = {}
    for name in hows:
        fill, dtype = (0, np.int64) if name == "count" else (np.nan, np.float64)
        dense = np.full(cells, fill, dtype=dtype)
        dense[occupied] = table[name].to_numpy(dtype=dtype)
        blocks[name] = dense.reshape(len(buckets), len(series))[:, column_order]

    index = pd.DatetimeIndex(buckets.view("M8[ns]"), name="timestamp").tz_localize("UTC")
    if zone is not None:
        index = index.tz_convert(zone)
    device_level, metric_level = names[column_order], metric_names[column_order]
    if not many:
        columns = pd.MultiIndex.from_arrays(
            [device_level, metric_level], names=["device_id", "metric"]
        )
        return pd.DataFrame(blocks[hows[0]], index=index, columns=columns)
    # (device, metric, how) with how fastest: every series' aggregations side by side.
    data = {
        (device, metric, name): blocks[name][:, i]
        for i, (device, metric) in enumerate(zip(device_level, metric_level, strict=True))
        for name in hows
    }
    result = pd.DataFrame(data, index=index)
    result.columns = result.columns.set_names(["device_id", "metric", "how"])
    return result


class Watermark:
    """The point in device time up to which resampled buckets were handed out as complete.

    Each `Collector.resample()` call that returns rows moves the watermark to the earlier of
    the end of the newest bucket it returned and the call's clock floored to the rule: every
    bucket before that point had ended when it was handed out (or was handed out empty). It
    never moves back. A row that enters the window afterwards with a device time before the
    watermark belongs to a bucket already handed out as complete: it is late. One watermark
    serves every rule and filter, so a row is counted once, even when it is late for
    several rules. A row that enters the window during the call itself (between reading
    the window and moving the watermark, a few milliseconds) is in neither and goes
    uncounted. Thread-safe: `advance()` from any thread, `count()` from the ingest thread.
    """

    def __init__(self) -> None:
        self._watermark_ns: int | None = None
        self._late_rows = 0
        self._lock = threading.Lock()

    @property
    def watermark_ns(self) -> int | None:
        """The watermark in epoch ns, or None before the first resample."""
        return self._watermark_ns

    @property
    def late_rows(self) -> int:
        """Rows counted late so far."""
        return self._late_rows

    def advance(self, result: pd.DataFrame, step: int, *, now_ns: int) -> None:
        """Move the watermark past the complete buckets of a resample result.

        Args:
            result: What `resample_frame()` returned (its index: bucket starts).
            step: The rule's length in ns.
            now_ns: The time of the call, epoch ns.
        """
        if result.empty:
            return
        newest_end = int(result.index.asi8[-1]) + step  # a Python int: no overflow
        complete = min(newest_end, now_ns - now_ns % step)
        with self._lock:
            if self._watermark_ns is None or complete > self._watermark_ns:
                self._watermark_ns = complete

    def count(self, timestamps: np.ndarray) -> int:
        """Count the rows (int64 epoch ns device times) that are late, and add them up.

        Args:
            timestamps: The device times of rows just added to the window.

        Returns:
            How many of them are late.
        """
        watermark = self._watermark_ns
        if watermark is None:
            return 0
        late = int(np.count_nonzero(timestamps < watermark))
        self._late_rows += late  # only the ingest thread adds
        return late
