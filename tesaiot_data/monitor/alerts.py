"""Alert rules on live telemetry: thresholds on a metric, and devices that went silent.

A rule fires once when its condition starts and clears once when it ends, per (rule,
device). Threshold rules are evaluated on every batch on the collector's worker thread,
vectorised over the batch's columns; silent rules on the housekeeping tick from each device's
last receive time. Events are kept (the last `MAX_EVENTS`), and logged and handed to the
rules' callbacks on the housekeeping thread, so a slow or failing callback never holds up
ingest.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tesaiot_data.errors import ConfigError, NotARecordingError
from tesaiot_data.files.parquet import check_metadata, write_table
from tesaiot_data.parse.timestamps import duration_seconds, parse_timedelta
from tesaiot_data.schema import TIME_TYPE
from tesaiot_data.window.rolling import Chunk

__all__ = [
    "ALERTS_SCHEMA",
    "ALERT_COLUMNS",
    "MAX_EVENTS",
    "AlertEngine",
    "AlertEvent",
    "AlertRule",
    "AlertState",
    "alerts_sidecar",
    "events_frame",
    "load_alerts",
    "write_alerts",
]

logger = logging.getLogger(__name__)

MAX_EVENTS = 10_000
"""Alert events kept in memory; older ones are dropped (counted)."""
MAX_EVENTS_PER_RECORDING = 100_000
"""Alert events kept for one recording's `<stem>.alerts.parquet`; more are dropped (logged)."""

AlertState = Literal["firing", "cleared"]
ALERT_COLUMNS = ("time", "rule", "device", "metric", "value", "state")
ALERTS_SCHEMA = pa.schema(
    [
        pa.field("time", TIME_TYPE, nullable=False),
        pa.field("rule", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("metric", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("state", pa.dictionary(pa.int8(), pa.string()), nullable=False),
    ]
)
_ALERTS_SUFFIX = ".alerts.parquet"
_STATES = ("firing", "cleared")
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A rule's condition started (`firing`) or ended (`cleared`) for one device.

    Args:
        time_ns: When, in epoch ns UTC. Threshold rules: the receive time of the row that
            changed the state. Silent rules: firing at last receive time + `silent`, cleared
            at the receive time of the device's next message.
        rule: The rule's name.
        device: The device id.
        metric: The rule's metric; None for silent rules.
        value: The row's value (threshold rules) or the device's silence in seconds when the
            state changed (silent rules).
        state: `"firing"` or `"cleared"`.
    """

    time_ns: int
    rule: str
    device: str
    metric: str | None
    value: float
    state: AlertState

    @property
    def time(self) -> pd.Timestamp:
        """`time_ns` as a UTC Timestamp."""
        return pd.Timestamp(self.time_ns, unit="ns", tz="UTC")


def _zero_or_duration(value: str | float | pd.Timedelta, *, name: str) -> float:
    if isinstance(value, str | pd.Timedelta) and not isinstance(value, bool):
        try:
            if parse_timedelta(value) == pd.Timedelta(0):
                return 0.0
        except ValueError:
            pass
    elif value == 0 and not isinstance(value, bool):
        return 0.0
    return duration_seconds(value, name=name)


def _threshold(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} is not a finite number", hint=f"pass {name}=30.0")
    return float(value)


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One alert rule: a threshold on a metric, or silence of a device.

    Build it with `AlertRule.make` (what `Collector.alert` does), which checks the options.

    Args:
        name: Unique among the collector's rules.
        metric: The metric a threshold rule watches; None for a silent rule.
        above: Fire while a value is greater than this.
        below: Fire while a value is less than this (with `above`: outside the band).
        for_s: Seconds the condition must hold (by receive time) before firing.
        devices: Only these device ids; None watches every device.
        silent_s: Fire when a device sent nothing for this many seconds.
        callback: Called with each `AlertEvent` of the rule, on the housekeeping thread.
    """

    name: str
    metric: str | None = None
    above: float | None = None
    below: float | None = None
    for_s: float = 0.0
    devices: frozenset[str] | None = None
    silent_s: float | None = None
    callback: Callable[[AlertEvent], object] | None = field(default=None, compare=False)

    @classmethod
    def make(
        cls,
        name: str,
        *,
        metric: str | None = None,
        above: float | None = None,
        below: float | None = None,
        for_: str | float | pd.Timedelta = "0s",
        devices: Iterable[str] | str | None = None,
        silent: str | float | pd.Timedelta | None = None,
        callback: Callable[[AlertEvent], object] | None = None,
    ) -> AlertRule:
        """Check the options of `Collector.alert` and return the rule.

        Raises:
            ConfigError: The options do not make one rule (see the message and hint).
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"alert name {name!r} must be a non-empty string", hint="'too-hot'")
        high, low = _threshold(above, "above"), _threshold(below, "below")
        try:
            for_s = _zero_or_duration(for_, name="for_")
            silent_s = None if silent is None else duration_seconds(silent, name="silent")
        except ValueError as exc:
            raise ConfigError(str(exc), hint="use for example '30s', '5min' or 10.0") from exc
        if high is None and low is None and silent_s is None:
            raise ConfigError(
                f"alert {name!r} has no condition",
                hint="pass metric= with above= and/or below=, or silent='30s'",
            )
        if silent_s is not None:
            if high is not None or low is not None:
                raise ConfigError(
                    f"alert {name!r} has both a threshold and silent=",
                    hint="make two rules with different names",
                )
            if metric is not None or for_s:
                raise ConfigError(
                    f"alert {name!r}: a silent rule watches whole devices",
                    hint="drop metric= and for_= (silent= is itself the duration)",
                )
        elif not isinstance(metric, str) or not metric:
            raise ConfigError(
                f"alert {name!r} has a threshold but no metric",
                hint="pass metric='temperature'",
            )
        if high is not None and low is not None and not low < high:
            raise ConfigError(
                f"alert {name!r}: below={low} must be less than above={high}",
                hint="the rule fires while a value is outside [below, above]",
            )
        if callback is not None and not callable(callback):
            raise ConfigError(
                f"alert {name!r}: callback {callback!r} is not callable",
                hint="pass a function that takes an AlertEvent",
            )
        chosen = None
        if devices is not None:
            chosen = frozenset([devices] if isinstance(devices, str) else devices)
            if not chosen or not all(isinstance(d, str) and d for d in chosen):
                raise ConfigError(
                    f"alert {name!r}: devices={devices!r} must name one or more device ids",
                    hint="pass devices=['dev-1'] or leave it out for every device",
                )
        return cls(name, metric, high, low, for_s, chosen, silent_s, callback)

    @property
    def is_silent(self) -> bool:
        """Whether this is a silent rule (else a threshold rule)."""
        return self.silent_s is not None


class _Run:
    """A (rule, device) whose condition holds now, or whose alert is firing."""

    __slots__ = ("firing", "since_ns")

    def __init__(self) -> None:
        self.since_ns: int | None = None  # start of the current run of rows in breach
        self.firing = False


class AlertCapture:
    """The events of one recording, from its start until `close()`."""

    def __init__(self) -> None:
        self.events: list[AlertEvent] = []
        self.dropped = 0

    def add(self, event: AlertEvent) -> None:
        if len(self.events) < MAX_EVENTS_PER_RECORDING:
            self.events.append(event)
        else:
            self.dropped += 1


class AlertEngine:
    """The collector's alert rules, their per-device state, and the events they made.

    Args:
        max_events: Events kept for `frame()`; older ones are dropped and counted.
    """

    def __init__(self, *, max_events: int = MAX_EVENTS) -> None:
        self._rules: dict[str, AlertRule] = {}
        self._added_ns: dict[str, int] = {}
        self._runs: dict[str, dict[str, _Run]] = {}
        self._events: deque[AlertEvent] = deque(maxlen=max_events)
        self._undelivered: deque[AlertEvent] = deque()
        self._captures: list[AlertCapture] = []
        self._callback_failed: set[str] = set()
        self._lock = threading.Lock()  # rules, state and events
        self._dispatch_lock = threading.Lock()
        # Per dictionary generation: string -> code of the metric and device columns.
        self._generation: dict[str, list[str]] | None = None
        self._codes: dict[str, dict[str, int]] = {}
        self._coded: dict[str, int] = {}
        self.events_total = 0
        self.callback_errors = 0

    # ------------------------------------------------------------------ rules

    def add(self, rule: AlertRule, *, now_ns: int, replace: bool = False) -> None:
        """Add a rule (or replace the rule of the same name, starting it afresh).

        Raises:
            ConfigError: A rule of that name exists and `replace` is False.
        """
        with self._lock:
            if rule.name in self._rules and not replace:
                raise ConfigError(
                    f"an alert named {rule.name!r} exists",
                    hint="choose another name, or pass replace=True to change it",
                )
            self._rules[rule.name] = rule
            self._added_ns[rule.name] = now_ns
            self._runs[rule.name] = {}
            self._callback_failed.discard(rule.name)

    def remove(self, name: str) -> bool:
        """Remove a rule; return whether there was one (its firing alerts are not cleared)."""
        with self._lock:
            self._added_ns.pop(name, None)
            self._runs.pop(name, None)
            return self._rules.pop(name, None) is not None

    @property
    def rules(self) -> tuple[AlertRule, ...]:
        """The rules, in the order they were added."""
        return tuple(self._rules.values())

    @property
    def watches_silence(self) -> bool:
        """Whether any rule is a silent rule."""
        return any(rule.is_silent for rule in self._rules.values())

    # ------------------------------------------------------------- evaluation

    def evaluate(self, chunk: Chunk | None) -> None:
        """Evaluate every threshold rule on one batch's rows (the worker thread)."""
        if chunk is None or not len(chunk) or not self._rules:
            return
        with self._lock:
            rules = [r for r in self._rules.values() if not r.is_silent]
            if not rules:
                return
            self._sync_codes(chunk)
            metric_codes = chunk.codes["metric"]
            numeric = ~np.isnan(chunk.value)
            for rule in rules:
                code = self._code("metric", rule.metric or "", chunk)
                if code is None:
                    continue
                rows = (metric_codes == code) & numeric
                if rule.devices is not None:
                    wanted = [self._code("device_id", d, chunk) for d in rule.devices]
                    known = [c for c in wanted if c is not None]
                    if not known:
                        continue
                    rows &= np.isin(chunk.codes["device_id"], known)
                picked = np.flatnonzero(rows)
                if len(picked):
                    self._advance(rule, chunk, picked)

    def _advance(self, rule: AlertRule, chunk: Chunk, picked: np.ndarray) -> None:
        values = chunk.value[picked]
        breach = np.zeros(len(values), dtype=bool)
        if rule.above is not None:
            breach |= values > rule.above
        if rule.below is not None:
            breach |= values < rule.below
        runs = self._runs[rule.name]
        if not runs and not breach.any():
            return  # the common case: every device in range, before and now
        devices = chunk.codes["device_id"][picked]
        names = chunk.categories["device_id"]
        order = np.argsort(devices, kind="stable")
        sorted_devices = devices[order]
        starts = np.flatnonzero(np.r_[True, sorted_devices[1:] != sorted_devices[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            rows = order[start:end]
            cond = breach[rows]
            device = names[int(sorted_devices[start])]
            run = runs.get(device)
            if run is None and not cond.any():
                continue  # the common case: in range before and now
            if run is None:
                run = runs[device] = _Run()
            times = chunk.received[picked[rows]]
            self._step(rule, device, run, cond=cond, times=times, values=values[rows])
            if run.since_ns is None and not run.firing:
                del runs[device]

    def _step(
        self,
        rule: AlertRule,
        device: str,
        run: _Run,
        *,
        cond: np.ndarray,
        times: np.ndarray,
        values: np.ndarray,
    ) -> None:
        """Walk one device's rows (arrival order) run by run of equal condition."""
        changes = np.flatnonzero(cond[1:] != cond[:-1]) + 1
        bounds = [0, *changes.tolist(), len(cond)]
        hold_ns = int(rule.for_s * _NS)
        for start, end in itertools.pairwise(bounds):
            if cond[start]:
                if run.since_ns is None:
                    run.since_ns = int(times[start])
                if run.firing:
                    continue
                due = int(np.searchsorted(times[start:end], run.since_ns + hold_ns, side="left"))
                if due < end - start:
                    run.firing = True
                    at = start + due
                    self._emit(rule, device, int(times[at]), float(values[at]), "firing")
            else:
                run.since_ns = None
                if run.firing:
                    run.firing = False
                    self._emit(rule, device, int(times[start]), float(values[start]), "cleared")

    def evaluate_silence(
        self, last_seen: Mapping[str, int], *, now_ns: int, listening_since_ns: int
    ) -> None:
        """Evaluate every silent rule from each device's last receive time (housekeeping).

        A device fires once nothing came from it for the rule's `silent` duration, counted
        from its last message, but never from before `listening_since_ns` (when the present
        connection began: a lost connection silences every device, not just one) nor, for a
        device never seen, from before the rule was added. It clears when a new message
        from it arrives.

        Args:
            last_seen: Per device, its last receive time in epoch ns.
            now_ns: The present, in epoch ns.
            listening_since_ns: When the collector's present connection began, epoch ns.
        """
        with self._lock:
            for rule in self._rules.values():
                if rule.silent_s is None:
                    continue
                limit_ns = int(rule.silent_s * _NS)
                runs = self._runs[rule.name]
                if rule.devices is None:
                    watched: Iterable[str] = last_seen
                    for gone in [d for d in runs if d not in last_seen]:
                        del runs[gone]  # forgotten by health: no longer followed
                else:
                    watched = rule.devices
                added = self._added_ns[rule.name]
                for device in watched:
                    seen = last_seen.get(device)
                    run = runs.get(device)
                    if run is None:
                        quiet_from = max(added if seen is None else seen, listening_since_ns)
                        if now_ns - quiet_from > limit_ns:
                            runs[device] = run = _Run()
                            run.firing, run.since_ns = True, quiet_from
                            self._emit(rule, device, quiet_from + limit_ns, rule.silent_s, "firing")
                    elif seen is not None and run.since_ns is not None and seen > run.since_ns:
                        del runs[device]
                        gap = (seen - run.since_ns) / _NS
                        self._emit(rule, device, seen, gap, "cleared")

    def _emit(
        self, rule: AlertRule, device: str, time_ns: int, value: float, state: AlertState
    ) -> None:
        event = AlertEvent(time_ns, rule.name, device, rule.metric, value, state)
        self._events.append(event)
        self._undelivered.append(event)
        for capture in self._captures:
            capture.add(event)
        self.events_total += 1

    def _sync_codes(self, chunk: Chunk) -> None:
        if chunk.categories is not self._generation:
            self._generation = chunk.categories
            self._codes = {"metric": {}, "device_id": {}}
            self._coded = {"metric": 0, "device_id": 0}

    def _code(self, column: str, name: str, chunk: Chunk) -> int | None:
        codes = self._codes[column]
        code = codes.get(name)
        if code is None:
            values = chunk.categories[column]
            size = len(values)  # the list only grows; new strings are read once
            for i in range(self._coded[column], size):
                codes.setdefault(values[i], i)
            self._coded[column] = size
            code = codes.get(name)
        return code

    # --------------------------------------------------------------- delivery

    def dispatch(self) -> int:
        """Log the new events and call the rules' callbacks (housekeeping thread).

        A callback that raises is logged once per rule (with its traceback) and counted in
        `callback_errors`; the other events and callbacks go on.

        Returns:
            How many events were delivered.
        """
        delivered = 0
        with self._dispatch_lock:
            while True:
                with self._lock:
                    if not self._undelivered:
                        return delivered
                    event = self._undelivered.popleft()
                    rule = self._rules.get(event.rule)
                delivered += 1
                level = logging.WARNING if event.state == "firing" else logging.INFO
                where = f" {event.metric}={event.value:g}" if event.metric else ""
                logger.log(
                    level,
                    "alert %r %s for device %s%s at %s",
                    event.rule,
                    event.state,
                    event.device,
                    where or f" (silent {event.value:.1f} s)",
                    event.time.isoformat(),
                )
                if rule is None or rule.callback is None:
                    continue
                try:
                    rule.callback(event)
                except Exception:
                    self.callback_errors += 1
                    if event.rule not in self._callback_failed:
                        self._callback_failed.add(event.rule)
                        logger.exception(
                            "the callback of alert %r raised (logged once; counted in "
                            "stats.alert_callback_errors)",
                            event.rule,
                        )

    # ------------------------------------------------------------------ reads

    @property
    def events_dropped(self) -> int:
        """Events no longer kept because more than `max_events` were made."""
        return self.events_total - len(self._events)

    def capture(self) -> AlertCapture:
        """Start keeping every new event for a recording (until `release`)."""
        capture = AlertCapture()
        with self._lock:
            self._captures.append(capture)
        return capture

    def release(self, capture: AlertCapture) -> list[AlertEvent]:
        """Stop a capture and return its events."""
        with self._lock:
            if capture in self._captures:
                self._captures.remove(capture)
        return capture.events

    def frame(self, *, since_ns: int | None = None, active: bool = False) -> pd.DataFrame:
        """Return the kept events, oldest first (see `events_frame`).

        Args:
            since_ns: Only events at or after this epoch time in ns.
            active: Only the firing events of the alerts that are firing now.
        """
        with self._lock:
            events = list(self._events)
            firing = {
                (name, device)
                for name, runs in self._runs.items()
                for device, run in runs.items()
                if run.firing
            }
        if since_ns is not None:
            events = [e for e in events if e.time_ns >= since_ns]
        if active:
            latest = {(e.rule, e.device): e for e in events}
            events = [e for key, e in latest.items() if key in firing and e.state == "firing"]
            events.sort(key=lambda e: e.time_ns)
        return events_frame(events)


def events_frame(events: Iterable[AlertEvent]) -> pd.DataFrame:
    """Return alert events as a DataFrame.

    Returns:
        Columns time (datetime64[ns, UTC]), rule (category), device (str), metric (str,
        missing for silent rules), value (float64), state (category of "firing",
        "cleared"); a RangeIndex.
    """
    events = list(events)
    return pd.DataFrame(
        {
            "time": pd.DatetimeIndex(
                np.array([e.time_ns for e in events], dtype=np.int64).view("M8[ns]")
            ).tz_localize("UTC"),
            "rule": pd.Categorical([e.rule for e in events]),
            "device": pd.Series([e.device for e in events], dtype=str),
            "metric": pd.Series([e.metric for e in events], dtype=str),
            "value": np.array([e.value for e in events], dtype=np.float64),
            "state": pd.Categorical([e.state for e in events], categories=_STATES),
        }
    )


def alerts_sidecar(path: Path) -> Path:
    """Return the alerts file beside a recording, `<stem>.alerts.parquet`."""
    return path.with_name(path.stem + _ALERTS_SUFFIX)


def write_alerts(
    events: Iterable[AlertEvent], path: Path, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write alert events to a Parquet file atomically, in `ALERTS_SCHEMA`.

    Raises:
        OSError: The file could not be written; an old file at `path` is left as it was.
    """
    events = list(events)
    table = pa.table(
        [
            pa.array(
                np.array([e.time_ns for e in events], dtype=np.int64).view("M8[ns]"), type=TIME_TYPE
            ),
            pa.array([e.rule for e in events], type=pa.string()).dictionary_encode(),
            pa.array([e.device for e in events], type=pa.string()),
            pa.array([e.metric for e in events], type=pa.string()),
            pa.array([e.value for e in events], type=pa.float64()),
            pa.array([e.state for e in events], type=pa.string())
            .dictionary_encode()
            .cast(pa.dictionary(pa.int8(), pa.string())),
        ],
        schema=ALERTS_SCHEMA,
    )
    return write_table(table, path, metadata=check_metadata(metadata), time_column="time")


def load_alerts(path: str | Path) -> pd.DataFrame:
    """Read the alert events recorded beside a recording.

    Args:
        path: The recording (its `<stem>.alerts.parquet` is read) or the alerts file itself.

    Returns:
        The events as `Collector.alerts()` returns them (same columns and dtypes).

    Raises:
        FileNotFoundError: There is no alerts file (the collector had no alert rules).
        NotARecordingError: The file is not an alerts file.
    """
    path = Path(path)
    if not path.name.endswith(_ALERTS_SUFFIX):
        path = alerts_sidecar(path)
    table = pq.read_table(path)
    if table.schema.names != list(ALERT_COLUMNS):
        raise NotARecordingError(
            f"{path} is not an alerts file (columns {table.schema.names})",
            hint="pass the recording or its <stem>.alerts.parquet",
        )
    times = table.column("time").cast(pa.int64()).to_numpy()
    events = [
        AlertEvent(int(t), str(r), str(d), m, float(v), s)
        for t, r, d, m, v, s in zip(
            times.tolist(),
            table.column("rule").to_pylist(),
            table.column("device").to_pylist(),
            table.column("metric").to_pylist(),
            table.column("value").to_pylist(),
            table.column("state").to_pylist(),
            strict=True,
        )
    ]
    return events_frame(events)
