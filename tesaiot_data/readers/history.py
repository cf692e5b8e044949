"""History: one DataFrame over the rows on disk and the collector's live window.

`Collector.history()` joins two sources of the same stream: a dataset on disk (the
collector's own, `Collector(dataset=...)`, or the folder a separate recorder such as
`tesaiot-data record --dataset` writes) and the rolling window in memory.

The seam is the window's watermark `w`, the oldest `received_at` the window holds. The
window holds every row this collector received at or after `w` (it evicts from the oldest
end only), so it is the source from `w` on, and the files are the source before it:

- The collector's own dataset holds exactly the rows the window held, with the same
  `received_at`. History takes from the files the rows received before `w` and from the
  window the rest: every row once, by construction. The collector's pending rows (evicted
  from the window, not yet written) are flushed first, and the window is read before that
  flush, so a row evicted before the window was read is on disk by the time the files are.
- A dataset written by another process holds the same messages with that process's
  receive times, a little earlier or later than this collector's. Near the seam a message
  may be in both sources or, read by receive time alone, in neither. So the files are read
  up to `w + SEAM_MARGIN`, and a file row received within `SEAM_MARGIN` of `w` is dropped
  when a window row received within `SEAM_MARGIN` of `w` is equal to it in every data
  column (timestamp, device_id, sensor_type, metric, value, unit, value_text; not
  `received_at`, which differs between receivers). The window's copy is kept. What this
  cannot join: a row whose timestamp is the receive time (the device sent none), which
  differs between the two processes, and rows the other process had not yet written that
  this window no longer holds (keep the window longer than the recorder's flush interval).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from tesaiot_data.arguments import TimeLike, moment_ns, name_list
from tesaiot_data.errors import disk_error
from tesaiot_data.files.store import Location, StorePath, location
from tesaiot_data.readers.disk import read_rows
from tesaiot_data.schema import CATEGORY_COLUMNS, COLUMNS, empty_frame, epoch_ns, text_categories
from tesaiot_data.window.rolling import RollingWindow

__all__ = ["SEAM_MARGIN", "DatasetFeed", "history_frame"]

#: How far apart two processes' receive times of one message may be: the span on each side
#: of the watermark in which rows of another process's dataset are matched against the
#: window's.
SEAM_MARGIN = pd.Timedelta(seconds=60)

# The columns that make one reading, whoever received it.
_IDENTITY = [name for name in COLUMNS if name != "received_at"]


class DatasetFeed(Protocol):
    """The collector's way to its own dataset: write what is pending now."""

    @property
    def error(self) -> BaseException | None:
        """Why the last write failed, or None."""

    def flush(self) -> None:
        """Write the pending rows now; a failure is kept in `error`, not raised."""


def history_frame(
    window: RollingWindow,
    *,
    since: TimeLike | None = "7d",
    until: TimeLike | None = None,
    devices: Iterable[str] | str | None = None,
    metrics: Iterable[str] | str | None = None,
    dataset: str | Path | StorePath | None = None,
    own_dataset: str | Path | StorePath | None = None,
    own_feed: DatasetFeed | None = None,
) -> pd.DataFrame:
    """Return the rows of a dataset and of a live window as one frame, each row once.

    See the module's description for the seam. `since` and `until` select by receive time,
    as `Collector.frame(since=...)` does; the dataset's `date=` partitions are by receive
    time too, so only those in range are listed, and the time, device and metric filters
    are pushed down to the Parquet row groups.

    Args:
        window: The collector's rolling window.
        since: Rows received at or after this time: a duration back from now (`"7d"`), a
            time (naive means UTC), or None for all.
        until: Rows received before this time (same forms), or None for up to now.
        devices: Only these device ids (one string is one device).
        metrics: Only these metrics (one string is one metric).
        dataset: The dataset to read; default `own_dataset`.
        own_dataset: The collector's own auto-persist folder (`Collector(dataset=...)`), if any.
        own_feed: The feed that writes `own_dataset`, flushed before reading; None when
            the collector is not running (its rows are all on disk then).

    Returns:
        A canonical frame: timestamp and received_at `datetime64[ns, UTC]`, value
        `float64`, the strings `category` (only those the rows use), as `frame()` returns;
        rows in `received_at` order, a fresh RangeIndex.

    Raises:
        ConfigError: `since` or `until` is not a time or duration.
        FileNotFoundError: `dataset` was given and nothing is there.
        NotARecordingError: A file in the dataset is not a recording.
        RecordingError: The collector could not write its pending rows to its dataset.
    """
    device_list = name_list(devices)
    metric_list = name_list(metrics)
    now = time.time_ns()
    start = moment_ns(since, name="since", now_ns=now)
    end = moment_ns(until, name="until", now_ns=now)
    if start is not None and end is not None and end <= start:
        return empty_frame()
    if dataset is None and own_dataset is None:
        warnings.warn(
            "history() has no dataset to read past rows from (no Collector(dataset=...) and "
            "no dataset=), so it returns the live window only; pass dataset= the folder that "
            "`tesaiot-data record --dataset` writes, or create the collector with "
            "dataset='data/telemetry' to keep its rows",
            UserWarning,
            stacklevel=3,  # the user's collector.history(...) line
        )
        live, _ = window.read(
            since_ns=start, until_ns=end, devices=device_list, metrics=metric_list
        )
        return _concat(empty_frame(), live)
    path, own = _which_dataset(dataset, own_dataset)

    # The window first, then the flush: a row evicted before this read is on disk after it.
    live, watermark = window.read(
        since_ns=start, until_ns=end, devices=device_list, metrics=metric_list
    )
    if own and own_feed is not None:
        own_feed.flush()
        if own_feed.error is not None:
            raise disk_error(
                f"history() could not write the collector's pending rows to {path}: "
                f"{own_feed.error}",
                path=path,
                then="frame() still has the window",
            )

    margin = 0 if own else int(SEAM_MARGIN.value)
    stored_end = end if watermark is None else _earliest(end, watermark + margin)
    if (start is not None and stored_end is not None and stored_end <= start) or (
        own and not path.exists()
    ):
        stored = empty_frame()
    else:
        stored = read_rows(
            path,
            received_since=start,
            received_until=stored_end,
            devices=device_list,
            metrics=metric_list,
        )
    if margin and watermark is not None:
        stored = _drop_seen(stored, live, low=watermark - margin, high=watermark + margin)
    return _concat(stored, live)


def _which_dataset(
    dataset: str | Path | StorePath | None, own: str | Path | StorePath | None
) -> tuple[Location, bool]:
    if dataset is None:
        assert own is not None  # history_frame answers from the window without either
        return location(own), True
    path = location(dataset)
    return path, own is not None and path.resolve() == location(own).resolve()


def _earliest(a: int | None, b: int) -> int:
    return b if a is None else min(a, b)


def _received_ns(frame: pd.DataFrame) -> np.ndarray:
    return epoch_ns(frame["received_at"])


def _drop_seen(stored: pd.DataFrame, live: pd.DataFrame, *, low: int, high: int) -> pd.DataFrame:
    """Drop the stored rows near the seam that the window holds too (see the module)."""
    if stored.empty or live.empty:
        return stored
    stored_zone = _received_ns(stored) >= low  # the stored rows end before `high`
    live_zone = _received_ns(live) < high
    if not stored_zone.any() or not live_zone.any():
        return stored
    seen = np.isin(_identity(stored.loc[stored_zone]), _identity(live.loc[live_zone]))
    drop = np.zeros(len(stored), dtype=bool)
    drop[np.flatnonzero(stored_zone)] = seen
    return stored.loc[~drop]


def _identity(frame: pd.DataFrame) -> np.ndarray:
    """A 64-bit hash of each row's data columns, equal for equal values (NaN equals NaN)."""
    columns = {name: _plain_categories(frame[name]) for name in _IDENTITY}
    hashes: np.ndarray = pd.util.hash_pandas_object(pd.DataFrame(columns), index=False).to_numpy()
    return hashes


def _plain_categories(column: pd.Series) -> pd.Series:
    """A categorical column with `str` categories, only the used ones, as `frame()` has."""
    if not isinstance(column.dtype, pd.CategoricalDtype):
        return column
    categorical = column.array.remove_unused_categories()
    return pd.Series(
        pd.Categorical.from_codes(
            categorical.codes, categories=text_categories(categorical.categories), validate=False
        ),
        index=column.index,
    )


def _concat(stored: pd.DataFrame, live: pd.DataFrame) -> pd.DataFrame:
    parts = [frame for frame in (stored, live) if not frame.empty]
    if not parts:
        return empty_frame()
    columns: dict[str, object] = {}
    for name in COLUMNS:
        if name in CATEGORY_COLUMNS:
            plain = [_plain_categories(part[name]).array for part in parts]
            columns[name] = plain[0] if len(plain) == 1 else pd.api.types.union_categoricals(plain)
        else:
            columns[name] = pd.concat([part[name] for part in parts], ignore_index=True)
    frame = pd.DataFrame(columns)
    if not frame["received_at"].is_monotonic_increasing:
        frame = frame.sort_values("received_at", kind="stable", ignore_index=True)
    return frame
