"""The collector's monitoring face: device health and alert rules, read and set by the user.

`Monitoring` holds `Collector.health()`, `alert()`, `remove_alert()` and `alerts()`: what a
user asks of the monitors (`tesaiot_data.monitor`) that the ingest path feeds with every
batch and the housekeeping thread ticks. `Collector` inherits it; it has no state of its own.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable

import pandas as pd

from tesaiot_data.arguments import TimeLike, duration_seconds, moment_ns
from tesaiot_data.collector.ingest import Ingest
from tesaiot_data.monitor.events import AlertEvent
from tesaiot_data.monitor.health import DeviceHealth
from tesaiot_data.monitor.rules import AlertRule

__all__ = ["Monitoring", "warn_unknown_metrics"]


def warn_unknown_metrics(
    health: DeviceHealth, names: Iterable[str], *, option: str, stacklevel: int = 3
) -> None:
    """Warn once per name about metrics no device has sent, listing the known ones.

    For `alert(metric=...)`, `frame(metrics=...)` and `resample(metrics=...)`: a typo
    otherwise gives an alert that never fires or an empty frame, silently. Nothing is
    said before any metric has been seen (the devices may not have sent yet).

    Args:
        health: The collector's device health (it knows the metrics seen).
        names: The metric names the user passed.
        option: The parameter's name, for the message (`"metric"`, `"metrics"`).
        stacklevel: As for `warnings.warn`: 3 points at the caller of the method that
            calls this.
    """
    unknown, known = health.unknown_metrics(names)
    if unknown:
        warnings.warn(
            f"{option}={', '.join(map(repr, unknown))}: no device has sent "
            f"{'this metric' if len(unknown) == 1 else 'these metrics'}; known metrics: "
            f"{', '.join(known)} (warned once per name)",
            UserWarning,
            stacklevel=stacklevel,
        )


class Monitoring:
    """Device health and alerts of a collector's ingest path (a base of `Collector`).

    The subclass sets `_ingest`, the ingest path whose monitors these methods read and set.
    """

    _ingest: Ingest

    def health(self, *, silent_after: str | float | pd.Timedelta | None = None) -> pd.DataFrame:
        """Return one row per device: when it was last heard of, how often, and how well.

        Every message counts, rejected ones too (a device that sends garbage is alive);
        retained messages the broker replays on subscribing do not. Memory is bounded by
        the number of devices (see `tesaiot_data.monitor.health`): devices not seen for a day, or
        the least recently seen beyond `health.MAX_DEVICES`, are forgotten
        (`stats.devices_evicted`).

        Args:
            silent_after: Call every device silent after this long without a message
                (`"30s"`); None judges each device by its own pace: silent after 5 of its
                usual intervals, at least 5 s (60 s while its pace is not known).

        Returns:
            Silent devices first, then by device id; a RangeIndex and the columns
            device_id (str), last_seen (datetime64[ns, UTC], receive time of its last
            message), age_s (float64 s since then), msgs_per_s (float64, over the last
            minute, or since it was first seen if later), usual_interval_s (float64,
            median time between its last 32 updates, where messages less than
            `health.BURST_GAP_S` (50 ms) apart are one update: a device that publishes
            one topic per sensor sends them in a burst; NaN until its second update; for
            a steady stream faster than that, the median gap between messages), silent
            (bool), clock_skew_s (float64, median of device time minus receive time over
            its last 32 messages with a timestamp: positive means the device clock is
            ahead, network delay included; NaN without timestamps), messages (int64,
            since first seen), rejected (int64), reject_share (float64, rejected /
            messages), metrics (str, the metrics it sent, sorted, comma-separated) and
            device (str, the same as device_id: its 0.1 name, deprecated).

        Raises:
            ConfigError: `silent_after` is not a positive duration (a ValueError too).
        """
        limit = None
        if silent_after is not None:
            limit = duration_seconds(silent_after, name="silent_after")
        return self._ingest.health.frame(now_ns=time.time_ns(), silent_after=limit)

    def alert(
        self,
        name: str,
        *,
        metric: str | None = None,
        above: float | None = None,
        below: float | None = None,
        for_: str | float | pd.Timedelta = "0s",
        devices: Iterable[str] | str | None = None,
        silent: str | float | pd.Timedelta | None = None,
        hysteresis: float = 0.0,
        keep_firing_for: str | float | pd.Timedelta = "0s",
        callback: Callable[[AlertEvent], object] | None = None,
        replace: bool = False,
    ) -> None:
        """Add an alert rule: a threshold on a metric, or a device gone silent.

        An alert fires once when its condition starts and clears once when it ends, per
        (rule, device); each event is kept (see `alerts()`), logged (WARNING when firing,
        INFO when cleared; at most `alerts.LOG_EVENTS_PER_MIN` lines a minute per rule,
        then one line that counts the rest) and passed to `callback` on the housekeeping
        thread, within about 0.25 s. A callback that raises is logged once per rule and counted in
        `stats.alert_callback_errors`; the alert goes on. Recordings keep the events of
        their time in `<stem>.alerts.parquet`.

        Threshold rules are evaluated on every batch as it arrives: the condition holds
        for a numeric row of `metric` whose value is greater than `above` or less than
        `below` (with both: outside the band). With `for_`, the alert fires at the first
        row whose device's rows of that metric have all been in breach since a row at least
        `for_` earlier, by receive time (device clocks can be wrong); one row back in range
        clears it. A value that hovers at the threshold (29.9, 30.1, 29.9 around
        `above=30`) would fire and clear on every reading; two options damp it, as
        alerting tools do: with `hysteresis`, a firing alert clears only once a value is
        back by that much (at or below `above - hysteresis`, at or above
        `below + hysteresis`; values in between keep it firing), and with
        `keep_firing_for`, only once every row has been back in range for that long (by
        receive time, evaluated as rows arrive). Silent rules are evaluated four times a
        second while connected: the alert fires when a device sent nothing for `silent`
        (devices named in `devices` count even if never seen) and clears on its next
        message.

        Example:
            >>> collector.alert("hot", metric="temperature", above=30, for_="1m")  # doctest: +SKIP
            >>> collector.alert("gone", silent="30s")  # doctest: +SKIP

        Args:
            name: The rule's name, unique among this collector's rules.
            metric: The metric a threshold rule watches (required with above/below).
            above: Fire while a value is greater than this.
            below: Fire while a value is less than this.
            for_: How long the breach must last before firing (`"30s"`); default at once.
            devices: Only these device ids; default every device.
            silent: Fire when a device sent nothing for this long (`"30s"`), instead of a
                threshold.
            hysteresis: How far back inside the threshold a value must be to clear a
                firing alert, in the metric's unit (`0.5`); default 0. Threshold rules only.
            keep_firing_for: How long the values must stay back in range before a firing
                alert clears (`"1min"`, Prometheus' name); default at once. Threshold
                rules only.
            callback: Called with each `AlertEvent` (time_ns, rule, device, metric, value,
                state) of this rule.
            replace: Replace an existing rule of the same name (its alerts start afresh,
                with no cleared events for those firing).

        Raises:
            ConfigError: No condition, both a threshold and `silent`, a threshold without
                `metric`, `below >= above`, a bad duration, a negative `hysteresis` (or one
                that leaves no value inside the band), `hysteresis` or `keep_firing_for`
                on a silent rule, or a duplicate name.

        Warns:
            UserWarning: `metric` names a metric no device has sent while others were
                seen (a typo?); the warning lists the known ones. The rule is added.
        """
        rule = AlertRule.make(
            name,
            metric=metric,
            above=above,
            below=below,
            for_=for_,
            devices=devices,
            silent=silent,
            hysteresis=hysteresis,
            keep_firing_for=keep_firing_for,
            callback=callback,
        )
        self._ingest.alerts.add(rule, now_ns=time.time_ns(), replace=replace)
        if rule.metric is not None:
            warn_unknown_metrics(self._ingest.health, [rule.metric], option="metric")

    def remove_alert(self, name: str) -> bool:
        """Remove an alert rule; its firing alerts end without a cleared event.

        Returns:
            Whether there was a rule of that name.
        """
        return self._ingest.alerts.remove(name)

    def alerts(self, *, since: TimeLike | None = None, active: bool = False) -> pd.DataFrame:
        """Return the alert events, oldest first (the last `alerts.MAX_EVENTS`).

        Cheap to poll: `stats.alert_events` grows with every new event.

        Args:
            since: Only events at or after this time: a duration back from now (`"5min"`)
                or a point in time (naive means UTC).
            active: Instead, the alerts firing now, one row each (the event that made it
                fire), oldest first. This is the state of each (rule, device), not a
                window of events: an alert that still fires is listed however many events
                other devices made since.

        Returns:
            A RangeIndex and the columns time (datetime64[ns, UTC]), rule (category),
            device_id (str), metric (str; missing for silent rules), value (float64: the
            row's value, or for silent rules the seconds of silence), state (category:
            "firing" or "cleared") and device (str, the same as device_id: its 0.1
            name, deprecated).

        Raises:
            ValueError: `since` is neither a duration nor a time.
        """
        return self._ingest.alerts.frame(since_ns=moment_ns(since), active=active)
