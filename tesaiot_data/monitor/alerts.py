"""The alert engine: evaluates the rules (`monitor.rules`) on live telemetry and keeps the events.

A rule fires once when its condition starts and clears once when it ends, per (rule,
device); what is firing now is a state kept per (rule, device), not read back from the events,
so `frame(active=True)` lists every firing alert however many events were made since. A
threshold rule's `hysteresis` and `keep_firing_for` damp a value that hovers at the threshold.
Threshold rules are evaluated on every batch on the collector's worker thread, vectorised
over the batch's columns; silent rules on the housekeeping tick from each device's last
receive time. A rule whose evaluation raises is skipped for that batch or tick (logged
once per rule, counted); the other rules go on. Events are kept (the last `MAX_EVENTS`),
and logged and handed to the rules' callbacks on the housekeeping thread, so a slow or
failing callback never holds up ingest. Logging is rate-limited per rule (`LOG_EVENTS_PER_MIN`
lines a minute, then one line that counts the rest); callbacks get every event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from tesaiot_data.errors import ConfigError
from tesaiot_data.monitor.events import AlertEvent, AlertState, events_frame
from tesaiot_data.monitor.rules import AlertRule
from tesaiot_data.window.chunk import Chunk

__all__ = [
    "LOG_EVENTS_PER_MIN",
    "MAX_EVENTS",
    "MAX_EVENTS_PER_RECORDING",
    "AlertCapture",
    "AlertEngine",
]

logger = logging.getLogger(__name__)

MAX_EVENTS = 10_000
"""Alert events kept in memory; older ones are dropped (counted)."""
MAX_EVENTS_PER_RECORDING = 100_000
"""Alert events kept for one recording's `<stem>.alerts.parquet`; more are dropped (logged)."""

LOG_EVENTS_PER_MIN = 10
"""Events of one rule logged per minute; the rest are counted in one line when it ends."""

_NS = 1_000_000_000
_LOG_WINDOW_S = 60.0


class _Run:
    """A (rule, device) whose condition holds now, or whose alert is firing."""

    __slots__ = ("event", "recovered_ns", "since_ns")

    def __init__(self) -> None:
        self.since_ns: int | None = None  # start of the current run of rows in breach
        self.recovered_ns: int | None = None  # firing: start of the run of rows back in range
        self.event: AlertEvent | None = None  # firing: the event that made it fire

    @property
    def firing(self) -> bool:
        return self.event is not None


class _LogBudget:
    """How many of one rule's events were logged, and left out, in the present minute."""

    __slots__ = ("left_out", "logged", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.logged = 0
        self.left_out = 0


class AlertCapture:
    """The events of one recording, from its start until `close()`."""

    def __init__(self) -> None:
        self.events: list[AlertEvent] = []
        self.dropped = 0

    def add(self, event: AlertEvent) -> None:
        """Keep `event`, or count it as dropped past `MAX_EVENTS_PER_RECORDING`."""
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
        self._rule_failed: set[str] = set()
        self._log_budget: dict[str, _LogBudget] = {}
        self._lock = threading.Lock()  # rules, state and events
        self._dispatch_lock = threading.Lock()
        # Per dictionary generation: string -> code of the metric and device columns.
        self._generation: dict[str, list[str]] | None = None
        self._codes: dict[str, dict[str, int]] = {}
        self._coded: dict[str, int] = {}
        self.events_total = 0
        self.callback_errors = 0
        self.rule_errors = 0

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
            self._rule_failed.discard(rule.name)

    def remove(self, name: str) -> bool:
        """Remove a rule; return whether there was one (its firing alerts are not cleared)."""
        with self._lock:
            self._added_ns.pop(name, None)
            self._runs.pop(name, None)
            self._rule_failed.discard(name)
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
        """Evaluate every threshold rule on one batch's rows (the worker thread).

        A rule that raises is skipped for this batch (see `rule_errors`); the others go on.
        """
        if chunk is None or not len(chunk) or not self._rules:
            return
        with self._lock:
            rules = [r for r in self._rules.values() if not r.is_silent]
            if not rules:
                return
            self._sync_codes(chunk)
            numeric = ~np.isnan(chunk.value)
            for rule in rules:
                try:
                    self._threshold(rule, chunk, numeric)
                except Exception:
                    self._failed(rule)

    def _threshold(self, rule: AlertRule, chunk: Chunk, numeric: np.ndarray) -> None:
        code = self._code("metric", rule.metric or "", chunk)
        if code is None:
            return
        rows = (chunk.codes["metric"] == code) & numeric
        if rule.devices is not None:
            wanted = [self._code("device_id", d, chunk) for d in rule.devices]
            known = [c for c in wanted if c is not None]
            if not known:
                return
            rows &= np.isin(chunk.codes["device_id"], known)
        picked = np.flatnonzero(rows)
        if len(picked):
            self._advance(rule, chunk, picked)

    def _failed(self, rule: AlertRule) -> None:
        """Count a rule whose evaluation raised; log its first failure with the traceback."""
        self.rule_errors += 1
        if rule.name not in self._rule_failed:
            self._rule_failed.add(rule.name)
            logger.exception(
                "alert %r could not be evaluated (logged once; counted in "
                "stats.alert_rule_errors); the other rules go on",
                rule.name,
            )

    def _advance(self, rule: AlertRule, chunk: Chunk, picked: np.ndarray) -> None:
        values = chunk.value[picked]
        breach = np.zeros(len(values), dtype=bool)
        recovered = np.ones(len(values), dtype=bool)
        if rule.above is not None:
            breach |= values > rule.above
            recovered &= values <= rule.above - rule.hysteresis
        if rule.below is not None:
            breach |= values < rule.below
            recovered &= values >= rule.below + rule.hysteresis
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
            self._step(
                rule,
                device,
                run,
                breach=cond,
                recovered=recovered[rows],
                times=times,
                values=values[rows],
            )
            if run.since_ns is None and not run.firing:
                del runs[device]

    def _step(
        self,
        rule: AlertRule,
        device: str,
        run: _Run,
        *,
        breach: np.ndarray,
        recovered: np.ndarray,
        times: np.ndarray,
        values: np.ndarray,
    ) -> None:
        """Walk one device's rows (arrival order), from one change of state to the next.

        Not firing, a run of rows in `breach` that lasted `for_s` fires it; firing, a run
        of `recovered` rows that lasted `keep_firing_s` clears it. Rows in between (in the
        hysteresis band) keep the state and end the run that was counting.
        """
        n = len(times)
        hold_ns = int(rule.for_s * _NS)
        keep_ns = int(rule.keep_firing_s * _NS)
        pos = 0
        while pos < n:
            looking = recovered if run.firing else breach
            hits = np.flatnonzero(looking[pos:])
            if not len(hits):  # the rest of the batch ends the run that was counting
                if run.firing:
                    run.recovered_ns = None
                else:
                    run.since_ns = None
                return
            first = pos + int(hits[0])
            misses = np.flatnonzero(~looking[first:])
            end = first + int(misses[0]) if len(misses) else n
            if run.firing:
                if first > pos or run.recovered_ns is None:
                    run.recovered_ns = int(times[first])
                due_ns = run.recovered_ns + keep_ns
            else:
                if first > pos or run.since_ns is None:
                    run.since_ns = int(times[first])
                due_ns = run.since_ns + hold_ns
            due = int(np.searchsorted(times[first:end], due_ns, side="left"))
            if due >= end - first:
                pos = end
                continue
            at = first + due
            if run.firing:
                self._emit(rule, device, int(times[at]), float(values[at]), "cleared")
                run.event = run.since_ns = run.recovered_ns = None
            else:
                run.event = self._emit(rule, device, int(times[at]), float(values[at]), "firing")
                run.recovered_ns = None
            pos = at + 1

    def evaluate_silence(
        self, last_seen: Mapping[str, int], *, now_ns: int, listening_since_ns: int
    ) -> None:
        """Evaluate every silent rule from each device's last receive time (housekeeping).

        A device fires once nothing came from it for the rule's `silent` duration, counted
        from its last message, but never from before `listening_since_ns` (when the present
        connection began: a lost connection silences every device, not just one) nor, for a
        device never seen, from before the rule was added. It clears when a new message
        from it arrives. A rule that raises is skipped for this tick (see `rule_errors`);
        the others go on.

        Args:
            last_seen: Per device, its last receive time in epoch ns.
            now_ns: The present, in epoch ns.
            listening_since_ns: When the collector's present connection began, epoch ns.
        """
        with self._lock:
            for rule in self._rules.values():
                if rule.silent_s is None:
                    continue
                try:
                    self._silence(rule, rule.silent_s, last_seen, now_ns, listening_since_ns)
                except Exception:
                    self._failed(rule)

    def _silence(
        self,
        rule: AlertRule,
        silent_s: float,
        last_seen: Mapping[str, int],
        now_ns: int,
        listening_since_ns: int,
    ) -> None:
        limit_ns = int(silent_s * _NS)
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
                    run.since_ns = quiet_from
                    run.event = self._emit(rule, device, quiet_from + limit_ns, silent_s, "firing")
            elif seen is not None and run.since_ns is not None and seen > run.since_ns:
                del runs[device]
                gap = (seen - run.since_ns) / _NS
                self._emit(rule, device, seen, gap, "cleared")

    def _emit(
        self, rule: AlertRule, device: str, time_ns: int, value: float, state: AlertState
    ) -> AlertEvent:
        event = AlertEvent(time_ns, rule.name, device, rule.metric, value, state)
        self._events.append(event)
        self._undelivered.append(event)
        for capture in self._captures:
            capture.add(event)
        self.events_total += 1
        return event

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
                    event = self._undelivered.popleft() if self._undelivered else None
                    rule = None if event is None else self._rules.get(event.rule)
                if event is None:
                    self.flush_log()
                    return delivered
                delivered += 1
                self._log(event)
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

    def _log(self, event: AlertEvent) -> None:
        """Log one event, within its rule's budget of `LOG_EVENTS_PER_MIN` lines a minute."""
        now = time.monotonic()
        self.flush_log(now=now)
        budget = self._log_budget.get(event.rule)
        if budget is None:
            budget = self._log_budget[event.rule] = _LogBudget(now)
        if budget.logged >= LOG_EVENTS_PER_MIN:
            budget.left_out += 1
            return
        budget.logged += 1
        level = logging.WARNING if event.state == "firing" else logging.INFO
        where = f" {event.metric}={event.value:g}" if event.metric else ""
        logger.log(
            level,
            "alert %r %s for device %s%s at %s%s",
            event.rule,
            event.state,
            event.device,
            where or f" (silent {event.value:.1f} s)",
            event.time.isoformat(),
            "; further events of this rule in this minute are counted, not logged"
            if budget.logged == LOG_EVENTS_PER_MIN
            else "",
        )

    def flush_log(self, *, now: float | None = None) -> None:
        """End the log budgets whose minute is over; log one line for each with events left out.

        Called by `dispatch` (every housekeeping tick); `now` is `time.monotonic()` seconds.
        """
        now = time.monotonic() if now is None else now
        for name, budget in list(self._log_budget.items()):
            if now - budget.start < _LOG_WINDOW_S:
                continue
            del self._log_budget[name]
            if budget.left_out:
                logger.warning(
                    "alert %r: %d more events in %.0f s were not logged (at most %d a "
                    "minute; see collector.alerts() or pass hysteresis=/keep_firing_for= "
                    "to damp a value that hovers at the threshold)",
                    name,
                    budget.left_out,
                    now - budget.start,
                    LOG_EVENTS_PER_MIN,
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
            active: Instead, the alerts firing now, one row each (the event that made it
                fire), from the engine's state: however many events were made or dropped
                since, every firing alert is listed.
        """
        with self._lock:
            if active:
                events = [
                    run.event
                    for runs in self._runs.values()
                    for run in runs.values()
                    if run.event is not None
                ]
                events.sort(key=lambda e: e.time_ns)
            else:
                events = list(self._events)
        if since_ns is not None:
            events = [e for e in events if e.time_ns >= since_ns]
        return events_frame(events)
